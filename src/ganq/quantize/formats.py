"""Storage formats: how a QuantizedTensor lives in the ONNX file.

fake    x_hat as float32 initializers (the study's method; the file does not shrink)
int     codes in the smallest ONNX integer type (UINT4 raw-packed two per byte, UINT8, UINT16) -> DequantizeLinear
        -> Add(minimum): the exact min-max grid, zero point 0
packed  codes as k bit planes of packbits-ed uint8, decoded in the graph by BitShift/BitwiseAnd/Cast/ReduceSum,
        then Mul(scale), Add(minimum); all constant, so onnxruntime folds the decoder when it loads the model
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ganq.errors import GanqError
from ganq.quantize.schemes import QuantizedTensor

FORMATS = ("fake", "int", "packed")


class GraphBuilder:
    """Collects the initializers and nodes that replace weight initializers; shared constants are made once."""

    def __init__(self, taken: set[str], prefix: str = "ganq_q"):
        self.prefix, self.inits, self.nodes, self._shared, self.taken = prefix, [], [], {}, set(taken)

    def fresh(self, name: str) -> str:
        """A name no tensor of the graph has yet."""
        candidate, i = name, 1
        while candidate in self.taken:
            candidate, i = f"{name}_{i}", i + 1
        self.taken.add(candidate)
        return candidate

    def init(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def shared(self, key: str, array: np.ndarray) -> str:
        if key not in self._shared:
            self._shared[key] = self.init(f"{self.prefix}_{key}", array)
        return self._shared[key]

    def node(self, op: str, inputs: list[str], output: str, final: bool = False, **attrs) -> str:
        """A node computing `output`; its name is made unique unless it is the final (replaced) tensor."""
        output = output if final else self.fresh(output)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def code_container(bits: int, opset: int) -> tuple[type, int]:
    """(numpy dtype, ONNX type) of the smallest integer type DequantizeLinear takes at this opset."""
    if bits <= 4 and opset >= 21:
        return ml_dtypes.uint4, TensorProto.UINT4
    if bits <= 8:
        return np.uint8, TensorProto.UINT8
    if opset >= 21:
        return np.uint16, TensorProto.UINT16
    raise GanqError(f"the int format for {bits} bits needs opset 21 (uint16 DequantizeLinear); the model has {opset}")


def _affine(b: GraphBuilder, name: str, q: QuantizedTensor, value: str, out: str) -> str:
    """out = value * scale + minimum (float32), with scale/minimum broadcast along the channel axis."""
    scaled = b.node("Mul", [value, b.init(f"{name}_scale", q.scale)], f"{name}_scaled")
    return b.node("Add", [scaled, b.init(f"{name}_min", q.minimum)], out, final=True)


def emit_int(b: GraphBuilder, name: str, q: QuantizedTensor, opset: int) -> int:
    """Replace initializer `name` by DequantizeLinear(codes) + minimum; returns bytes stored."""
    if opset < 13 and q.axis is not None:
        raise GanqError(f"per-channel int format needs opset >= 13 (DequantizeLinear axis); the model has {opset}")
    np_type, _ = code_container(q.bits, opset)
    codes = q.codes.astype(np_type)
    per_channel = q.axis is not None
    scale = q.scale.reshape(-1) if per_channel else q.scale.reshape(())
    zp = np.zeros(scale.shape, dtype=np_type)
    attrs = {"axis": q.axis} if per_channel else {}
    deq = b.node("DequantizeLinear", [b.init(f"{name}_q", codes), b.init(f"{name}_qscale", scale),
                                      b.init(f"{name}_zp", zp)], f"{name}_dq", **attrs)
    b.node("Add", [deq, b.init(f"{name}_min", q.minimum)], name, final=True)
    return _nbytes(codes) + 4 * scale.size + _nbytes(zp) + 4 * q.minimum.size


def _nbytes(a: np.ndarray) -> int:
    return (a.size + 1) // 2 if a.dtype in (ml_dtypes.uint4, ml_dtypes.int4) else a.nbytes


def pack_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint codes [n] -> uint8 [bits, ceil(n / 8)]: plane j holds bit j of every code, 8 codes per byte (MSB first)."""
    flat = codes.reshape(-1).astype(np.uint32)
    return np.stack([np.packbits(((flat >> j) & 1).astype(np.uint8)) for j in range(bits)])


def unpack_planes(planes: np.ndarray, n: int) -> np.ndarray:
    """Inverse of pack_planes (numpy reference of the in-graph decoder)."""
    bits = np.unpackbits(planes, axis=1)[:, :n].astype(np.uint32)
    return (bits << np.arange(len(planes), dtype=np.uint32)[:, None]).sum(axis=0)


def emit_packed(b: GraphBuilder, name: str, q: QuantizedTensor, opset: int) -> int:
    if opset < 18:
        raise GanqError(f"the packed format needs opset >= 18 (BitwiseAnd); the model has {opset}")
    n, k = q.codes.size, q.bits
    planes = pack_planes(q.codes, k)
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
    x = b.node("Reshape", [x, b.init(f"{name}_shape", np.array(q.codes.shape, np.int64))], f"{name}_qf")
    _affine(b, name, q, x, name)
    return planes.nbytes + 4 * q.scale.size + 4 * q.minimum.size
