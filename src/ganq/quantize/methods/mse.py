"""mse: the clipping range that minimises the squared error, the strong baseline of PTQ papers
(e.g. Choukroun et al. 2019, "Low-bit Quantization of Neural Networks for Efficient Inference"; Banner et al. 2019).

    alpha* = argmin_{alpha in {1, ..., min_shrink}} || x - Q_[alpha min, alpha max](x) ||^2,   per row

alpha = 1 is the min-max grid itself, so the error never exceeds minmax's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import (Method, affine_codes, affine_solution, decode_rows, option, prepare, register,
                                   sq_error)


@register
@dataclass(frozen=True)
class MSE(Method):
    name = "mse"
    summary = "uniform grid on the clipping range [a*min, a*max] with the least squared error (a searched)"
    paper = "Choukroun et al. 2019, Low-bit Quantization of Neural Networks for Efficient Inference"
    steps: int = option(100, 2, 10000)   # shrink factors tried, evenly spaced from 1 down to min_shrink
    min_shrink: float = option(0.05, 0, 1, lo_open=True, hi_open=True)

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        lo0, hi0 = r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
        best = None
        for a in np.linspace(1.0, self.min_shrink, self.steps):
            a32 = np.float32(a)
            codes, scale, lo = affine_codes(r, (lo0 * a32) if a != 1 else lo0, (hi0 * a32) if a != 1 else hi0, bits)
            err = sq_error(r, decode_rows(codes, scale, lo))
            if best is None:
                best = [err, codes, scale, lo, np.ones(len(r))]
                continue
            better = err < best[0]
            if better.any():
                best[0] = np.where(better, err, best[0])
                best[1] = np.where(better[:, None], codes, best[1])
                best[2] = np.where(better[:, None], scale, best[2])
                best[3] = np.where(better[:, None], lo, best[3])
                best[4] = np.where(better, a, best[4])
        _, codes, scale, lo, shrink = best
        return affine_solution(x, axis, codes, scale, lo, bits, shrink_mean=float(shrink.mean()))
