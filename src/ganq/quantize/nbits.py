"""The nbits format: MatMul and Gemm weights as onnxruntime's `com.microsoft.MatMulNBits` (Y = A @ dequant(B)^T
[+ bias], B block-quantized along K with block_size = G of `--granularity group:G`); every other weight in the int
form. onnxruntime's CPU kernel takes 2, 4 and 8 bits, so k-bit codes sit in the smallest of those containers
(3 bits in 4, 5..8 in 8; the file stores the container's bits).

MatMulNBits decodes (q - zero_point) * scale per block. ganq's affine decoder is (q - zp) * scale + offset, so:
- no offset (a zero-centred grid: method symmetric, gptq/adaround grid=symmetric): uint8 zero points, the same
  weights bit for bit;
- an offset with a 2- or 4-bit container: float zero points zp - offset / scale (onnxruntime takes them there), the
  same weights up to float32 rounding;
- an offset with the 8-bit container (onnxruntime refuses float zero points there): the nearest integer zero point,
  i.e. the nearest block grid; the difference is recorded per tensor (`info.nbits`).
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from ganq.quantize.decoders import Affine, Solution, rows
from ganq.quantize.ops import attr

DOMAIN = "com.microsoft"
CONTAINERS = (2, 4, 8)


def container_bits(bits: int) -> int | None:
    return next((c for c in CONTAINERS if bits <= c), None)


def pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint codes [..., n] (n * bits a multiple of 8) -> uint8 [..., n * bits / 8], element i of a byte in bits
    i*bits.. (MatMulNBits' order)."""
    per = 8 // bits
    c = codes.reshape(codes.shape[:-1] + (codes.shape[-1] // per, per)).astype(np.uint8)
    out = np.zeros(c.shape[:-1], np.uint8)
    for i in range(per):
        out |= (c[..., i] << np.uint8(i * bits)).astype(np.uint8)
    return out


def unpack_low_first(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    per = 8 // bits
    mask = np.uint8(2 ** bits - 1)
    parts = [(packed >> np.uint8(i * bits)) & mask for i in range(per)]
    return np.stack(parts, axis=-1).reshape(packed.shape[:-1] + (-1,))[..., :n]


def nbits_arrays(sol: Solution) -> dict:
    """The MatMulNBits inputs of a grouped affine Solution: B [N, nb, blob], scales [N * nb], zero points (uint8
    packed per row, or float [N * nb]), with the container's bits and the weight difference against sol."""
    q = rows(sol.codes, sol.axis).astype(np.int64)        # [N, K]
    n, k = q.shape
    g, nb = sol.group, sol.groups
    cb = container_bits(sol.bits)
    dec: Affine = sol.decoder
    padded = np.zeros((n, nb * g), np.int64)
    padded[:, :k] = q
    b = pack_low_first(padded.reshape(n, nb, g), cb)
    scale = dec.scale.astype(np.float32)
    zp = dec.zero_point.astype(np.float64)
    if not dec.has_offset:
        kind, zpv = "uint8", zp
    elif cb < 8:
        kind, zpv = "float", (zp - dec.offset.astype(np.float64) / scale).astype(np.float32)
    else:
        kind = "uint8 (nearest grid)"
        zpv = np.clip(np.rint(zp - dec.offset.astype(np.float64) / scale), 0, 2 ** cb - 1)
    if kind.startswith("uint8"):
        if cb == 8:
            zpk = zpv.astype(np.uint8).reshape(-1)
        else:
            per = 8 // cb
            zpad = np.zeros((n, -(-nb // per) * per), np.int64)
            zpad[:, :nb] = zpv
            zpk = pack_low_first(zpad, cb).reshape(-1)
    else:
        zpk = zpv.astype(np.float32).reshape(-1)
    arrays = {"B": b, "scales": scale.reshape(-1), "zero_points": zpk, "bits": cb, "K": k, "N": n, "block": g,
              "zero_point_kind": kind}
    want = rows(sol.dequantize(), sol.axis)
    got = decode(arrays)
    d = (got.astype(np.float64) - want)
    arrays["diff"] = {"max_abs": float(np.abs(d).max()),
                      "rms_relative": float(np.sqrt(np.mean(d * d)) / max(np.sqrt(np.mean(want.astype(np.float64)
                                                                                          ** 2)), 1e-30))}
    return arrays


def decode(a: dict) -> np.ndarray:
    """The numpy reference of MatMulNBits' dequantization: [N, K] float32 from its inputs."""
    n, k, g, cb = a["N"], a["K"], a["block"], a["bits"]
    nb = a["B"].shape[1]
    q = unpack_low_first(a["B"], cb, g).reshape(n, nb * g).astype(np.float32)
    zpk = a["zero_points"]
    if zpk.dtype == np.float32:
        zp = zpk.reshape(n, nb)
    elif cb == 8:
        zp = zpk.reshape(n, nb).astype(np.float32)
    else:
        zp = unpack_low_first(zpk.reshape(n, -1), cb, nb).astype(np.float32)
    s = a["scales"].reshape(n, nb)
    w = (q - np.repeat(zp, g, axis=1)) * np.repeat(s, g, axis=1)
    return w[:, :k].astype(np.float32)


def eligible(graph, name: str, sol: Solution) -> tuple[object | None, str]:
    """(the MatMul / Gemm node that alone reads weight `name` as its B, or None, and why not)."""
    users = [n for n in graph.node if name in n.input]
    if sol.group is None:
        return None, "not grouped (--granularity group:G)"
    if not isinstance(sol.decoder, Affine):
        return None, "a codebook"
    if container_bits(sol.bits) is None:
        return None, f"{sol.bits} bits (MatMulNBits takes at most 8)"
    if len(users) != 1 or list(users[0].input).count(name) != 1 or users[0].input[1] != name:
        return None, "not the B input of a single MatMul or Gemm"
    node = users[0]
    if node.op_type == "MatMul":
        return node, ""
    if node.op_type == "Gemm":
        if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0:
            return None, "a Gemm with transA or alpha"
        return node, ""
    return None, f"read by {node.op_type}"


def build(edit, node, name: str, a: dict) -> None:
    """Stage node's replacement by MatMulNBits (made when the edit commits, after any BatchNorm fold has set the
    node's bias and output)."""
    b_name = edit.init(f"{name}_nbits", a["B"])
    s_name = edit.init(f"{name}_nbits_scales", a["scales"])
    z_name = edit.init(f"{name}_nbits_zp", a["zero_points"])

    def make(n):
        inputs = [n.input[0], b_name, s_name, z_name]
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
            c_name = n.input[2]
            c = numpy_helper.to_array(edit.initializers[c_name]).astype(np.float32)
            bias = np.ascontiguousarray((np.broadcast_to(c.reshape(-1) if c.size == a["N"] else c, (a["N"],)) *
                                         np.float32(attr(n, "beta", 1.0))).astype(np.float32))
            if sum(list(m.input).count(c_name) for m in edit.graph.node) == 1:
                edit.set_init(c_name, bias)   # MatMulNBits takes the bias [N] itself (beta folded in)
            else:
                c_name = edit.add_init(f"{name}_nbits_bias", bias)
            inputs += ["", c_name]
        return [helper.make_node("MatMulNBits", inputs, list(n.output), name=(n.name or n.output[0]) + "_nbits",
                                 domain=DOMAIN, K=a["K"], N=a["N"], bits=a["bits"], block_size=a["block"])]
    edit.swap(node, make)


def node_arrays(node, inits: dict) -> dict | None:
    """The decode() inputs of one MatMulNBits node from the graph's initializers (numpy arrays by name), or None
    where it is not a form ganq decodes (B, scales or zero points computed in the graph, or a g_idx)."""
    get = dict(K=attr(node, "K", 0), N=attr(node, "N", 0), bits=attr(node, "bits", 4), block=attr(node, "block_size", 0))
    ins = list(node.input) + [""] * (6 - len(node.input))
    if any(ins[i] and ins[i] not in inits for i in (1, 2, 3)) or ins[4] or not (ins[1] and ins[2]):
        return None
    b, s = inits[ins[1]], inits[ins[2]]
    if b.dtype != np.uint8 or get["bits"] not in CONTAINERS or not get["block"]:
        return None
    n, nb = get["N"], -(-get["K"] // get["block"])
    if ins[3]:
        zp = inits[ins[3]]
        zp = zp.astype(np.float32) if zp.dtype != np.uint8 else zp
    else:  # onnxruntime's default zero point: the container's middle
        zp = np.full(n * nb, 2 ** (get["bits"] - 1), np.float32)
    return {"B": b.reshape(n, nb, -1), "scales": s.astype(np.float32).reshape(-1), "zero_points": zp.reshape(-1),
            **get}


def decoded_model(model):
    """A copy of model with every MatMulNBits node that decode() reads as MatMul on its float32 weights (decoded
    here, once) and an Add of its bias: what a decode-once session runs (onnxruntime's MatMulNBits kernel decodes
    blocks on every call, and no session option folds it). None if nothing was decoded."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    nodes, new_inits, done = [], [], 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or node.domain != DOMAIN:
            nodes.append(node)
            continue
        used = [x for x in list(node.input)[1:4] if x]
        a = node_arrays(node, {k: numpy_helper.to_array(inits[k]) for k in used if k in inits})
        if a is None:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        w = numpy_helper.from_array(np.ascontiguousarray(decode(a).T), f"{base}_decoded")
        new_inits.append(w)
        bias = node.input[5] if len(node.input) > 5 and node.input[5] else ""
        mm_out = f"{base}_decoded_mm" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w.name], [mm_out], name=f"{base}_decoded"))
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [node.output[0]], name=f"{base}_decoded_bias"))
        done += 1
    if not done:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    read = {x for n in nodes for x in n.input} | {o.name for o in out.graph.output}
    kept = [i for i in out.graph.initializer if i.name in read]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + new_inits)
    return out
