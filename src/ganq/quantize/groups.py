"""group:G granularity for every method: the weight's row form [C, K] (rows(weight, axis), K in the layer's
input-column order) cut into groups of G columns, each group a row of its own.

A round-to-nearest method sees the groups as the rows of a per-channel problem ([C * (K // G), G], and the short
tail [C, K % G] where G does not divide K), so each group gets exactly the grid the method gives a channel. A
calibrated method (gptq, adaround) gets its grid that way and then rounds the whole row against the layer's inputs
(SolveContext.group_size). The Solution keeps the decoder compact ([C, ceil(K / G)], see quantize.decoders).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ganq.errors import GanqError
from ganq.quantize.decoders import Affine, Codebook, Solution, check_weight, code_dtype, rows, unrows


def solve_groups(method, x: np.ndarray, bits: int, axis: int, group: int, ctx=None) -> Solution:
    """method's Solution for x with one decoder per `group` consecutive row weights of each output channel."""
    if method.rewrites_input:
        raise GanqError(f"method {method.name} splits channels; it has no group:G granularity (use channel)")
    if method.calibrated:
        return method.solve(x, bits, axis, dataclasses.replace(ctx, group_size=group))
    x = check_weight(x)
    axis = axis % x.ndim
    w = rows(x, axis)
    c, k = w.shape
    full = k // group
    parts = []
    if full:
        parts.append(method.solve(np.ascontiguousarray(w[:, :full * group]).reshape(c * full, group), bits, 0))
    if k % group:
        parts.append(method.solve(np.ascontiguousarray(w[:, full * group:]), bits, 0))
    return merge(parts, c, full, x.shape, axis, bits, group)


def merge(parts: list[Solution], c: int, full: int, shape, axis: int, bits: int, group: int) -> Solution:
    """The per-group Solutions (the full groups as rows [C * full, G], then the tail [C, t]) as one grouped one."""
    codes = np.concatenate([p.codes.reshape(c, -1) for p in parts], axis=1)
    codes = unrows(codes, shape, axis).astype(code_dtype(bits))
    decs = [p.decoder for p in parts]
    if isinstance(decs[0], Codebook):
        per = max(d.levels.shape[1] for d in decs)
        lv = [np.concatenate([d.levels, np.repeat(d.levels[:, -1:], per - d.levels.shape[1], axis=1)], axis=1)
              for d in decs]  # a short tail's codebook padded with its last level (never indexed)
        levels = np.concatenate([lv[0].reshape(c, -1, per)] + ([lv[1].reshape(c, 1, per)] if len(lv) > 1 else []),
                                axis=1).reshape(-1, per)
        dec = Codebook(levels.astype(np.float32))
    else:
        def cat(name):
            a = [getattr(d, name).reshape(c, -1) for d in decs]
            return np.concatenate(a, axis=1)
        dec = Affine(cat("scale").astype(np.float32), cat("offset").astype(np.float32),
                     cat("zero_point").astype(code_dtype(bits)))
    return Solution(codes, dec, bits, axis, info=dict(parts[0].info), group=group)


def from_rows(x: np.ndarray, axis: int, codes_rows, scale_rows, offset_rows, bits: int, group: int,
              zero_point_rows=None, **info) -> Solution:
    """Row-form codes [C, K] and group-constant parameters (broadcastable to [C, K]) -> a grouped Solution."""
    c, k = codes_rows.shape

    def compact(a):
        return np.ascontiguousarray(np.broadcast_to(np.asarray(a), (c, k))[:, ::group])
    zp = compact(0 if zero_point_rows is None else zero_point_rows)
    dec = Affine(compact(scale_rows).astype(np.float32), compact(offset_rows).astype(np.float32),
                 zp.astype(code_dtype(bits)))
    return Solution(unrows(codes_rows, x.shape, axis).astype(code_dtype(bits)), dec, bits, axis, info=info,
                    group=group)


def group_grid(grid_method, x: np.ndarray, bits: int, out_axis: int, group: int):
    """(scale, offset) [C, K] of grid_method's group grid, expanded over the row form (for calibrated methods)."""
    sol = solve_groups(grid_method, x, bits, out_axis, group)
    d = sol.row_decoder()
    return d.scale, d.offset, d.zero_point
