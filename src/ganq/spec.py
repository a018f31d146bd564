"""GeneratorSpec: what a generator is, carried in checkpoints and (through ganq.onnx_io) in ONNX metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ganq.errors import GanqError

LATENTS = ("normal", "uniform", "truncated")
INPUT_KINDS = ("latent", "label", "noise", "image", "const")
LAYOUTS = ("NCHW", "NHWC")
MAX_LATENT = 65_536  # a latent size beyond any GAN's; a spec asking for more is malformed
MAX_SIDE = 8192
MAX_CLASSES = 100_000
MAX_CONST = 4096     # values of one constant input


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class InputSpec:
    """One generator input and how ganq draws it (every stage through onnx_io.sample_inputs).

    kind latent: float [N, *shape] (shape (d,) or (d, 1, 1)) from `prior` (normal, uniform on [-1, 1], or
    truncated: normal cut at +-truncation). label: int64 [N] in 0..classes-1, uniform or by `weights`. noise:
    float [N, *shape], standard normal (StyleGAN's per-layer noise). image: float [N, *shape] (C, H, W or H, W, C by
    `layout`) in `range`, images of `source` (a data set name, folder:PATH of class folders or a .zip, or `random`:
    uniform noise, for smoke tests). const: the same `value` in every call (shape is its whole shape, no batch)."""

    name: str
    kind: str
    shape: tuple = ()
    prior: str = "normal"
    truncation: float = 2.0
    classes: int = 0
    weights: tuple = ()
    range: tuple = (-1.0, 1.0)
    layout: str = "NCHW"
    source: str = ""
    value: tuple = ()
    dtype: str = ""  # the element type: "" is the kind's own (int64 for a label, float32 otherwise)

    def __post_init__(self):
        import math

        if not isinstance(self.name, str) or not self.name:
            raise GanqError(f"spec: an input needs a name, got {self.name!r}")
        where = f"spec: input {self.name}"
        if self.kind not in INPUT_KINDS:
            raise GanqError(f"{where}: kind must be one of {', '.join(INPUT_KINDS)}, got {self.kind!r}")
        shape = self.shape
        if not isinstance(shape, (tuple, list)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_LATENT for d in shape):
            raise GanqError(f"{where}: shape must be a list of integers in 1..{MAX_LATENT}, got {shape!r}")
        object.__setattr__(self, "shape", tuple(shape))
        for f in ("weights", "range", "value"):
            v = getattr(self, f)
            if not isinstance(v, (tuple, list)) or not all(_number(x) and math.isfinite(x) for x in v):
                raise GanqError(f"{where}: {f} must be a list of finite numbers, got {v!r}")
            object.__setattr__(self, f, tuple(float(x) for x in v))
        for f in ("prior", "layout", "source", "dtype"):
            if not isinstance(getattr(self, f), str):
                raise GanqError(f"{where}: {f} must be a string, got {getattr(self, f)!r}")
        if not _number(self.truncation) or not 0 < self.truncation <= 100:
            raise GanqError(f"{where}: truncation must be a number in (0, 100], got {self.truncation!r}")
        if not isinstance(self.classes, int) or isinstance(self.classes, bool) or not 0 <= self.classes <= MAX_CLASSES:
            raise GanqError(f"{where}: classes must be an integer in 0..{MAX_CLASSES}, got {self.classes!r}")
        k = self.kind
        if k == "latent":
            if self.prior not in LATENTS:
                raise GanqError(f"{where}: prior must be one of {', '.join(LATENTS)}, got {self.prior!r}")
            if len(shape) not in (1, 3) or (len(shape) == 3 and shape[1:] != (1, 1)):
                raise GanqError(f"{where}: a latent has shape [d] or [d, 1, 1] after the batch, got {list(shape)}")
        elif k == "label":
            if shape:
                raise GanqError(f"{where}: a label is one integer per image (shape []), got {list(shape)}")
            if self.classes < 1:
                raise GanqError(f"{where}: a label input needs classes >= 1")
            if self.weights and (len(self.weights) != self.classes or min(self.weights) < 0
                                 or not sum(self.weights) > 0):
                raise GanqError(f"{where}: weights must be {self.classes} non-negative numbers, not all 0")
        elif k == "noise":
            if not shape:
                raise GanqError(f"{where}: noise needs its shape after the batch")
        elif k == "image":
            if self.layout not in LAYOUTS:
                raise GanqError(f"{where}: layout must be NCHW or NHWC, got {self.layout!r}")
            c = (shape[0] if self.layout == "NCHW" else shape[-1]) if len(shape) == 3 else 0
            if c not in (1, 3):
                raise GanqError(f"{where}: an image input is [C, H, W] (or [H, W, C]) with C 1 or 3, got "
                                f"{list(shape)}")
            if len(self.range) != 2 or not self.range[0] < self.range[1]:
                raise GanqError(f"{where}: range must be [low, high] with low < high, got {list(self.range)}")
            if not self.source:
                raise GanqError(f"{where}: an image input needs its source (a data set name, folder:PATH, or "
                                "random)")
        elif k == "const":
            size = 1
            for d in shape:
                size *= d
            if size > MAX_CONST or len(self.value) != size:
                raise GanqError(f"{where}: a constant needs {size} values (its shape {list(shape)}), at most "
                                f"{MAX_CONST}; got {len(self.value)}")
        allowed = {"label": ("int64", "int32"), "const": ("float32", "int64")}.get(k, ("float32",))
        if self.dtype and self.dtype not in allowed:
            raise GanqError(f"{where}: a {k} input's dtype is {' or '.join(allowed)}, got {self.dtype!r}")

    @property
    def batched(self) -> bool:
        return self.kind != "const"

    @property
    def element_type(self) -> str:
        return self.dtype or ("int64" if self.kind == "label" else "float32")

    @property
    def image_hw(self) -> tuple[int, int, int]:
        """(C, H, W) of an image input."""
        if self.layout == "NCHW":
            return self.shape
        h, w, c = self.shape
        return (c, h, w)

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "shape": list(self.shape)}
        defaults = InputSpec(name="x", kind="noise", shape=(1,))
        for f in ("prior", "truncation", "classes", "weights", "range", "layout", "source", "value", "dtype"):
            v = getattr(self, f)
            if v != getattr(defaults, f):
                d[f] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d) -> "InputSpec":
        if not isinstance(d, dict):
            raise GanqError(f"spec: an input is an object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise GanqError(f"spec: input {d.get('name', '?')}: unknown fields {sorted(unknown)}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except TypeError as e:
            raise GanqError(f"spec: input: {e}") from None


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator maps its inputs (by default one latent z ~ latent([N, latent_dim])) to images [N, C, H, W] (or
    NHWC, output_layout) in output_range.

    `inputs` lists every input with its kind (InputSpec); left empty it is the one latent (input_name, latent_dim,
    latent), and such a spec's JSON is the same as before inputs existed. With inputs, latent_dim / input_name /
    latent describe the first latent input (latent_dim 0 when there is none: an image-to-image generator, whose
    input_name is its first image input)."""

    latent_dim: int
    channels: int
    height: int
    width: int
    latent: str = "normal"
    output_range: tuple[float, float] = (-1.0, 1.0)
    dataset: str = ""
    arch: str = ""
    input_name: str = "z"
    output_name: str = "image"
    extra: dict = field(default_factory=dict, compare=False)
    inputs: tuple = ()
    output_layout: str = "NCHW"

    def __post_init__(self):
        import math

        self._check_inputs()
        lowest = 0 if self.inputs and self.latent_input is None else 1
        for name, lo, top in (("latent_dim", lowest, MAX_LATENT), ("channels", 1, 3), ("height", 1, MAX_SIDE),
                              ("width", 1, MAX_SIDE)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= top:
                raise GanqError(f"spec: {name} must be an integer in {lo}..{top}, got {value!r}")
        if self.channels not in (1, 3):
            raise GanqError(f"spec: channels must be 1 or 3, got {self.channels}")
        if not isinstance(self.latent, str) or self.latent not in LATENTS:
            raise GanqError(f"spec: latent must be one of {', '.join(LATENTS)}, got {self.latent!r}")
        r = self.output_range
        if (not isinstance(r, (tuple, list)) or len(r) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)):
            raise GanqError(f"spec: output_range must be two numbers [low, high], got {r!r}")
        lo, hi = (float(v) for v in r)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise GanqError(f"spec: output_range must be (low, high) with low < high, got {self.output_range!r}")
        object.__setattr__(self, "output_range", (lo, hi))
        for name in ("dataset", "arch", "input_name", "output_name"):
            if not isinstance(getattr(self, name), str):
                raise GanqError(f"spec: {name} must be a string, got {getattr(self, name)!r}")
        if not self.input_name or not self.output_name:
            raise GanqError("spec: input_name and output_name must not be empty")
        if not isinstance(self.extra, dict):
            raise GanqError(f"spec: extra must be an object, got {type(self.extra).__name__}")
        if self.output_layout not in LAYOUTS:
            raise GanqError(f"spec: output_layout must be NCHW or NHWC, got {self.output_layout!r}")

    def _check_inputs(self) -> None:
        """inputs: InputSpecs (or their dicts), unique names; the legacy fields follow the first latent."""
        if not isinstance(self.inputs, (tuple, list)):
            raise GanqError(f"spec: inputs must be a list, got {type(self.inputs).__name__}")
        if not self.inputs:
            object.__setattr__(self, "inputs", ())
            return
        items = tuple(i if isinstance(i, InputSpec) else InputSpec.from_dict(i) for i in self.inputs)
        names = [i.name for i in items]
        if len(set(names)) != len(names):
            raise GanqError(f"spec: input names repeat ({', '.join(names)})")
        if not any(i.batched for i in items):
            raise GanqError("spec: a generator needs at least one input that is not a constant")
        object.__setattr__(self, "inputs", items)
        lat = next((i for i in items if i.kind == "latent"), None)
        if lat is not None:
            object.__setattr__(self, "latent_dim", lat.shape[0])
            object.__setattr__(self, "latent", lat.prior)
            object.__setattr__(self, "input_name", lat.name)
        else:
            first = next(i for i in items if i.kind == "image") if any(i.kind == "image" for i in items) else \
                next(i for i in items if i.batched)
            object.__setattr__(self, "latent_dim", 0)
            object.__setattr__(self, "input_name", first.name)

    @property
    def all_inputs(self) -> tuple[InputSpec, ...]:
        """Every input (the one legacy latent when `inputs` is empty)."""
        if self.inputs:
            return self.inputs
        return (InputSpec(self.input_name, "latent", (self.latent_dim,), prior=self.latent),)

    @property
    def latent_input(self) -> InputSpec | None:
        return next((i for i in self.all_inputs if i.kind == "latent"), None)

    def inputs_of(self, kind: str) -> list[InputSpec]:
        return [i for i in self.all_inputs if i.kind == kind]

    @property
    def family(self) -> str:
        """unconditional, conditional (a label input) or image-to-image (an image input)."""
        if self.inputs_of("image"):
            return "image-to-image"
        return "conditional" if self.inputs_of("label") else "unconditional"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_range"] = list(self.output_range)
        if self.inputs:
            d["inputs"] = [i.to_dict() for i in self.inputs]
        else:
            del d["inputs"]  # the legacy one-latent spec: the same JSON as before inputs existed
        if self.output_layout == "NCHW":
            del d["output_layout"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise GanqError(f"spec: unknown fields {sorted(unknown)}")
        try:
            d = dict(d)
            if "output_range" in d:
                d["output_range"] = tuple(d["output_range"])
            return cls(**d)
        except TypeError as e:
            raise GanqError(f"spec: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "GeneratorSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GanqError(f"spec: metadata is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise GanqError("spec: metadata is not a JSON object")
        return cls.from_dict(d)


def parse_range(text: str) -> tuple[float, float]:
    """'LOW,HIGH' -> (low, high)."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise GanqError(f"--output-range must be LOW,HIGH, got {text!r}") from None
    return lo, hi


def parse_input_option(text: str) -> tuple[str, dict]:
    """--input NAME=KIND[,key=value...] -> (name, InputSpec fields). Lists are colon-separated (range=-1:1,
    weights=1:2:1, value=0.7), shapes x-separated (shape=1x8x8). Checked by InputSpec when the spec is built."""
    ints = {"classes"}
    floats = {"truncation"}
    lists = {"weights", "range", "value"}
    strings = {"prior", "layout", "source", "dtype"}
    flag = "--input"
    name, sep, rest = str(text).partition("=")
    if not sep or not name or not rest:
        raise GanqError(f"{flag} must be NAME=KIND[,key=value...], got {text!r}")
    kind, *pairs = rest.split(",")
    if kind not in INPUT_KINDS:
        raise GanqError(f"{flag} {name}: kind must be one of {', '.join(INPUT_KINDS)}, got {kind!r}")
    out: dict = {"kind": kind}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            if key == "shape":
                out[key] = [int(v) for v in value.split("x")] if value else []
            elif key in ints:
                out[key] = int(value)
            elif key in floats:
                out[key] = float(value)
            elif key in lists:
                out[key] = [float(v) for v in value.split(":")]
            elif key in strings:
                out[key] = value
            else:
                raise GanqError(f"{flag} {name}: unknown key {key!r}; keys are shape, "
                                f"{', '.join(sorted(ints | floats | lists | strings))}")
        except ValueError:
            raise GanqError(f"{flag} {name}: bad {key or 'key'}={value!r} in {text!r}") from None
    return name, out


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (or one number for a square) -> (H, W)."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(1 <= p <= MAX_SIDE for p in parts):
        raise GanqError(f"--image-size must be HxW with sides in 1..{MAX_SIDE}, got {text!r}")
    return parts[0], parts[1]
