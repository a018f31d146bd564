"""symmetric: the zero-centred grid of int8 deployments (e.g. Jacob et al. 2018; TensorRT, onnxruntime).

    scale = max|x| / (2^(k-1) - 1),   q = clip(round(x / scale), -(2^(k-1) - 1), 2^(k-1) - 1),   x_hat = q * scale

Stored as unsigned codes q + 2^(k-1) with zero point 2^(k-1), so 2^k - 1 of the 2^k codes are used and 0 is exact.

range=full uses all 2^k codes, as onnxruntime's blockwise symmetric quantizer (MatMulNBits) does: the weight of
largest magnitude, v, maps to the code -2^(k-1) exactly, scale = v / -2^(k-1) (negative where v > 0), q in
[-2^(k-1), 2^(k-1) - 1]. At 2 bits that is 4 levels instead of 3. Its scales may be negative, which integer kernels
do not take, so it is not offered to --activations (zero_centred is false).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.quantize.methods import Method, affine_solution, option, prepare, register


@register
@dataclass(frozen=True)
class Symmetric(Method):
    name = "symmetric"
    summary = "zero-centred grid, scale = max|x| / (2^(k-1) - 1) (what int8 deployments use); k >= 2"
    paper = "Jacob et al. 2018, Quantization and Training of Neural Networks for Integer-Arithmetic-Only Inference"
    min_bits = 2
    range: str = option("narrow", choices=("narrow", "full"), added=True)

    @property
    def zero_centred(self) -> bool:
        return self.range == "narrow"

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        zp = 2 ** (bits - 1)
        if self.range == "full":
            idx = np.abs(r).argmax(axis=1)
            v = r[np.arange(len(r)), idx][:, None].astype(np.float32)
            scale = (v / np.float32(-zp)).astype(np.float32)
            scale = np.where(scale != 0, scale, np.float32(1)).astype(np.float32)
            q = np.clip(np.rint(r.astype(np.float64) / scale), -zp, zp - 1)
        else:
            half = zp - 1
            m = np.abs(r).max(axis=1, keepdims=True)
            scale = (m / np.float32(half)).astype(np.float32)
            scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
            q = np.clip(np.rint(r.astype(np.float64) / scale), -half, half)
        return affine_solution(x, axis, q + zp, scale, np.zeros_like(scale), bits,
                               zero_point=np.full(scale.shape, zp))
