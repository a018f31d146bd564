"""What the calibrated methods (gptq, adaround) share: the grid they round onto, in W_rows form, and the output
error tr(dW H dW^T) they minimise.

W_rows = rows(weight, out_axis) is [C_out, K] whatever the op; the grid is the `grid` method's Affine decoder (minmax
mse or symmetric) on the weight, per tensor (one scale and offset) or per output channel (one per row). symmetric's
grid (q - 2^(k-1)) * scale, q in 1..2^k - 1, is the offset grid code * scale - (2^(k-1) - 1) * scale over
2^k - 1 codes, stored back with zero point 2^(k-1): integer kernels' per-channel weights."""

from __future__ import annotations

import numpy as np

from ganq.errors import GanqError
from ganq.quantize.decoders import rows, unrows
from ganq.quantize.methods import Method, SolveContext, affine_solution, make_method, prepare

GRIDS = ("minmax", "mse", "symmetric")


def grid_rows(x: np.ndarray, bits: int, axis, out_axis: int, grid: str, group: int | None = None):
    """(W_rows float32 [C, K], scale [C, 1], offset [C, 1]) of the grid method's solution; with group:G, scale and
    offset [C, K] (constant over each group's columns)."""
    w = rows(x, out_axis)
    if group:
        from ganq.quantize.groups import group_grid

        scale, offset, _ = group_grid(make_method(grid), x, bits, out_axis, group)
        if grid == "symmetric":
            offset = -np.float32(2 ** (bits - 1) - 1) * scale
        return w, scale.astype(np.float32), offset.astype(np.float32)
    sol = make_method(grid).solve(x, bits, axis)
    c = w.shape[0]
    scale = np.broadcast_to(sol.decoder.scale, x.shape)
    offset = np.broadcast_to(sol.decoder.offset, x.shape)
    if grid == "symmetric":
        offset = -np.float32(2 ** (bits - 1) - 1) * scale
    s = rows(np.ascontiguousarray(scale), out_axis)[:, :1].astype(np.float32)
    o = rows(np.ascontiguousarray(offset), out_axis)[:, :1].astype(np.float32)
    assert s.shape == (c, 1)
    return w, s, o


def nearest(w, scale, offset, levels):
    """Round-to-nearest codes (float64) of rows w on the grid, as affine_codes rounds."""
    return np.clip(np.rint((w.astype(np.float64) - offset) / scale), 0, levels)


def decode(codes, scale, offset):
    return (codes.astype(np.float32) * scale).astype(np.float32) + offset


def output_error(w, w_hat, h) -> np.ndarray:
    """Per row ||(w - w_hat) X||^2 / m = (dW H dW^T)_rr, float64."""
    d = w.astype(np.float64) - w_hat.astype(np.float64)
    return np.einsum("ij,ij->i", d @ h, d)


def check_context(name: str, ctx: SolveContext | None, x: np.ndarray):
    if ctx is None or ctx.hessian is None or ctx.out_axis is None:
        raise GanqError(f"method {name} needs calibration (the layer's inputs); quantize a whole model with it")
    w = rows(x, ctx.out_axis)
    if ctx.hessian.shape != (w.shape[1], w.shape[1]):
        raise GanqError(f"method {name}: the layer's input columns ({ctx.hessian.shape[0]}) do not match the "
                        f"weight's ({w.shape[1]})")
    return ctx.out_axis


def solution(x, axis, out_axis, codes_rows, scale, offset, bits, symmetric: bool = False, group=None, **info):
    """Codes in W_rows form -> a Solution along `axis` (None per tensor: scale and offset are one value; group:G:
    scale and offset [C, K]); symmetric: the codes shifted by one onto zero point 2^(k-1), no offset."""
    x, axis, _ = prepare(x, axis)
    if group:
        from ganq.quantize.groups import from_rows

        zp = None
        if symmetric:
            codes_rows, offset, zp = codes_rows + 1, np.zeros_like(offset), np.full(scale.shape, 2 ** (bits - 1))
        return from_rows(x, out_axis, codes_rows, scale, offset, bits, group, zero_point_rows=zp, **info)
    full = unrows(codes_rows, x.shape, out_axis)
    zp = None
    if symmetric:
        full, offset, zp = full + 1, np.zeros_like(offset), np.full(scale.shape, 2 ** (bits - 1))
    if axis is None:
        return affine_solution(x, None, full.reshape(1, -1), scale[:1], offset[:1], bits,
                               zero_point=None if zp is None else zp[:1], **info)
    return affine_solution(x, axis, rows(full, axis), scale, offset, bits, zero_point=zp, **info)


class CalibratedMethod(Method):
    """Base of gptq and adaround: the grid from `self.grid`, the codes from `self.codes`, the output errors (theirs
    and round-to-nearest's on the same grid) in the Solution's info. Subclasses are frozen dataclasses with a
    `grid` field."""

    calibrated = True

    @property
    def zero_centred(self) -> bool:
        return self.grid == "symmetric"

    def fallback(self) -> Method:
        return make_method(self.grid)

    def codes(self, w, h, scale, offset, levels) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, _ = prepare(x, axis)
        out_axis = check_context(self.name, ctx, x)
        group = ctx.group_size
        w, scale, offset = grid_rows(x, bits, axis, out_axis, self.grid, group)
        levels = 2 ** bits - (2 if self.grid == "symmetric" else 1)
        codes, info = self.codes(w, ctx.hessian, scale, offset, levels)
        err = output_error(w, decode(codes, scale, offset), ctx.hessian).sum()
        rtn = output_error(w, decode(nearest(w, scale, offset, levels), scale, offset), ctx.hessian).sum()
        return solution(x, axis, out_axis, codes, scale, offset, bits, self.grid == "symmetric", group,
                        output_error=float(err),
                        output_error_nearest=float(rtn), **info)
