"""em: QGAN's quantizer (Wang et al. 2019, "QGAN: Quantized Generative Adversarial Networks"), an EM fit of a
uniform grid alpha * i + beta, i = 0..2^k - 1:

    E-step: i_n = clip(round((x_n - beta) / alpha), 0, 2^k - 1)        (each weight to its nearest level)
    M-step: (alpha, beta) = argmin sum_n (x_n - alpha i_n - beta)^2     (least squares)

from the min-max start until the assignments stop changing (or `iters`). Each step lowers the squared error, and the
result is kept only if its float32 grid is no worse than the start's. Affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import (Method, affine_codes, affine_solution, decode_rows, option, prepare, register,
                                   sq_error)


def em_row(row: np.ndarray, bits: int, iters: int):
    """(codes, scale, offset, iterations) for one row (float32 [n])."""
    r = row[None, :]
    codes, scale, lo = affine_codes(r, r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True), bits)
    start = (codes, scale, lo)
    start_err = sq_error(r, decode_rows(codes, scale, lo))[0]
    x = row.astype(np.float64)
    L = 2 ** bits - 1
    i = codes[0]
    alpha, beta = float(scale[0, 0]), float(lo[0, 0])
    done = 0
    for done in range(1, iters + 1):
        im = i.mean()
        vi = ((i - im) ** 2).sum()
        if vi == 0:
            break
        alpha = float(((i - im) * (x - x.mean())).sum() / vi)
        beta = float(x.mean() - alpha * im)
        if not alpha > 0:
            break
        new = np.clip(np.rint((x - beta) / alpha), 0, L)
        if np.array_equal(new, i):
            break
        i = new
    s32 = np.array([[alpha]], np.float32)
    b32 = np.array([[beta]], np.float32)
    if not s32[0, 0] > 0:
        return (*start, done)
    c = np.clip(np.rint((r.astype(np.float64) - b32) / s32), 0, L)
    if sq_error(r, decode_rows(c, s32, b32))[0] <= start_err:
        return c, s32, b32, done
    return (*start, done)


@register
@dataclass(frozen=True)
class EM(Method):
    name = "em"
    summary = "QGAN's EM quantizer: levels alpha*i + beta refitted by least squares from the min-max start"
    paper = "Wang et al. 2019, QGAN: Quantized Generative Adversarial Networks"
    iters: int = option(100, 1, 10000)

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        out = [em_row(row, bits, self.iters) for row in r]
        codes = np.concatenate([o[0] for o in out])
        scale = np.concatenate([o[1] for o in out])
        offset = np.concatenate([o[2] for o in out])
        return affine_solution(x, axis, codes, scale, offset, bits,
                               iterations_max=int(max(o[3] for o in out)))
