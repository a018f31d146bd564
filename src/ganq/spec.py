"""GeneratorSpec: what a generator is, carried in checkpoints and (through ganq.onnx_io) in ONNX metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ganq.errors import GanqError

LATENTS = ("normal", "uniform")
MAX_LATENT = 65_536  # a latent size beyond any GAN's; a spec asking for more is malformed
MAX_SIDE = 8192


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator maps z ~ latent([N, latent_dim]) to images [N, C, H, W] in output_range."""

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

    def __post_init__(self):
        import math

        for name, top in (("latent_dim", MAX_LATENT), ("channels", 3), ("height", MAX_SIDE), ("width", MAX_SIDE)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise GanqError(f"spec: {name} must be an integer in 1..{top}, got {value!r}")
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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_range"] = list(self.output_range)
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
