"""plan: which tensors are quantized, and for each its bits, method and granularity.

A uniform plan gives every weight the same settings; overrides (`--tensor-bits NAME=B`, or a plan file) change
single tensors, so mixed precision is just another plan. The plan is what `ganq.quant` records per tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from ganq.errors import GanqError
from ganq.quantize.decoders import MAX_BITS, parse_granularity
from ganq.quantize.methods import Method, make_method
from ganq.quantize.ops import Target, find_targets

FLOAT_BITS = 32
ALIASES = ("first", "last")  # the first and last weight in graph order


@dataclass(frozen=True)
class TensorPlan:
    target: Target
    bits: int              # 1..16, or 32: left float
    method: Method
    granularity: str

    @property
    def quantized(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def axis(self) -> int | None:
        return None if self.granularity == "tensor" or self.target.role == "bias" else self.target.axis

    @property
    def group(self) -> int | None:
        """G of group:G granularity (None per tensor or channel)."""
        return None if self.target.role == "bias" else parse_granularity(self.granularity)[1]

    def describe(self) -> dict:
        return {"tensor": self.target.name, "bits": self.bits, "method": self.method.name,
                "method_opts": self.method.options(), "granularity": self.granularity}


@dataclass(frozen=True)
class Plan:
    tensors: tuple[TensorPlan, ...]

    @property
    def mixed(self) -> bool:
        return len({(t.bits, t.method, t.granularity) for t in self.tensors}) > 1

    def to_json(self) -> str:
        return json.dumps({"ganq": "plan", "tensors": {t.target.name: {k: v for k, v in t.describe().items()
                                                                       if k != "tensor"} for t in self.tensors}},
                          indent=1, sort_keys=True)


def check_bits(bits, what: str = "bits") -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not (1 <= bits <= MAX_BITS or bits == FLOAT_BITS):
        raise GanqError(f"{what} must be an integer from 1 to {MAX_BITS} (32 leaves the weights float), got {bits!r}")
    return bits


def parse_tensor_bits(items) -> tuple[tuple[str, int], ...]:
    """['NAME=BITS', ...] -> ((NAME, BITS), ...); NAME may be `first` or `last`."""
    out = []
    for item in items:
        name, sep, value = str(item).rpartition("=")
        if not sep or not name:
            raise GanqError(f"--tensor-bits must be NAME=BITS (NAME: a weight, or first/last), got {item!r}")
        try:
            bits = int(value)
        except ValueError:
            raise GanqError(f"--tensor-bits {item}: BITS must be an integer") from None
        out.append((name, check_bits(bits, f"--tensor-bits {name}")))
    return tuple(out)


def _name_bits(items, choices: tuple[str, ...], message: str) -> tuple[tuple[str, int], ...]:
    """['NAME=BITS', ...] -> ((NAME, BITS), ...) with BITS one of choices; `message` ends the one-line error."""
    out = []
    for item in items:
        name, sep, value = str(item).rpartition("=")
        if not sep or not name or value not in choices:
            raise GanqError(f"{message}, got {item!r}")
        out.append((name, int(value)))
    return tuple(out)


def parse_act_bits(items) -> tuple[tuple[str, int], ...]:
    """--act-tensor-bits ['NAME=BITS', ...] -> ((NAME, BITS), ...): an activation tensor (or first / last) at 8 or
    16 bits, or 32 (float)."""
    return _name_bits(items, ("8", "16", "32"), "--act-tensor-bits must be NAME=8, NAME=16 or NAME=32 (float; NAME: "
                                               "an activation tensor, or first/last)")


def parse_float_bits(items, what: str = "--float-tensor-bits") -> tuple[tuple[str, int], ...]:
    """['NAME=BITS', ...] -> ((NAME, BITS), ...): a float initializer, or a quantized weight (meaning its decoder's
    parameters), stored at 32, 16 or 8 bits (quantize.float_bits)."""
    return _name_bits(items, ("32", "16", "8"), f"{what} must be NAME=32, NAME=16 or NAME=8 (NAME: a float "
                                               "initializer, or a quantized weight for its decoder)")


def read_plan_floats(path: str | Path) -> tuple[tuple[str, int], ...]:
    """The plan file's optional "floats": {NAME: 32 | 16 | 8} (what --float-tensor-bits gives)."""
    d = json.loads(Path(path).read_text())  # read_plan_file has checked that it parses
    floats = d.get("floats", {}) if isinstance(d, dict) else {}
    if not isinstance(floats, dict):
        raise GanqError(f"{path}: \"floats\" must be {{NAME: 32 | 16 | 8}}")
    return parse_float_bits([f"{k}={v}" for k, v in floats.items()], f"{path}: \"floats\"")


def read_plan_activations(path: str | Path) -> tuple[tuple[str, int], ...]:
    """The plan file's optional "activations": {NAME: 8 | 16 | 32} (what --act-tensor-bits gives)."""
    d = json.loads(Path(path).read_text())  # read_plan_file has checked that it parses
    acts = d.get("activations", {}) if isinstance(d, dict) else {}
    if not isinstance(acts, dict):
        raise GanqError(f"{path}: \"activations\" must be {{NAME: 8 | 16 | 32}}")
    return parse_act_bits([f"{k}={v}" for k, v in acts.items()])


def read_plan_file(path: str | Path) -> dict[str, dict]:
    """A plan JSON ({"tensors": {NAME: {"bits": B, "method": M, "method_opts": {...}, "granularity": G}}}, and
    optionally "activations": {NAME: 8 | 16 | 32}, read by read_plan_activations, and "floats": {NAME: 32 | 16 | 8},
    read by read_plan_floats) as per-tensor overrides."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise GanqError(f"{path}: no such plan file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nesting too deep
        raise GanqError(f"{path}: not a JSON plan ({type(e).__name__})") from None
    tensors = d.get("tensors") if isinstance(d, dict) else None
    if not isinstance(tensors, dict) or not all(isinstance(v, dict) for v in tensors.values()):
        raise GanqError(f"{path}: a plan is {{\"tensors\": {{NAME: {{\"bits\": B, ...}}}}}}")
    allowed = {"bits", "method", "method_opts", "granularity"}
    for name, v in tensors.items():
        extra = set(v) - allowed
        if extra:
            raise GanqError(f"{path}: tensor {name}: unknown keys {sorted(extra)} (allowed: {', '.join(sorted(allowed))})")
        if "method_opts" in v and not isinstance(v["method_opts"], dict):
            raise GanqError(f"{path}: tensor {name}: method_opts must be an object")
    return tensors


def make_plan(model: onnx.ModelProto, bits: int, method: Method, granularity: str, include_bias: bool = False,
              tensor_bits: tuple[tuple[str, int], ...] = (), overrides: dict[str, dict] | None = None) -> Plan:
    """The uniform plan (bits, method, granularity for every weight) with per-tensor overrides applied."""
    grans = [granularity] + [v.get("granularity", granularity) for v in (overrides or {}).values()]
    kinds = {parse_granularity(g)[0] for g in grans}
    targets = find_targets(model, include_bias, "tensor" if kinds == {"tensor"} else "channel")
    weights = [t for t in targets if t.role == "weight"]
    by_name = {t.name: t for t in targets}
    per: dict[str, dict] = {}
    for name, b in tensor_bits:
        if name in ALIASES:
            if not weights:
                continue
            name = (weights[0] if name == "first" else weights[-1]).name
        per.setdefault(name, {})["bits"] = b
    for name, v in (overrides or {}).items():
        per.setdefault(name, {}).update(v)
    unknown = sorted(set(per) - set(by_name))
    if unknown:
        raise GanqError(f"plan names {unknown[0]!r}, which is not a quantizable weight of this model; its weights: "
                        f"{', '.join(by_name) or 'none'}")
    plans = []
    for t in targets:
        o = per.get(t.name, {})
        m = method
        if "method" in o or "method_opts" in o:
            m = make_method(o.get("method", method.name), o.get("method_opts", {}))
        tb = check_bits(o.get("bits", bits), f"bits of {t.name}")
        g = "tensor" if t.role == "bias" else o.get("granularity", granularity)
        if tb != FLOAT_BITS:
            m.check_bits(tb)
        plans.append(TensorPlan(t, tb, m, g))
    return Plan(tuple(plans))


__all__ = ["Plan", "TensorPlan", "make_plan", "parse_tensor_bits", "read_plan_file", "FLOAT_BITS"]
