"""minmax: the study's quantizer (Andreev et al., "Post-Training Quantization of GANs").

    scale = (max - min) / (2^k - 1),   q = round((x - min) / scale),   x_hat = q * scale + min
"""

from __future__ import annotations

from dataclasses import dataclass

from ganq.quantize.methods import Method, affine_codes, affine_solution, prepare, register


@register
@dataclass(frozen=True)
class MinMax(Method):
    name = "minmax"
    summary = "the study's method: a uniform grid from min to max (2^k levels)"
    paper = "Post-Training Quantization of GANs (the study ganq re-runs)"

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        codes, scale, lo = affine_codes(r, r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True), bits)
        return affine_solution(x, axis, codes, scale, lo, bits)
