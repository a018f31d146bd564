"""What a method hands to a format: integer codes plus a decoder that turns them back into float32 weights.

    Affine(scale, offset, zero_point)   x_hat = float32(q - zero_point) * scale + offset
    Codebook(levels)                    x_hat = levels[q]            (per channel: levels[c, q])

Each decoder has exactly one float32 formula (`decode`), which the fake format stores and the int and packed
graphs reproduce bit for bit (DequantizeLinear computes float32(q - zp) * scale; Gather copies a level).

Granularity: `tensor` (one decoder), `channel` (one per output channel, along the weight's axis) or `group:G` (one
per G consecutive weights of an output channel's row, in the layer's input-column order: rows(weight, axis) is
[C, K] and its columns split into ceil(K / G) groups, the last one shorter where G does not divide K; the block
layout of onnxruntime's MatMulNBits and of blocked DequantizeLinear). A grouped Solution keeps its decoder's
parameters compact in row form: scale, offset and zero point [C, ceil(K / G)], codebook levels [C * ceil(K / G), L].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ganq.errors import GanqError

GRANULARITIES = ("tensor", "channel", "group:G")
MIN_GROUP, MAX_GROUP = 16, 65536
MAX_BITS = 16


def parse_granularity(text) -> tuple[str, int | None]:
    """'tensor' | 'channel' | 'group:G' -> (kind, G or None); one GanqError otherwise (G a power of two >= 16)."""
    if text in ("tensor", "channel"):
        return text, None
    if isinstance(text, str) and text.startswith("group:"):
        g = text[len("group:"):]
        if g.isdigit() and MIN_GROUP <= int(g) <= MAX_GROUP and int(g) & (int(g) - 1) == 0:
            return "group", int(g)
    raise GanqError(f"granularity must be tensor, channel or group:G (G a power of two from {MIN_GROUP} to "
                    f"{MAX_GROUP}), got {text!r}")


def expand_groups(p: np.ndarray, group: int, k: int) -> np.ndarray:
    """Compact row-form parameters [C, ng] -> [C, k]: each repeated over its group's columns."""
    return np.repeat(p, group, axis=1)[:, :k]


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
    group: int | None = None   # group:G granularity (axis is then the output-channel axis of the row form)

    def dequantize(self) -> np.ndarray:
        if self.group:
            return unrows(self.row_decoder().decode(rows(self.codes, self.axis)), self.codes.shape, self.axis)
        if isinstance(self.decoder, Codebook):
            return self.decoder.decode(self.codes, self.axis)
        return self.decoder.decode(self.codes)

    def row_decoder(self) -> "Affine | _GroupedCodebook":
        """The grouped decoder on row-form codes [C, K]: an Affine with its parameters expanded over the groups (one
        float32 formula), or a codebook's levels indexed through `group_index`."""
        k = rows(self.codes, self.axis).shape[1]
        if isinstance(self.decoder, Codebook):
            return _GroupedCodebook(self.decoder.levels, self.group)
        d = self.decoder
        return Affine(*(expand_groups(a, self.group, k) for a in (d.scale, d.offset, d.zero_point)))

    @property
    def groups(self) -> int:
        """Groups per output channel (1 per channel or per tensor)."""
        return -(-rows(self.codes, self.axis).shape[1] // self.group) if self.group else 1

    @property
    def levels_used(self) -> int:
        return int(np.unique(self.codes).size)


@dataclass(frozen=True)
class _GroupedCodebook:
    """levels [C * ng, L] of a grouped codebook, decoding row-form codes [C, K]."""

    levels: np.ndarray
    group: int

    def decode(self, codes_rows: np.ndarray) -> np.ndarray:
        return self.levels.reshape(-1)[group_index(codes_rows, self.levels.shape[1], self.group)]


def group_index(codes_rows: np.ndarray, per: int, group: int) -> np.ndarray:
    """Flat indices into grouped levels [C * ng, per] of row-form codes [C, K]."""
    c, k = codes_rows.shape
    ng = -(-k // group)
    base = (np.arange(c, dtype=np.int64)[:, None] * ng + np.arange(k, dtype=np.int64)[None, :] // group) * per
    return codes_rows.astype(np.int64) + base


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
