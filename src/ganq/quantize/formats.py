"""Storage formats: how a Solution (codes + decoder) lives in the ONNX file.

fake    x_hat as float32 initializers (the study's method; the file does not shrink)
int     affine: codes in the smallest ONNX integer type (UINT4 raw-packed two per byte, UINT8, UINT16)
        -> DequantizeLinear(scale, zero point) -> Add(offset);
        codebook: UINT4/UINT8 codes -> Cast(int32) [-> Add(channel * L)] -> Gather(levels)
packed  codes as k bit planes of packbits-ed uint8, decoded in the graph by BitShift/BitwiseAnd/Cast/ReduceSum,
        then the affine decoder ([Sub(zero point)], Mul(scale), Add(offset)) or the Gather
Every decoder depends on initializers only, so onnxruntime folds it when it loads the model.

group:G solutions decode in the row form [C, K] (int: a blocked DequantizeLinear, block_size G along axis 1; packed
and codebooks: the compact parameters expanded over their groups by Expand / Reshape / Slice), then Reshape (and
Transpose when the output-channel axis is not the first) back to the weight's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import ml_dtypes
import numpy as np
from onnx import TensorProto

from ganq.errors import GanqError
from ganq.quantize.decoders import Affine, Codebook, Solution, channel_shape, rows
from ganq.quantize.edit import GraphEdit
from ganq.registry import Registry


def code_container(bits: int, opset: int) -> tuple[type, int]:
    """(numpy dtype, ONNX type) of the smallest integer type DequantizeLinear takes at this opset."""
    if bits <= 4 and opset >= 21:
        return ml_dtypes.uint4, TensorProto.UINT4
    if bits <= 8:
        return np.uint8, TensorProto.UINT8
    if opset >= 21:
        return np.uint16, TensorProto.UINT16
    raise GanqError(f"the int format for {bits} bits needs opset 21 (uint16 DequantizeLinear); the model has {opset}")


def _nbytes(a: np.ndarray) -> int:
    return (a.size + 1) // 2 if a.dtype in (ml_dtypes.uint4, ml_dtypes.int4) else a.nbytes


def _affine_tail(b: GraphEdit, name: str, dec: Affine, value: str, out: str) -> str:
    """out = (value - zero point) * scale + offset (float32), parameters broadcast along the channel axis."""
    if np.any(dec.zero_point):
        zp = dec.zero_point.astype(np.float32)
        zp = zp.reshape(-1)[:1].reshape(()) if dec.uniform_zero_point else zp
        value = b.node("Sub", [value, b.init(f"{name}_zpf", zp)], f"{name}_c")
    if not dec.has_offset:
        return b.node("Mul", [value, b.init(f"{name}_scale", dec.scale)], out, final=True)
    scaled = b.node("Mul", [value, b.init(f"{name}_scale", dec.scale)], f"{name}_scaled")
    return b.node("Add", [scaled, b.init(f"{name}_min", dec.offset)], out, final=True)


def _gather_tail(b: GraphEdit, name: str, sol: Solution, index: str, out: str) -> str:
    """out = levels[index] (+ channel * L per channel); index is an int32 tensor shaped like the weight."""
    dec: Codebook = sol.decoder
    if sol.axis is not None:
        c, per = dec.levels.shape
        offsets = b.node("Range", [b.shared("zero_i32", np.array(0, np.int32)),
                                   b.init(f"{name}_cl", np.array(c * per, np.int32)),
                                   b.init(f"{name}_l", np.array(per, np.int32))], f"{name}_range")
        offsets = b.node("Reshape", [offsets, b.init(f"{name}_cshape", np.array(
            channel_shape(sol.codes.ndim, sol.axis, c), np.int64))], f"{name}_coff")
        index = b.node("Add", [index, offsets], f"{name}_idx")
    return b.node("Gather", [b.init(f"{name}_levels", dec.levels.reshape(-1)), index], out, final=True)


def _expand(b: GraphEdit, name: str, p: np.ndarray, group: int, k: int) -> str:
    """Compact row-form parameters p [C, ng] as a tensor [C, k], each repeated over its group's columns."""
    c, ng = p.shape
    x = b.init(name, np.ascontiguousarray(p).reshape(c, ng, 1))
    x = b.node("Expand", [x, b.init(f"{name}_eshape", np.array([c, ng, group], np.int64))], f"{name}_e")
    x = b.node("Reshape", [x, b.init(f"{name}_rshape", np.array([c, ng * group], np.int64))], f"{name}_r")
    if ng * group == k:
        return x
    return b.node("Slice", [x, b.shared("zero1", np.array([0], np.int64)), b.init(f"{name}_k", np.array([k], np.int64)),
                            b.shared("one1", np.array([1], np.int64))], f"{name}_s")


def _to_weight(b: GraphEdit, name: str, value: str, sol: Solution, out: str) -> str:
    """out = the row-form value [C, K] back in the weight's shape (Reshape, then Transpose unless axis is 0)."""
    shape, axis = sol.codes.shape, sol.axis
    moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
    if axis == 0:
        return b.node("Reshape", [value, b.init(f"{name}_wshape", np.array(moved, np.int64))], out, final=True)
    x = b.node("Reshape", [value, b.init(f"{name}_mshape", np.array(moved, np.int64))], f"{name}_m")
    perm = [0 if i == axis else (i + 1 if i < axis else i) for i in range(len(shape))]
    return b.node("Transpose", [x], out, final=True, perm=perm)


def _grouped_tail(b: GraphEdit, name: str, sol: Solution, value: str, out: str) -> int:
    """out = the grouped decoder applied to row-form codes `value` ([C, K]: float32 for affine, int32 for a
    codebook), in the weight's shape; returns the decoder's bytes."""
    c, k = rows(sol.codes, sol.axis).shape
    dec = sol.decoder
    if isinstance(dec, Codebook):
        per = dec.levels.shape[1]
        base = (np.arange(c, dtype=np.int32)[:, None] * sol.groups + np.arange(sol.groups, dtype=np.int32)) * per
        index = b.node("Add", [value, _expand(b, f"{name}_gbase", base, sol.group, k)], f"{name}_idx")
        x = b.node("Gather", [b.init(f"{name}_levels", dec.levels.reshape(-1)), index], f"{name}_lv")
        _to_weight(b, name, x, sol, out)
        return 4 * dec.levels.size
    if np.any(dec.zero_point):
        zp = b.init(f"{name}_zpf", dec.zero_point.reshape(-1)[:1].reshape(()).astype(np.float32)) \
            if dec.uniform_zero_point else _expand(b, f"{name}_zpf", dec.zero_point.astype(np.float32), sol.group, k)
        value = b.node("Sub", [value, zp], f"{name}_c")
    x = b.node("Mul", [value, _expand(b, f"{name}_scale", dec.scale, sol.group, k)], f"{name}_scaled")
    if dec.has_offset:
        x = b.node("Add", [x, _expand(b, f"{name}_min", dec.offset, sol.group, k)], f"{name}_w")
    _to_weight(b, name, x, sol, out)
    return dec.nbytes(32)  # the zero point is stored as float32


def emit_fake(b: GraphEdit, name: str, sol: Solution, opset: int) -> int:
    b.replace[name] = sol.dequantize()
    return b.replace[name].nbytes


def emit_int(b: GraphEdit, name: str, sol: Solution, opset: int) -> int:
    """Replace initializer `name` by its integer codes and decoder; returns bytes stored."""
    np_type, _ = code_container(sol.bits, opset)
    if sol.group:
        return _emit_int_grouped(b, name, sol, opset, np_type)
    codes = sol.codes.astype(np_type)
    if isinstance(sol.decoder, Codebook):
        if sol.bits > 8:
            raise GanqError(f"{name}: codebook codes above 8 bits are not supported")
        index = b.node("Cast", [b.init(f"{name}_q", codes)], f"{name}_i", to=TensorProto.INT32)
        _gather_tail(b, name, sol, index, name)
        return _nbytes(codes) + 4 * sol.decoder.levels.size
    dec = sol.decoder
    if opset < 13 and sol.axis is not None:
        raise GanqError(f"per-channel int format needs opset >= 13 (DequantizeLinear axis); the model has {opset}")
    per_channel = sol.axis is not None
    scale = dec.scale.reshape(-1) if per_channel else dec.scale.reshape(())
    zp = dec.zero_point.reshape(scale.shape).astype(np_type)
    attrs = {"axis": sol.axis} if per_channel else {}
    deq = b.node("DequantizeLinear", [b.init(f"{name}_q", codes), b.init(f"{name}_qscale", scale),
                                      b.init(f"{name}_zp", zp)], f"{name}_dq", **attrs)
    if not dec.has_offset:
        b.nodes[-1].output[0] = name  # DequantizeLinear gives the weight itself
        b.nodes[-1].name = name
        return _nbytes(codes) + 4 * scale.size + _nbytes(zp)
    b.node("Add", [deq, b.init(f"{name}_min", dec.offset)], name, final=True)
    return _nbytes(codes) + 4 * scale.size + _nbytes(zp) + 4 * dec.offset.size


def _emit_int_grouped(b: GraphEdit, name: str, sol: Solution, opset: int, np_type) -> int:
    """Row-form codes [C, K]: a blocked DequantizeLinear (opset 21) [+ Add(expanded offset)], or a codebook's
    Cast -> Gather, then the weight's layout."""
    codes = rows(sol.codes, sol.axis).astype(np_type)
    q = b.init(f"{name}_q", codes)
    if isinstance(sol.decoder, Codebook):
        if sol.bits > 8:
            raise GanqError(f"{name}: codebook codes above 8 bits are not supported")
        index = b.node("Cast", [q], f"{name}_i", to=TensorProto.INT32)
        return _nbytes(codes) + _grouped_tail(b, name, sol, index, name)
    if opset < 21:
        raise GanqError(f"group:G in the int format needs opset 21 (blocked DequantizeLinear); the model has {opset}")
    dec = sol.decoder
    zp = dec.zero_point.astype(np_type)
    deq = b.node("DequantizeLinear", [q, b.init(f"{name}_qscale", dec.scale), b.init(f"{name}_zp", zp)],
                 f"{name}_dq", axis=1, block_size=sol.group)
    stored = _nbytes(codes) + 4 * dec.scale.size + _nbytes(zp)
    if dec.has_offset:
        deq = b.node("Add", [deq, _expand(b, f"{name}_min", dec.offset, sol.group, codes.shape[1])], f"{name}_w")
        stored += 4 * dec.offset.size
    _to_weight(b, name, deq, sol, name)
    return stored


def pack_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint codes [n] -> uint8 [bits, ceil(n / 8)]: plane j holds bit j of every code, 8 codes per byte (MSB first)."""
    flat = codes.reshape(-1).astype(np.uint32)
    return np.stack([np.packbits(((flat >> j) & 1).astype(np.uint8)) for j in range(bits)])


def unpack_planes(planes: np.ndarray, n: int) -> np.ndarray:
    """Inverse of pack_planes (numpy reference of the in-graph decoder)."""
    bits = np.unpackbits(planes, axis=1)[:, :n].astype(np.uint32)
    return (bits << np.arange(len(planes), dtype=np.uint32)[:, None]).sum(axis=0)


def emit_packed(b: GraphEdit, name: str, sol: Solution, opset: int) -> int:
    if opset < 18:
        raise GanqError(f"the packed format needs opset >= 18 (BitwiseAnd); the model has {opset}")
    n, k = sol.codes.size, sol.bits
    planes = pack_planes(rows(sol.codes, sol.axis) if sol.group else sol.codes, k)
    p = b.init(f"{name}_planes", planes)
    x = b.node("Unsqueeze", [p, b.shared("axis2", np.array([2], np.int64))], f"{name}_u")
    x = b.node("BitShift", [x, b.shared("shifts", np.arange(7, -1, -1, dtype=np.uint8))], f"{name}_sh",
               direction="RIGHT")
    x = b.node("BitwiseAnd", [x, b.shared("one", np.array(1, np.uint8))], f"{name}_bits")
    x = b.node("Reshape", [x, b.init(f"{name}_pshape", np.array([k, planes.shape[1] * 8], np.int64))], f"{name}_r")
    x = b.node("Slice", [x, b.shared("zero1", np.array([0], np.int64)), b.init(f"{name}_n", np.array([n], np.int64)),
                         b.shared("one1", np.array([1], np.int64))], f"{name}_sl")
    x = b.node("Cast", [x], f"{name}_f", to=TensorProto.FLOAT)
    x = b.node("Mul", [x, b.shared(f"pow2_{k}", (2.0 ** np.arange(k, dtype=np.float32)).reshape(k, 1))], f"{name}_w")
    x = b.node("ReduceSum", [x, b.shared("axis0", np.array([0], np.int64))], f"{name}_codes", keepdims=0)
    if sol.group:
        x = b.node("Reshape", [x, b.init(f"{name}_shape", np.array(rows(sol.codes, sol.axis).shape, np.int64))],
                   f"{name}_qf")
        if isinstance(sol.decoder, Codebook):
            x = b.node("Cast", [x], f"{name}_i", to=TensorProto.INT32)
        return planes.nbytes + _grouped_tail(b, name, sol, x, name)
    x = b.node("Reshape", [x, b.init(f"{name}_shape", np.array(sol.codes.shape, np.int64))], f"{name}_qf")
    if isinstance(sol.decoder, Codebook):
        index = b.node("Cast", [x], f"{name}_i", to=TensorProto.INT32)
        _gather_tail(b, name, sol, index, name)
        return planes.nbytes + 4 * sol.decoder.levels.size
    _affine_tail(b, name, sol.decoder, x, name)
    return planes.nbytes + sol.decoder.nbytes(32)  # the zero point is stored as float32


def emit_nbits(b: GraphEdit, name: str, sol: Solution, opset: int) -> int:
    """MatMul / Gemm weights as MatMulNBits (quantize.nbits), any other weight in the int form (with a note in
    sol.info saying why)."""
    from ganq.quantize import nbits

    node, why = nbits.eligible(b.graph, name, sol)
    if node is None:
        sol.info["nbits"] = {"kept_int": why}
        return emit_int(b, name, sol, opset)
    a = nbits.nbits_arrays(sol)
    nbits.build(b, node, name, a)
    sol.info["nbits"] = {"op": node.op_type, "container_bits": a["bits"], "block_size": a["block"],
                         "zero_point": a["zero_point_kind"], "bytes_codes": int(a["B"].nbytes), **a["diff"]}
    return a["B"].nbytes + a["scales"].nbytes + a["zero_points"].nbytes


def code_bytes(fmt: str, n: int, bits: int, opset: int) -> int:
    """Bytes the codes of n weights take in a format (the decoder's parameters not counted): fake stores float32
    x_hat, int the smallest integer container (UINT4 two a byte), packed k bit planes."""
    if fmt == "fake":
        return 4 * n
    if fmt == "packed":
        return bits * ((n + 7) // 8)
    if fmt == "nbits":  # the int form's; a MatMulNBits tensor's row says its own (row_code_bytes)
        fmt = "int"
    if bits <= 4 and opset >= 21:
        return (n + 1) // 2
    return n if bits <= 8 else 2 * n


def row_code_bytes(row: dict, fmt: str, opset: int) -> int:
    """The codes' bytes of one report row (a MatMulNBits tensor: its padded container)."""
    nb = (row.get("info") or {}).get("nbits", {})
    if "bytes_codes" in nb:
        return nb["bytes_codes"]
    return code_bytes(fmt, row.get("params_stored", row["params"]), row["bits"], opset)


@dataclass(frozen=True)
class Format:
    name: str
    summary: str
    emit: Callable[[GraphEdit, str, Solution, int], int]
    min_opset: int = 1


FORMATS: Registry[Format] = Registry("format")
FORMATS.register("fake", Format("fake", "float32 x_hat (the study's fake quantization; the file does not shrink)",
                                emit_fake))
FORMATS.register("int", Format("int", "integer codes (UINT4/UINT8/UINT16) -> DequantizeLinear, or -> Gather for a "
                                      "codebook", emit_int, 13))
FORMATS.register("packed", Format("packed", "k bit planes decoded in the graph (the real k-bit size)", emit_packed,
                                  18))
FORMATS.register("nbits", Format("nbits", "MatMul / Gemm weights as onnxruntime's MatMulNBits (2/4/8-bit blocks, "
                                          "--granularity group:G), other weights in the int form", emit_nbits, 21))
