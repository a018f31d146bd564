"""The page form of a packed file: what `ganq app` ships so that the browser decodes the bit planes once.

onnxruntime-web does not constant-fold the packed decoder (BitShift, BitwiseAnd, ReduceSum, and not even the Cast,
Mul and Add that follow; measured in Chromium: a 3-bit page at 2-3x fp32's time per image), but it does fold
DequantizeLinear when `session.disable_quant_qdq` is set (the int page runs at fp32 speed). So for each weight whose
packed decoder is affine (per tensor or per channel, float32 parameters: the default methods' grids, BatchNorm folded
in or not), the page form holds

- `model.onnx`: the generator with that weight as DequantizeLinear(codes, scale, zero point) [+ Add(offset)] — the
  int format's decoder — its uint8 codes not in the file but *external data* (location `codes.bin`, offset, length);
- `planes.bin`: the packed file's bit planes, byte for byte (k bits a weight);
- a manifest (app.json's `unpack`): per weight its planes' offset, bits, bytes a plane, weights, and its codes' offset.

The page fetches planes.bin, unpacks the codes into one Uint8Array (plane i is bit i of every code, each byte most
significant bit first, as numpy's unpackbits) and hands it to the session as `externalData` for `codes.bin`: the
download stays the packed size, the session folds every decoder once, and each image costs what fp32 costs.
Codebooks, group:G decoders and float16 decoder parameters keep the packed decoder (decoded per call in the page),
each with a note. `unpack()` is the page's algorithm in numpy (the tests run the page form through it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CODES = "codes.bin"
PLANES = "planes.bin"
# the node names emit_packed gives one weight's bit-plane decoder, in order (ganq.quantize.formats)
PACKED_CHAIN = ("u", "sh", "bits", "r", "sl", "f", "w", "codes")


@dataclass
class PageForm:
    model: onnx.ModelProto   # the codes as external data in CODES
    planes: bytes            # PLANES
    manifest: dict           # app.json's "unpack"
    notes: list


def _affine_tail(by_output: dict, inits: dict, name: str):
    """(scale, zero point, offset or None, the tail's node outputs) of weight `name`'s affine tail after its codes'
    Reshape, or a reason string."""
    qf = f"{name}_qf"
    nodes, zp, offset = [qf], None, None
    x = qf
    sub = by_output.get(f"{name}_c")
    if sub is not None:
        if sub.op_type != "Sub" or sub.input[0] != x or sub.input[1] not in inits:
            return "an unexpected zero-point node"
        zp, x = inits[sub.input[1]], sub.output[0]
        nodes.append(x)
    mul = by_output.get(f"{name}_scaled") or by_output.get(name)
    if mul is None or mul.op_type != "Mul" or mul.input[0] != x or mul.input[1] not in inits:
        return "not an affine decoder (a codebook or group:G)"
    scale, x = inits[mul.input[1]], mul.output[0]
    nodes.append(x)
    if x != name:
        add = by_output.get(name)
        if add is None or add.op_type != "Add" or add.input[0] != x or add.input[1] not in inits:
            return "an unexpected offset node"
        offset = inits[add.input[1]]
        nodes.append(name)
    if scale.dtype != np.float32 or (offset is not None and offset.dtype != np.float32):
        return "float16 decoder parameters (--float-bits 16)"
    return scale, zp, offset, nodes


def page_form(model: onnx.ModelProto) -> PageForm | None:
    """The page form of a packed file (module docstring), or None when no weight has a packed affine decoder."""
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    by_output = {o: n for n in graph.node for o in n.output}
    notes, drop, made, manifest, planes_out = [], set(), {}, [], []
    new_inits, codes_at, planes_at = [], 0, 0
    for pname in [i.name for i in graph.initializer if i.name.endswith("_planes")]:
        name = pname[: -len("_planes")]
        chain = [by_output.get(f"{name}_{s}") for s in PACKED_CHAIN]
        if any(n is None for n in chain) or f"{name}_shape" not in inits:
            notes.append(f"{name}: its packed decoder is not ganq's; decoded per call in the page")
            continue
        tail = _affine_tail(by_output, inits, name)
        if isinstance(tail, str):
            notes.append(f"{name}: {tail}; decoded per call in the page")
            continue
        scale, zpf, offset, tail_outputs = tail
        planes = inits[pname]
        k, per_plane = planes.shape
        n = int(inits[chain[4].input[2]].reshape(-1)[0])
        shape = [int(d) for d in inits[f"{name}_shape"]]
        per_channel = scale.size > 1
        axis = int(np.argmax(scale.shape)) if per_channel else None
        s1 = scale.reshape(-1) if per_channel else scale.reshape(())
        zp = np.zeros((), np.float32) if zpf is None else zpf
        zp1 = np.broadcast_to(zp.reshape(-1) if zp.size > 1 else zp.reshape(()), s1.shape)
        if k > 8 or np.any(zp1 != np.rint(zp1)) or zp1.min() < 0 or zp1.max() > 255 or int(np.prod(shape)) != n:
            notes.append(f"{name}: codes or zero points outside uint8; decoded per call in the page")
            continue
        codes = onnx.TensorProto(name=f"{name}_codes8", data_type=TensorProto.UINT8, dims=shape,
                                 data_location=TensorProto.EXTERNAL)
        for key, value in (("location", CODES), ("offset", str(codes_at)), ("length", str(n))):
            codes.external_data.add(key=key, value=value)
        new_inits += [codes, numpy_helper.from_array(np.ascontiguousarray(s1, np.float32), f"{name}_scale8"),
                      numpy_helper.from_array(np.ascontiguousarray(zp1).astype(np.uint8), f"{name}_zp8")]
        attrs = {"axis": axis} if per_channel else {}
        deq_out = name if offset is None else f"{name}_dq8"
        nodes = [helper.make_node("DequantizeLinear", [codes.name, f"{name}_scale8", f"{name}_zp8"], [deq_out],
                                  name=f"{name}_dq8", **attrs)]
        if offset is not None:
            nodes.append(helper.make_node("Add", [deq_out, by_output[name].input[1]], [name], name=f"{name}_off8"))
        made[name] = nodes
        drop |= {n.output[0] for n in chain} | set(tail_outputs)
        manifest.append({"tensor": name, "bits": int(k), "plane_bytes": int(per_plane), "n": n,
                         "planes_offset": planes_at, "codes_offset": codes_at})
        planes_out.append(np.ascontiguousarray(planes, np.uint8).tobytes())
        planes_at += int(planes.size)
        codes_at += n
    if not made:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in graph.node:
        if node.output[0] in drop:
            if node.output[0] in made:  # the decoder's last node: its DequantizeLinear form in its place
                nodes += made[node.output[0]]
            continue
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    read = {x for n in nodes for x in n.input}
    kept = [i for i in out.graph.initializer if i.name in read]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + new_inits)
    return PageForm(out, b"".join(planes_out), {"codes": CODES, "planes": PLANES, "codes_bytes": codes_at,
                                                 "tensors": manifest}, notes)


def unpack(planes: bytes, manifest: dict) -> bytes:
    """The page's unpacking in numpy: the codes.bin the page builds from planes.bin."""
    out = np.zeros(manifest["codes_bytes"], np.uint8)
    buf = np.frombuffer(planes, np.uint8)
    for t in manifest["tensors"]:
        p = buf[t["planes_offset"]: t["planes_offset"] + t["bits"] * t["plane_bytes"]].reshape(t["bits"], -1)
        bits = np.unpackbits(p, axis=1)[:, : t["n"]]
        codes = np.zeros(t["n"], np.uint8)
        for i in range(t["bits"]):
            codes |= (bits[i] << i).astype(np.uint8)
        out[t["codes_offset"]: t["codes_offset"] + t["n"]] = codes
    return out.tobytes()
