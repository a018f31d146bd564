"""kmeans: 2^k free levels by Lloyd's algorithm (Lloyd 1982; as weight sharing in Han et al. 2016, "Deep
Compression"), per tensor or per channel; a codebook.

    assign: q_n = argmin_j |x_n - c_j|;    update: c_j = mean{x_n : q_n = j}    until the assignments stop changing

Deterministic start: the quantiles (j + 1/2) / 2^k of the weights (init=quantile), or the levels of `em` (init=em),
in which case the error never exceeds em's. A row with at most 2^k distinct values keeps them as its levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import Method, decode_rows, option, prepare, register, sq_error
from ganq.quantize.methods._codebook import codebook_solution, nearest
from ganq.quantize.methods.em import em_row


def lloyd(row: np.ndarray, levels: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, float32 sorted levels) from a start `levels` [L] (float64, sorted)."""
    x = row.astype(np.float64)
    q = nearest(x, levels)
    for _ in range(iters):
        sums = np.bincount(q, weights=x, minlength=len(levels))
        counts = np.bincount(q, minlength=len(levels))
        levels = np.where(counts > 0, sums / np.maximum(counts, 1), levels)
        levels = np.sort(levels)
        new = nearest(x, levels.astype(np.float32))
        if np.array_equal(new, q):
            break
        q = new
    lv32 = np.sort(levels.astype(np.float32))
    return nearest(x, lv32), lv32


@register
@dataclass(frozen=True)
class KMeans(Method):
    name = "kmeans"
    summary = "2^k free levels by Lloyd's algorithm from the quantiles (init=quantile) or em's grid (init=em)"
    paper = "Lloyd 1982; weight sharing as in Han et al. 2016, Deep Compression"
    decoder = "codebook"
    max_bits = 8
    init: str = option("quantile", choices=("quantile", "em"))
    iters: int = option(100, 1, 10000)

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        L = min(2 ** bits, r.shape[1])  # no more levels than a row has weights (a codebook costs 4 bytes a level)
        codes = np.empty(r.shape, np.int64)
        levels = np.empty((len(r), L), np.float32)
        for c, row in enumerate(r):
            uniq = np.unique(row)
            if len(uniq) <= L:  # as many levels as values: the values themselves, zero error
                levels[c] = np.concatenate([uniq, np.full(L - len(uniq), uniq[-1], np.float32)])
                codes[c] = np.searchsorted(uniq, row)
                continue
            if self.init == "em":
                ec, es, eo, _ = em_row(row, bits, 100)
                start = decode_rows(np.arange(2 ** bits, dtype=np.float64)[None, :], es, eo)[0].astype(np.float64)
                start_codes, start_err = ec[0].astype(np.int64), sq_error(row[None], decode_rows(ec, es, eo))[0]
            else:
                start = np.quantile(row.astype(np.float64), (np.arange(L) + 0.5) / L)
            q, lv = lloyd(row, np.sort(start), self.iters)
            if self.init == "em" and sq_error(row[None], lv[q][None])[0] > start_err:
                q, lv = start_codes, start.astype(np.float32)  # never worse than the em start
            codes[c], levels[c] = q, lv
        return codebook_solution(x, axis, codes, levels, bits)
