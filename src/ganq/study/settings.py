"""The sweep's settings (validated once), its models and the form of its cache keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from ganq.errors import GanqError
from ganq.evaluate import EvalOptions
from ganq.onnx_io import resolve_model
from ganq.quantize import FLOAT_BITS
from ganq.quantize.decoders import MAX_BITS, parse_granularity
from ganq.quantize.formats import FORMATS
from ganq.runtime import Generator

DEFAULT_BITS = (32, 8, 7, 6, 5, 4, 3)
GRID = 16  # samples per cell of fig-samples (4 x 4)


CALIBRATION_DEFAULTS = {"recalibrate_bn": False, "calibration": 1024, "calibration_seed": 0}
MIXED_CHOICES = (2, 3, 4, 5, 6, 8)
MAX_REPEATS = 20


def split_methods(text: str) -> tuple[str, ...]:
    """'minmax,mse,gptq[grid=mse;act_order=true]' -> ('minmax', 'mse', 'gptq[grid=mse;act_order=true]')."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return tuple(m for m in out if m)


def parse_method_spec(spec: str) -> tuple[str, tuple]:
    """'gptq[grid=mse;act_order=true]' -> ('gptq', (('grid', 'mse'), ('act_order', 'true')))."""
    from ganq.quantize.methods import parse_method_opts

    name, sep, rest = spec.partition("[")
    if sep and not rest.endswith("]"):
        raise GanqError(f"--methods: {spec!r} must be NAME or NAME[KEY=VALUE;...]")
    items = [x for x in rest[:-1].split(";") if x.strip()] if sep else []
    return name.strip(), parse_method_opts(items)


@dataclass(frozen=True)
class SweepSettings:
    """The sweep's options, validated once. methods: method specs (NAME or NAME[KEY=VALUE;...]); when empty, the one
    method `method` with `method_opts`. repeats: evaluation seeds seed, seed+1, ... per row (latents and real
    subset). mixed: a quality target (fid=1.10, ...) for one mixed-precision row per model and method."""

    bits: tuple[int, ...] = DEFAULT_BITS
    format: str = "packed"
    granularity: str = "tensor"
    method: str = "minmax"
    method_opts: tuple = ()
    fold_bn: bool = False
    recalibrate_bn: bool = False
    calibration: int = 1024
    calibration_seed: int = 0
    n: int = 10000
    seed: int = 0
    speed: bool = True
    eval: EvalOptions = field(default_factory=EvalOptions)
    methods: tuple[str, ...] = ()
    repeats: int = 1
    mixed: str | None = None
    mixed_choices: tuple[int, ...] = MIXED_CHOICES
    proxy_n: int = 2000

    def __post_init__(self):
        if not self.bits:
            raise GanqError("--bits is empty")
        bad = [b for b in self.bits if b != FLOAT_BITS and not 1 <= b <= MAX_BITS]
        if bad:
            raise GanqError(f"--bits: {bad} out of range; use 1..{MAX_BITS}, or 32 for the float model")
        if len(set(self.bits)) != len(self.bits):
            raise GanqError(f"--bits lists a width twice: {','.join(map(str, self.bits))}")
        if self.format not in FORMATS:
            raise GanqError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        grans = self.granularities()
        for g in grans:
            parse_granularity(g)
        if len(set(grans)) != len(grans):
            raise GanqError(f"--granularity lists one twice: {self.granularity}")
        from ganq.errors import check_range
        from ganq.quantize.methods import make_method
        from ganq.quantize.options import conflicts_with

        check_range("--calibration", self.calibration, 1, 1_000_000)
        check_range("--calibration-seed", self.calibration_seed, 0, 2 ** 31 - 1)
        check_range("--repeats", self.repeats, 1, MAX_REPEATS)
        check_range("--seed", self.seed, 0, 2 ** 31 - 1 - MAX_REPEATS)
        if self.methods and (self.method != "minmax" or self.method_opts):
            raise GanqError("give --methods or --method/--method-opt, not both")
        if len(set(self.methods)) != len(self.methods):
            raise GanqError(f"--methods lists a method twice: {','.join(self.methods)}")
        for name, opts in self.method_list():
            m = make_method(name, dict(opts))
            conflicts_with(m, self.recalibrate_bn)
            for b in self.bits:
                if b != FLOAT_BITS:
                    m.check_bits(b)
        if self.mixed is not None:
            from ganq.study.mixed import MixedOptions
            MixedOptions(target=self.mixed, bits_choices=self.mixed_choices, proxy_n=self.proxy_n, verify_n=self.n,
                         flags=("--mixed", "--mixed-choices"))

    def granularities(self) -> tuple[str, ...]:
        """The granularity axis: `granularity` is one (tensor, channel, group:G) or a comma list; the first is the
        sweep's own (its rows keep their labels and cache keys), each other adds its rows labelled `METHOD @G`."""
        return tuple(g.strip() for g in str(self.granularity).split(","))

    def method_list(self) -> list[tuple[str, tuple]]:
        """[(name, options)] in order."""
        if not self.methods:
            return [(self.method, tuple(self.method_opts))]
        return [parse_method_spec(m) for m in self.methods]

    def labels(self) -> list[str]:
        return list(self.methods) or [self.method + (f"[{';'.join(f'{k}={v}' for k, v in self.method_opts)}]"
                                                     if self.method_opts else "")]

    def cell_key(self, method: str = "minmax", opts: tuple = (), repeat: int = 0, float_row: bool = False,
                 mixed: bool = False, granularity: str | None = None) -> str:
        """The cache key of one cell: the options that change its numbers, in the form sweeps have always used (the
        single-method key at repeat 0), so that caches of earlier sweeps stay valid. The float row is the same for
        every method."""
        gran = self.granularities()[0] if float_row or granularity is None else granularity
        d = {"format": self.format, "granularity": gran, "method": "minmax" if float_row else method,
             "method_opts": () if float_row else tuple(opts), "fold_bn": self.fold_bn, "n": self.n,
             "seed": self.seed + repeat, "speed": self.speed,
             "eval": asdict(replace(self.eval, seed=self.eval.seed + repeat))}
        if not float_row:
            for name, default in CALIBRATION_DEFAULTS.items():  # keys of sweeps made before these options stay valid
                if getattr(self, name) != default:
                    d[name] = getattr(self, name)
        if mixed:
            d.update({"mixed": self.mixed, "mixed_choices": list(self.mixed_choices), "proxy_n": self.proxy_n})
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:12]

    def key(self) -> str:
        name, opts = self.method_list()[0]
        return self.cell_key(name, opts)


def parse_bits(text: str, flag: str = "--bits") -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise GanqError(f"{flag} must be comma-separated integers like 32,8,4,3, got {text!r}") from None


@dataclass(frozen=True)
class ModelRef:
    model: str
    dataset: str
    name: str
    arch: str = ""


def parse_models(models: list[str], dataset: str | None) -> list[ModelRef]:
    """MODEL, or MODEL@DATASET when models come from different data sets; --dataset applies to those without @."""
    refs = []
    for m in models:
        path_part, _, ds = m.partition("@")
        path = resolve_model(path_part)
        if not path.is_file():
            raise GanqError(f"{path}: no such file")
        spec = Generator(path).spec
        ds = ds or dataset or spec.dataset
        if not ds:
            raise GanqError(f"{m}: its spec names no data set; write {m}@DATASET or give --dataset")
        refs.append(ModelRef(str(path), ds, path.stem, spec.arch))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise GanqError(f"two models share the name {max(names, key=names.count)!r}; rename one")
    return refs


