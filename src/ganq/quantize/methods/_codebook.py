"""Helpers shared by the codebook methods."""

from __future__ import annotations

import numpy as np

from ganq.quantize.decoders import Codebook, Solution, code_dtype, unrows


def codebook_solution(x: np.ndarray, axis: int | None, codes_rows: np.ndarray, levels_rows: np.ndarray, bits: int,
                      **info) -> Solution:
    """codes rows [C, n] indexing levels rows [C, L] -> a Solution shaped like x (levels [L] per tensor)."""
    levels = levels_rows.astype(np.float32)
    if axis is None:
        levels = levels.reshape(-1)
    codes = unrows(codes_rows, x.shape, axis).astype(code_dtype(bits))
    return Solution(codes, Codebook(levels), bits, axis, info=info)


def nearest(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of sorted levels [L] for each value (ties to the lower level)."""
    mids = (levels[:-1].astype(np.float64) + levels[1:]) / 2
    return np.searchsorted(mids, values.astype(np.float64), side="left")
