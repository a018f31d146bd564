"""aciq: analytical clipping for integer quantization (Banner, Nahshan, Soudry 2018/2019, "Post training 4-bit
quantization of convolutional networks for rapid-deployment", ACIQ).

Model the weights as Laplace(mu, b) or Gaussian(mu, sigma); the expected squared error of clipping at +-alpha and
quantizing the rest uniformly with M bits is
    Laplace:   2 b^2 e^(-alpha/b) + alpha^2 / (3 * 4^M)
    Gaussian:  (alpha^2 + sigma^2)(1 - erf(alpha / (sigma sqrt 2))) - sqrt(2/pi) alpha sigma e^(-alpha^2 / 2 sigma^2)
               + alpha^2 / (3 * 4^M)
Its minimiser, from the paper's table for 2-8 bits (alpha/b = 2.83, 3.89, 5.03, 6.20, 7.41, 8.64, 9.89;
alpha/sigma = 1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92) and by minimising the formula above otherwise. The grid is
then min-max on [max(min, mu - alpha), min(max, mu + alpha)].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ganq.quantize.methods import Method, affine_codes, affine_solution, option, prepare, register

LAPLACE = {2: 2.83, 3: 3.89, 4: 5.03, 5: 6.20, 6: 7.41, 7: 8.64, 8: 9.89}
GAUSSIAN = {2: 1.71, 3: 2.15, 4: 2.55, 5: 2.94, 6: 3.29, 7: 3.61, 8: 3.92}


@lru_cache(maxsize=None)
def alpha_ratio(prior: str, bits: int) -> float:
    """alpha / b (Laplace) or alpha / sigma (Gaussian) for `bits` bits."""
    table = LAPLACE if prior == "laplace" else GAUSSIAN
    if bits in table:
        return table[bits]
    from scipy.optimize import minimize_scalar
    from scipy.special import erf

    q = 3 * 4.0 ** bits
    if prior == "laplace":
        f = lambda a: 2 * np.exp(-a) + a * a / q  # noqa: E731
    else:
        f = lambda a: ((a * a + 1) * (1 - erf(a / np.sqrt(2))) - np.sqrt(2 / np.pi) * a * np.exp(-a * a / 2)  # noqa
                       + a * a / q)
    return float(minimize_scalar(f, bounds=(0.05, 60), method="bounded", options={"xatol": 1e-6}).x)


@register
@dataclass(frozen=True)
class ACIQ(Method):
    name = "aciq"
    summary = "analytical clipping: alpha from a Laplace or Gaussian fit and the bit width (prior=laplace|gaussian)"
    paper = "Banner et al. 2018, ACIQ: Analytical Clipping for Integer Quantization of neural networks"
    prior: str = option("laplace", choices=("laplace", "gaussian"))

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, r = prepare(x, axis)
        r64 = r.astype(np.float64)
        mu = r64.mean(axis=1, keepdims=True)
        spread = (np.abs(r64 - mu).mean(axis=1, keepdims=True) if self.prior == "laplace"
                  else r64.std(axis=1, keepdims=True))
        alpha = alpha_ratio(self.prior, bits) * spread
        lo0, hi0 = r.min(axis=1, keepdims=True), r.max(axis=1, keepdims=True)
        lo = np.maximum(lo0, (mu - alpha).astype(np.float32))
        hi = np.minimum(hi0, (mu + alpha).astype(np.float32))
        codes, scale, lo = affine_codes(r, lo, hi, bits)
        clipped = float(np.mean((r < lo) | (r > hi + scale / 2)))
        return affine_solution(x, axis, codes, scale, lo, bits, alpha_mean=float(alpha.mean()),
                               clipped_fraction=clipped)
