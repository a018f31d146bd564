"""adaround: Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization".

Each weight rounds down or up, learned per layer to minimise the change of the layer's output on its calibration
inputs, which needs only H = X X^T / m:

    w~ = s * (floor(w / s) + h(V)) + o,   h(V) = clip(1.2 sigmoid(V) - 0.1, 0, 1)
    min_V  tr(dW H dW^T) / tr(dW0 H dW0^T)  +  reg * mean(1 - |2h(V) - 1|^beta)

(dW0: round-to-nearest's error, so the first term is 1 at round-to-nearest and `reg` weighs the regulariser
against it: 10 here plays the role of the paper's 0.01 on a summed regulariser; 0.01 leaves h soft and the result
near round-to-nearest). beta anneals (cosine) from beta_start to beta_end after a warm-up without the regulariser
(the first `warmup` of the steps); Adam on V in numpy, deterministic (V starts where h(V) is the fractional part). At the end h is rounded (h >= 0.5 rounds up). A row whose learned rounding changes the
output more than round-to-nearest keeps round-to-nearest, so the output error never exceeds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ganq.errors import GanqError
from ganq.quantize.methods import option, register
from ganq.quantize.methods._calibrated import CalibratedMethod, decode, nearest, output_error



def _h(v):
    return np.clip(1.2 / (1 + np.exp(-v)) - 0.1, 0, 1)


def adaround_codes(w, h, scale, offset, levels, steps, lr, reg, beta_start, beta_end, warmup):
    """(codes float64 [C, K], rows kept at nearest) for rows w on the grid (scale, offset [C, 1])."""
    w64 = w.astype(np.float64)
    t = (w64 - offset) / scale
    base = np.clip(np.floor(t), 0, levels - 1)
    rest = np.clip(t - base, 0, 1)
    p = np.clip((rest + 0.1) / 1.2, 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p)).astype(np.float32)
    h32 = h.astype(np.float32)
    w32, s32, o32 = w.astype(np.float32), scale.astype(np.float32), offset.astype(np.float32)
    rtn = nearest(w, scale, offset, levels)
    err_rtn = output_error(w, decode(rtn, scale, offset), h)
    norm = np.float32(max(err_rtn.sum(), 1e-30))
    m = np.zeros_like(v)
    m2 = np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = v.size
    warm = int(steps * warmup)
    base32 = base.astype(np.float32)
    for it in range(steps):
        sig = 1 / (1 + np.exp(-v))
        hv = np.clip(1.2 * sig - 0.1, 0, 1)
        dw = (s32 * (base32 + hv) + o32) - w32
        g_h = (2.0 / norm) * (dw @ h32) * s32
        if it >= warm:
            frac = (it - warm) / max(1, steps - warm)
            beta = beta_end + 0.5 * (beta_start - beta_end) * (1 + np.cos(np.pi * frac))
            a = 2 * hv - 1
            g_h = g_h + (reg / n) * (-beta) * np.abs(a) ** (beta - 1) * np.sign(a) * 2
        inside = (1.2 * sig - 0.1 > 0) & (1.2 * sig - 0.1 < 1)
        g = g_h * 1.2 * sig * (1 - sig) * inside
        m = b1 * m + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        mh = m / (1 - b1 ** (it + 1))
        vh = m2 / (1 - b2 ** (it + 1))
        v = (v - lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
    codes = np.clip(base + (_h(v) >= 0.5), 0, levels)
    err = output_error(w, decode(codes, scale, offset), h)
    worse = err > err_rtn
    codes[worse] = rtn[worse]
    return codes, int(worse.sum())


@register
@dataclass(frozen=True)
class AdaRound(CalibratedMethod):
    name = "adaround"
    summary = "calibrated: learn per weight whether to round up or down, for the least change of the layer's output"
    paper = "Nagel et al. 2020, Up or Down? Adaptive Rounding for Post-Training Quantization"
    steps: int = option(1000, 1, 100000)
    lr: float = option(0.01, 0, 10, lo_open=True)
    reg: float = option(10.0, 0, 1000)
    beta_start: float = option(20.0, 1, 1000)
    beta_end: float = option(2.0, 1, 1000)
    warmup: float = option(0.2, 0, 1, hi_open=True)
    grid: Literal["minmax", "mse", "symmetric"] = "minmax"

    def check(self):
        if not self.beta_end <= self.beta_start:
            raise GanqError(f"method adaround: need 1 <= beta_end <= beta_start <= 1000, got {self.beta_end} and "
                            f"{self.beta_start}")

    def codes(self, w, h, scale, offset, levels):
        codes, kept = adaround_codes(w, h, scale, offset, levels, self.steps, self.lr, self.reg, self.beta_start,
                                     self.beta_end, self.warmup)
        return codes, {"rows_kept_nearest": kept}
