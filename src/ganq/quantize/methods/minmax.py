"""minmax: the study's quantizer (Andreev et al., "Post-Training Quantization of GANs").

    scale = (max - min) / (2^k - 1),   q = round((x - min) / scale),   x_hat = q * scale + min

zero_point=integer gives the same range as the integer-zero-point grid of onnxruntime's and TFLite's asymmetric
quantizers (and of MatMulNBits' uint8 zero points): zp = clip(round(-min / scale), 0, 2^k - 1),
q = clip(round(x / scale) + zp, 0, 2^k - 1), x_hat = (q - zp) * scale, no offset (exact zero, a grid shifted by
less than half a step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import Method, affine_codes, affine_solution, option, prepare, register


@register
@dataclass(frozen=True)
class MinMax(Method):
    name = "minmax"
    summary = "the study's method: a uniform grid from min to max (2^k levels)"
    paper = "Post-Training Quantization of GANs (the study ganq re-runs)"
    zero_point: str = option("float", choices=("float", "integer"), added=True)

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        lo, hi = r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
        codes, scale, lo = affine_codes(r, lo, hi, bits)
        if self.zero_point == "float":
            return affine_solution(x, axis, codes, scale, lo, bits)
        top = 2 ** bits - 1
        zp = np.clip(np.rint(-lo.astype(np.float64) / scale), 0, top)
        codes = np.clip(np.rint(r.astype(np.float64) / scale) + zp, 0, top)
        return affine_solution(x, axis, codes, scale, np.zeros_like(scale), bits, zero_point=zp)
