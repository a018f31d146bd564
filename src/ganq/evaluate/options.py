"""EvalOptions: the options of one evaluation, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from ganq.errors import GanqError, check_range


@dataclass(frozen=True)
class EvalOptions:
    n: int = 10000
    seed: int = 0
    k: int = 3
    strict: bool = False
    realism: str = "paper"
    dc_k: int = 5
    shuffle: bool = True
    real_split: str = "test"
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    batch: int = 500

    def __post_init__(self):
        if self.n < 10:
            raise GanqError(f"--n must be at least 10, got {self.n}")
        check_range("--n", self.n, 10, 1_000_000)
        check_range("--seed", self.seed, 0, 2 ** 31 - 1)
        check_range("--k", self.k, 1, 1000)
        check_range("batch", self.batch, 1, 65_536)
        if self.k >= self.n:
            raise GanqError(f"--k {self.k} needs more than {self.k} samples; --n is {self.n}")
        if self.realism not in ("paper", "official"):
            raise GanqError(f"--realism must be paper or official, got {self.realism!r}")
        if self.real_split not in ("train", "test"):
            raise GanqError(f"--real-split must be train or test, got {self.real_split!r}")
