"""Quantization schemes as pure numpy: weights -> (integer codes, scale, minimum) on an exact float32 grid.

Every format rebuilds the weights with the same float32 arithmetic, x_hat = float32(q) * scale + minimum, so the
fake-quantized floats and the int/packed graphs hold bit-identical weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.errors import GanqError

GRANULARITIES = ("tensor", "channel")
MAX_BITS = 16


@dataclass(frozen=True)
class QuantizedTensor:
    """codes: uint [*shape] in [0, 2^bits - 1]; scale, minimum: float32 broadcastable to shape
    ([] per tensor; size C along `axis`, 1 elsewhere, per channel)."""

    codes: np.ndarray
    scale: np.ndarray
    minimum: np.ndarray
    bits: int
    axis: int | None

    def dequantize(self) -> np.ndarray:
        """x_hat = float32(q) * scale + minimum, in float32 (as DequantizeLinear followed by Add computes it)."""
        return (self.codes.astype(np.float32) * self.scale).astype(np.float32) + self.minimum

    @property
    def code_dtype(self):
        return np.uint8 if self.bits <= 8 else np.uint16


@dataclass(frozen=True)
class MinMax:
    """The study's min-max quantizer: scale = (max - min) / (2^k - 1), q = round((x - min) / scale)."""

    bits: int
    granularity: str = "tensor"

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise GanqError(f"bits must be an integer from 1 to {MAX_BITS} (32 leaves the model float), got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise GanqError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")

    def quantize(self, x: np.ndarray, axis: int | None = None) -> QuantizedTensor:
        """x: float32 [*shape]; axis: the output-channel axis, used when granularity is 'channel'."""
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            raise GanqError("cannot quantize an empty tensor")
        if not np.all(np.isfinite(x)):
            raise GanqError("cannot quantize a tensor holding NaN or infinity")
        per_channel = self.granularity == "channel" and axis is not None and x.ndim > 0
        if per_channel:
            axis = axis % x.ndim
            reduce = tuple(i for i in range(x.ndim) if i != axis)
            lo, hi = x.min(axis=reduce, keepdims=True), x.max(axis=reduce, keepdims=True)
        else:
            axis = None
            lo, hi = np.asarray(x.min(), dtype=np.float32), np.asarray(x.max(), dtype=np.float32)
        levels = np.float32(2 ** self.bits - 1)
        scale = ((hi - lo) / levels).astype(np.float32)
        # A constant tensor (max = min) gets scale 1 and code 0: it comes back as exactly its minimum.
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        codes = np.clip(np.rint((x.astype(np.float64) - lo) / scale), 0, levels)
        qt = QuantizedTensor(codes.astype(np.uint8 if self.bits <= 8 else np.uint16), scale, lo.astype(np.float32),
                             self.bits, axis)
        return qt


METHODS = {"minmax": MinMax}


def make(method: str, bits: int, granularity: str = "tensor"):
    if method not in METHODS:
        raise GanqError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method](bits=bits, granularity=granularity)
