"""The method registry: each method is a frozen config dataclass (its options, validated once) with a `solve`.

    m = make_method("aciq", {"prior": "gaussian"})
    sol = m.solve(w, bits=3, axis=0)          # -> Solution(codes, Affine | Codebook, ...)

A module per method; importing this package registers them all. The CLI's --method choices and help, and
--method-opt key=value, come from here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import numpy as np

from ganq.errors import GanqError
from ganq.quantize.decoders import MAX_BITS, Affine, Solution, channel_shape, code_dtype, rows, unrows
from ganq.registry import Registry


@dataclass(frozen=True)
class SolveContext:
    """What a method may know about the weight beyond its values: its consumer op, the input-channel axis of the
    weight (in_axis) and of the layer's data input (x_axis). For calibrated methods: out_axis (the weight's
    output-channel axis: rows(weight, out_axis) is W_rows, [C_out, K]) and hessian, H = X X^T / m over the layer's
    input columns X [K, m] from calibration latents (quantize.calibrate), in W_rows' column order."""

    name: str = ""
    op_type: str = ""
    in_axis: int | None = None
    x_axis: int | None = None
    group: int = 1
    out_axis: int | None = None
    hessian: np.ndarray | None = field(default=None, repr=False, compare=False)
    group_size: int | None = None   # group:G granularity (calibrated methods take it here; quantize.groups)


def option(default, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
           choices: tuple[str, ...] | None = None, note: str = "", added: bool = False):
    """A method option with its range ([lo, hi], either end open) or its choices, declared on the field; checked by
    `check_options` when the config is made. note: said after the range in the error; added: an option a method
    gained later, left out of `options()` (the file's record) at its default, so earlier files stay byte-identical."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open), "choices": choices, "note": note,
                                            "added": added})


def _range_text(typ, lo, hi, lo_open, hi_open) -> str:
    if typ is int and not lo_open and not hi_open:
        return f"{lo}..{hi}"
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def check_options(m: "Method") -> None:
    """Every option of method config m has its declared type, lies in its declared range and is one of its
    choices; one GanqError naming the method and the option otherwise."""
    import math

    hints = typing.get_type_hints(type(m))
    for f in dataclasses.fields(m):
        typ, value = hints[f.name], getattr(m, f.name)
        if typ is bool:
            ok = isinstance(value, bool)
        elif typ is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif typ is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            kind = {bool: "true or false", int: "an integer", float: "a finite number"}.get(typ, "a string")
            raise GanqError(f"method {m.name}: {f.name} must be {kind}, got {value!r}")
        choices = f.metadata.get("choices") or (typing.get_args(typ) if typing.get_origin(typ) is typing.Literal
                                                else None)
        if choices:
            choice(m.name, f.name, value, tuple(choices))
        lo, hi, lo_open, hi_open = f.metadata.get("range", (None, None, False, False))
        if lo is not None and not ((lo < value if lo_open else lo <= value) and
                                   (value < hi if hi_open else value <= hi)):
            extra = f.metadata.get("note", "")
            raise GanqError(f"method {m.name}: {f.name} must be in {_range_text(typ, lo, hi, lo_open, hi_open)}"
                            f"{extra}, got {value}")


@dataclass(frozen=True)
class Method:
    """Base of every method's config. Subclasses set name, summary, paper, decoder, min_bits and max_bits, and
    declare each option's range or choices with `option(...)`; `check()` holds any rule across options.

    Capabilities: `calibrated` (solve() needs the layer's inputs); `zero_centred` (see there); `rewrites_input` (the method changes its layer's
    input in the graph through `rewrite`, as OCS duplicates channels); `conflicts` ({option: why} of quantize
    options the method does not combine with)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    decoder: ClassVar[str] = "affine"
    min_bits: ClassVar[int] = 1
    max_bits: ClassVar[int] = MAX_BITS
    calibrated: ClassVar[bool] = False  # solve() needs ctx.hessian (the layer's inputs)
    rewrites_input: ClassVar[bool] = False
    conflicts: ClassVar[dict] = {}

    @property
    def zero_centred(self) -> bool:
        """Its affine grids have no offset and one zero point (what per-channel integer kernels take)."""
        return False

    def __post_init__(self):
        check_options(self)
        self.check()

    def check(self) -> None:
        """Rules across options (each option's own range is declared on its field)."""

    def rewrite(self, edit, node, target, sol) -> list:
        """Nodes to insert before `node` that feed it the input sol was solved for (rewrites_input methods)."""
        raise NotImplementedError

    def fallback(self) -> "Method":
        """What a calibrated method uses for a tensor it cannot see the inputs of (a bias, an unsupported op)."""
        return self

    def check_bits(self, bits: int) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
            raise GanqError(f"bits must be an integer from 1 to {MAX_BITS} (32 leaves the model float), got {bits}")
        if not self.min_bits <= bits <= self.max_bits:
            raise GanqError(f"method {self.name} takes {self.min_bits} to {self.max_bits} bits, got {bits}")

    def options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.metadata.get("added") and getattr(self, f.name) == f.default)}

    def solve(self, x: np.ndarray, bits: int, axis: int | None, ctx: SolveContext | None = None) -> Solution:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    METHODS.register(cls.name, cls)
    return cls


def _convert(name: str, key: str, text, typ):
    if not isinstance(text, str):
        return text
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if origin is typing.Literal:
            return text
    except ValueError:
        raise GanqError(f"--method-opt {key}={text}: {name}'s {key} must be a {typ.__name__}") from None
    return text


def make_method(name: str, opts: Mapping[str, object] | None = None) -> Method:
    """The config of method `name` with options `opts` (strings are converted to the field's type)."""
    cls = METHODS.get(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    values = {}
    for key, text in (opts or {}).items():
        if key not in fields:
            valid = ", ".join(fields) if fields else "none"
            raise GanqError(f"method {name} has no option {key!r}; its options: {valid}")
        values[key] = _convert(name, key, text, fields[key])
    return cls(**values)


def parse_method_opts(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """['key=value', ...] -> (('key', 'value'), ...) in the given order."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GanqError(f"--method-opt must be KEY=VALUE, got {item!r}")
        out.append((key.strip(), value.strip()))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise GanqError(f"--method-opt sets {max(keys, key=keys.count)!r} twice")
    return tuple(out)


def choice(name: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise GanqError(f"method {name}: {key} must be one of {', '.join(allowed)}, got {value!r}")


# --- helpers shared by the affine methods --------------------------------------------------------------------

def affine_codes(r: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int):
    """The study's grid on rows r [C, n] between lo and hi ([C, 1] float32): (codes, scale, offset).

    scale = (hi - lo) / (2^k - 1) in float32; a constant row (hi = lo) gets scale 1 and code 0, so it comes back
    exactly; q = clip(round((x - lo) / scale), 0, 2^k - 1) in float64."""
    levels = np.float32(2 ** bits - 1)
    lo, hi = lo.astype(np.float32), hi.astype(np.float32)
    scale = ((hi - lo) / levels).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    codes = np.clip(np.rint((r.astype(np.float64) - lo) / scale), 0, levels)
    return codes, scale, lo


def affine_solution(x: np.ndarray, axis: int | None, codes_rows, scale, offset, bits: int, zero_point=None,
                    **info) -> Solution:
    """Rows of codes and [C, 1] parameters -> a Solution shaped like x."""
    shape = channel_shape(x.ndim, axis, x.shape[axis] if axis is not None else 1)
    codes = unrows(codes_rows, x.shape, axis).astype(code_dtype(bits))
    zp = np.zeros(shape, code_dtype(bits)) if zero_point is None else \
        np.asarray(zero_point).reshape(shape).astype(code_dtype(bits))
    dec = Affine(np.asarray(scale, np.float32).reshape(shape), np.asarray(offset, np.float32).reshape(shape), zp)
    return Solution(codes, dec, bits, axis, info=info)


def sq_error(x_rows: np.ndarray, xh_rows: np.ndarray) -> np.ndarray:
    """Per-row squared error in float64."""
    d = x_rows.astype(np.float64) - xh_rows.astype(np.float64)
    return np.einsum("ij,ij->i", d, d)


def decode_rows(codes, scale, offset):
    """The Affine decoder's float32 formula on rows (zero point 0)."""
    return (codes.astype(np.float32) * scale).astype(np.float32) + offset


def prepare(x: np.ndarray, axis: int | None):
    """(float32 x, normalised axis, rows [C, n])."""
    from ganq.quantize.decoders import check_weight

    x = check_weight(x)
    if axis is not None:
        axis = axis % x.ndim if x.ndim else None
    return x, axis, rows(x, axis)


from ganq.quantize.methods import (minmax, symmetric, mse, aciq, log2, tanh, em, kmeans, ocs, gptq, adaround,  # noqa: E402,F401,I001
                                   distill)

__all__ = ["METHODS", "Method", "SolveContext", "make_method", "parse_method_opts", "register"]
