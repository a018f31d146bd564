"""tanh: companding quantization. The weights are squashed by tanh, quantized uniformly, and expanded back, so the
levels crowd near zero where GAN weights are dense (the study's future work names it; cf. mu-law companding).

    b = c * max|x|,   t = tanh(x / b) / tanh(max|x| / b) in [-1, 1],   t_j = -1 + 2 j / (2^k - 1),
    x_hat_j = b * atanh(t_j * tanh(max|x| / b)),   with x_hat at t = +-1 exactly +-max|x|

A codebook of 2^k levels; small c compands strongly, large c tends to the uniform symmetric grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import Method, option, prepare, register
from ganq.quantize.methods._codebook import codebook_solution


@register
@dataclass(frozen=True)
class Tanh(Method):
    name = "tanh"
    summary = "companding: tanh(x / b) quantized uniformly, decoded through atanh; b = c * max|x| (c=0.5)"
    paper = "companding quantization, as named in the study's future work"
    decoder = "codebook"
    max_bits = 8
    c: float = option(0.5, 0.01, 100)

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        L = 2 ** bits
        t_grid = -1 + 2 * np.arange(L) / (L - 1)
        codes = np.empty(r.shape, np.int64)
        levels = np.zeros((len(r), L), np.float32)
        for c, row in enumerate(r):
            m = np.float32(np.abs(row).max())
            if m == 0:
                codes[c] = L // 2
                continue
            b = self.c * float(m)
            top = np.tanh(float(m) / b)
            lv = (b * np.arctanh(t_grid * top)).astype(np.float32)
            lv[0], lv[-1] = -m, m
            levels[c] = lv
            t = np.tanh(row.astype(np.float64) / b) / top
            codes[c] = np.clip(np.rint((t + 1) / 2 * (L - 1)), 0, L - 1)
        return codebook_solution(x, axis, codes, levels, bits)
