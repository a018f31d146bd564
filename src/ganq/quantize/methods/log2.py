"""log2: logarithmic quantization (Miyashita, Lee, Murmann 2016, "Convolutional Neural Networks using Logarithmic
Data Representation").

A sign bit and a (k-1)-bit exponent: levels 0 and +-2^e for the 2^(k-1) - 1 exponents from the full-scale range down,
e_max = round(log2 max|x|), e = e_max, e_max - 1, ...; a weight takes e = round(log2 |x|) clipped to that range, and
0 when |x| < 2^(e_min - 1) (half the smallest level). 2^k - 1 levels; a codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import Method, prepare, register
from ganq.quantize.methods._codebook import codebook_solution

MIN_EXP = -126  # float32's smallest normal exponent: levels stay exact powers of two


@register
@dataclass(frozen=True)
class Log2(Method):
    name = "log2"
    summary = "logarithmic: 0 and +-2^e, a sign bit and a (k-1)-bit exponent from the full scale down; k 2..8"
    paper = "Miyashita et al. 2016, Convolutional Neural Networks using Logarithmic Data Representation"
    decoder = "codebook"
    min_bits = 2
    max_bits = 8

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        n_e = 2 ** (bits - 1) - 1
        L = 2 * n_e + 1  # -2^e_max .. -2^e_min, 0, 2^e_min .. 2^e_max
        codes = np.empty(r.shape, np.int64)
        levels = np.zeros((len(r), L), np.float32)
        for c, row in enumerate(r):
            m = float(np.abs(row).max())
            if m == 0:
                codes[c] = n_e
                continue
            e_max = int(np.clip(np.rint(np.log2(m)), MIN_EXP, 127))
            exps = np.arange(e_max, max(e_max - n_e, MIN_EXP - 1), -1)  # descending, at most n_e of them
            pos = np.ldexp(np.float32(1), exps[::-1]).astype(np.float32)  # ascending
            pad = n_e - len(pos)  # exponents lost below MIN_EXP: repeat the smallest level
            pos = np.concatenate([np.full(pad, pos[0], np.float32), pos])
            levels[c] = np.concatenate([-pos[::-1], [0], pos])
            e_min = int(exps[-1])
            a = np.abs(row.astype(np.float64))
            with np.errstate(divide="ignore"):
                e = np.clip(np.rint(np.log2(np.where(a > 0, a, 1))), e_min, e_max).astype(np.int64)
            j = e - e_min + pad  # index into pos
            q = np.where(row > 0, n_e + 1 + j, n_e - 1 - j)
            codes[c] = np.where(a < 2.0 ** (e_min - 1), n_e, q)
        return codebook_solution(x, axis, codes, levels, bits)
