"""What a method hands to a format: integer codes plus a decoder that turns them back into float32 weights.

    Affine(scale, offset, zero_point)   x_hat = float32(q - zero_point) * scale + offset
    Codebook(levels)                    x_hat = levels[q]            (per channel: levels[c, q])

Each decoder has exactly one float32 formula (`decode`), which the fake format stores and the int and packed
graphs reproduce bit for bit (DequantizeLinear computes float32(q - zp) * scale; Gather copies a level).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ganq.errors import GanqError

GRANULARITIES = ("tensor", "channel")
MAX_BITS = 16


def code_dtype(bits: int):
    return np.uint8 if bits <= 8 else np.uint16


def channel_shape(ndim: int, axis: int | None, size: int) -> tuple[int, ...]:
    """The keepdims shape of a per-channel parameter: size along axis, 1 elsewhere ([] per tensor)."""
    if axis is None:
        return ()
    return tuple(size if i == axis else 1 for i in range(ndim))


@dataclass(frozen=True)
class Affine:
    """scale, offset: float32 broadcastable to the codes ([] per tensor, keepdims along the axis per channel);
    zero_point: integer codes of the same shape (0 for an unsigned grid that starts at `offset`)."""

    scale: np.ndarray
    offset: np.ndarray
    zero_point: np.ndarray

    kind = "affine"

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if np.any(self.zero_point):
            q = (codes.astype(np.int64) - self.zero_point.astype(np.int64)).astype(np.float32)
        else:
            q = codes.astype(np.float32)
        return (q * self.scale).astype(np.float32) + self.offset

    @property
    def has_offset(self) -> bool:
        return bool(np.any(self.offset))

    @property
    def uniform_zero_point(self) -> bool:
        return bool(np.all(self.zero_point == self.zero_point.reshape(-1)[0]))

    def nbytes(self, bits: int) -> int:
        """Decoder bytes: float32 scale, the offset when not all zero, the zero point when used (one value when
        every channel shares it, else k bits a channel)."""
        zp = 0
        if np.any(self.zero_point):
            zp = 4 if self.uniform_zero_point else int(np.ceil(self.zero_point.size * bits / 8))
        return 4 * self.scale.size + (4 * self.offset.size if self.has_offset else 0) + zp


@dataclass(frozen=True)
class Codebook:
    """levels: float32 [L] per tensor, or [C, L] per channel (channel c along the weight's axis)."""

    levels: np.ndarray

    kind = "codebook"

    def decode(self, codes: np.ndarray, axis: int | None) -> np.ndarray:
        return self.levels.reshape(-1)[self.flat_index(codes, axis)]

    def flat_index(self, codes: np.ndarray, axis: int | None) -> np.ndarray:
        idx = codes.astype(np.int64)
        if axis is None:
            return idx
        per = self.levels.shape[1]
        return idx + (np.arange(self.levels.shape[0], dtype=np.int64) * per).reshape(
            channel_shape(codes.ndim, axis, self.levels.shape[0]))

    def nbytes(self, bits: int) -> int:
        return 4 * self.levels.size


@dataclass(frozen=True)
class Solution:
    """A method's answer for one weight: codes (uint, the weight's shape, or the split shape for OCS) in
    [0, 2^bits - 1], their decoder, and the channel axis (None per tensor). `split`: for outlier channel splitting,
    the input channels (along `in_axis`) the layer's input must repeat, in order; `info`: what the method chose."""

    codes: np.ndarray
    decoder: Affine | Codebook
    bits: int
    axis: int | None
    split: tuple[int, ...] = ()
    in_axis: int | None = None
    info: dict = field(default_factory=dict)

    def dequantize(self) -> np.ndarray:
        if isinstance(self.decoder, Codebook):
            return self.decoder.decode(self.codes, self.axis)
        return self.decoder.decode(self.codes)

    @property
    def levels_used(self) -> int:
        return int(np.unique(self.codes).size)


def check_weight(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise GanqError("cannot quantize an empty tensor")
    if not np.all(np.isfinite(x)):
        raise GanqError("cannot quantize a tensor holding NaN or infinity")
    return x


def rows(x: np.ndarray, axis: int | None) -> np.ndarray:
    """x as [C, n]: one row per channel (one row in all per tensor)."""
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def unrows(r: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    """Inverse of rows."""
    if axis is None:
        return r.reshape(shape)
    moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
    return np.moveaxis(r.reshape(moved), 0, axis)
