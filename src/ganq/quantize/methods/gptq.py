"""gptq: Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers".

Columns of W_rows [C, K] are rounded one at a time (in order, or by descending diag(H) with act_order); each
rounding error is spread over the columns not yet rounded through the inverse Hessian, so the layer's output on its
calibration inputs X changes as little as possible:

    H = X X^T / m + damp * mean(diag) * I,   U = chol(H^-1) (upper)
    q_j = round(w_j),   e = (w_j - q_j) / U_jj,   w_{j+1:} -= e U_{j, j+1:}      (blocks of `block` columns, lazily)

The grid (scale and offset, per tensor or per output channel) is `grid`'s (minmax, mse or symmetric) on the original weight;
codes and decoder are those of every affine method. With H = I nothing is spread: round-to-nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ganq.errors import GanqError
from ganq.quantize.methods import option, register
from ganq.quantize.methods._calibrated import CalibratedMethod, nearest


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """U upper triangular with U^T U = H^-1 (LAPACK potrf / potri / potrf, as GPTQ's reference code does)."""
    from scipy.linalg import lapack

    c, info = lapack.dpotrf(h, lower=0)
    if info == 0:
        hinv, info = lapack.dpotri(c, lower=0)
        if info == 0:
            hinv = np.triu(hinv) + np.triu(hinv, 1).T
            u, info = lapack.dpotrf(hinv, lower=0)
    if info != 0:
        raise GanqError("method gptq: the Hessian is not positive definite even with damping; raise damp")
    return np.triu(u)


def gptq_codes(w: np.ndarray, h: np.ndarray, scale, offset, levels: int, damp: float, act_order: bool,
               block: int) -> np.ndarray:
    """GPTQ's codes (float64 [C, K]) for rows w on the grid (scale, offset [C, 1], or [C, K] for group:G: each
    column rounds on its own group's grid, fixed from the original weights as GPTQ's static groups)."""
    w = w.astype(np.float64).copy()
    c, k = w.shape
    h = np.array(h, np.float64, copy=True)
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w = w[:, perm]
    h = h[np.ix_(perm, perm)]
    mean_diag = float(np.mean(np.diag(h)))
    h[np.diag_indices(k)] += damp * mean_diag
    u = _inverse_cholesky(h)
    scale = np.broadcast_to(scale, (c, k))[:, perm]
    offset = np.broadcast_to(offset, (c, k))[:, perm]
    scale64, offset64 = scale.astype(np.float64), offset.astype(np.float64)
    codes = np.empty((c, k), np.float64)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i:i + 1]
            j = i1 + i
            q = nearest(col, scale[:, j:j + 1], offset[:, j:j + 1], levels)
            codes[:, j] = q[:, 0]
            e = (col[:, 0] - (q[:, 0] * scale64[:, j] + offset64[:, j])) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    out = np.empty_like(codes)
    out[:, perm] = codes
    return out


@register
@dataclass(frozen=True)
class GPTQ(CalibratedMethod):
    name = "gptq"
    summary = "calibrated: round column by column, spreading each error through the inverse Hessian of the inputs"
    paper = "Frantar et al. 2022, GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"
    damp: float = option(0.01, 0, 10, note=" (a fraction of H's mean diagonal)")
    act_order: bool = False
    block: int = option(128, 1, 65536)
    grid: Literal["minmax", "mse", "symmetric"] = "minmax"

    def codes(self, w, h, scale, offset, levels):
        return gptq_codes(w, h, scale, offset, levels, self.damp, self.act_order, self.block), {}
