"""symmetric: the zero-centred grid of int8 deployments (e.g. Jacob et al. 2018; TensorRT, onnxruntime).

    scale = max|x| / (2^(k-1) - 1),   q = clip(round(x / scale), -(2^(k-1) - 1), 2^(k-1) - 1),   x_hat = q * scale

Stored as unsigned codes q + 2^(k-1) with zero point 2^(k-1), so 2^k - 1 of the 2^k codes are used and 0 is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import Method, affine_solution, prepare, register


@register
@dataclass(frozen=True)
class Symmetric(Method):
    name = "symmetric"
    summary = "zero-centred grid, scale = max|x| / (2^(k-1) - 1) (what int8 deployments use); k >= 2"
    paper = "Jacob et al. 2018, Quantization and Training of Neural Networks for Integer-Arithmetic-Only Inference"
    min_bits = 2
    zero_centred = True

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        half = 2 ** (bits - 1) - 1
        m = np.abs(r).max(axis=1, keepdims=True)
        scale = (m / np.float32(half)).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        q = np.clip(np.rint(r.astype(np.float64) / scale), -half, half)
        zp = np.full(scale.shape, 2 ** (bits - 1))
        return affine_solution(x, axis, q + 2 ** (bits - 1), scale, np.zeros_like(scale), bits, zero_point=zp)
