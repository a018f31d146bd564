"""GeneratorSpec: what a generator is, carried in checkpoints and in ONNX metadata_props."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ganq.errors import GanqError

META_SPEC = "ganq.spec"
META_QUANT = "ganq.quant"
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


def read_metadata(model) -> dict[str, str]:
    """metadata_props of an onnx.ModelProto as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model, key: str, value: str) -> None:
    """Set one metadata_props entry of an onnx.ModelProto, replacing an existing one."""
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def read_spec(model, source: str = "model") -> GeneratorSpec:
    meta = read_metadata(model)
    if META_SPEC not in meta:
        raise GanqError(
            f"{source} has no '{META_SPEC}' metadata: it is not a ganq generator; "
            f"describe it first with `ganq spec {source} --latent-dim ...`"
        )
    return GeneratorSpec.from_json(meta[META_SPEC])


def describe(src, dst, *, latent_dim: int, latent: str = "normal", output_range=(-1.0, 1.0),
             input_name: str | None = None, output_name: str | None = None, dataset: str = "",
             arch: str = "") -> GeneratorSpec:
    """Write a GeneratorSpec into a generator exported elsewhere, checking it against the graph's signature."""
    import onnx

    from ganq._io import atomic_path

    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise GanqError(f"{src}: not an ONNX model ({type(e).__name__})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    outputs = list(model.graph.output)

    def pick(items, name, what, flag):
        if name is None:
            if len(items) != 1:
                raise GanqError(f"{src} has {len(items)} {what}s ({', '.join(i.name for i in items)}); name one "
                                f"with {flag}")
            return items[0]
        for i in items:
            if i.name == name:
                return i
        raise GanqError(f"{src} has no {what} {name!r}; it has {', '.join(i.name for i in items)}")

    zin, img = pick(inputs, input_name, "input", "--input-name"), pick(outputs, output_name, "output", "--output-name")
    zdims = [d.dim_value if d.HasField("dim_value") else None for d in zin.type.tensor_type.shape.dim]
    idims = [d.dim_value if d.HasField("dim_value") else None for d in img.type.tensor_type.shape.dim]
    if len(zdims) != 2 or zdims[1] not in (None, latent_dim):
        raise GanqError(f"input {zin.name} has shape {zdims}, not [N, {latent_dim}]")
    if len(idims) != 4 or any(d is None for d in idims[1:]):
        raise GanqError(f"output {img.name} has shape {idims}; ganq needs [N, C, H, W] with C, H, W fixed")
    spec = GeneratorSpec(latent_dim=latent_dim, channels=idims[1], height=idims[2], width=idims[3], latent=latent,
                         output_range=tuple(output_range), dataset=dataset, arch=arch, input_name=zin.name,
                         output_name=img.name)
    write_metadata(model, META_SPEC, spec.to_json())
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return spec
