"""onnxruntime sessions for ganq models: load, read the spec, generate images from seeded latents, bench.

Session options never change ganq's numbers: onnxruntime would otherwise rewrite DequantizeLinear -> MatMul into
MatMulNBits with int8 activations, so `session.qdq_matmulnbits_accuracy_level` is pinned to "0".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganq.errors import GanqError
from ganq.spec import GeneratorSpec, read_spec

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def session_options(threads: int | None = None):
    import onnxruntime as ort

    ort.disable_telemetry_events()  # no effect on Linux, where import already writes its device-id file (README)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if threads is not None:
        import os

        top = 4 * (os.cpu_count() or 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= top:
            raise GanqError(f"--threads must be an integer in 1..{top} (4x this machine's cores), got {threads!r}; "
                            "leave it out for onnxruntime's default")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def session(model: str | Path | bytes, provider: str = "cpu", threads: int | None = None):
    """An onnxruntime InferenceSession on `provider` (cpu or cuda)."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise GanqError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise GanqError(f"provider {provider} is not available in this onnxruntime "
                        f"(has {', '.join(ort.get_available_providers())}); for cuda: pip install onnxruntime-gpu")
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise GanqError(f"{model}: no such file")
    try:
        src = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(src, session_options(threads), providers=[name])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise GanqError(f"{'model' if isinstance(model, bytes) else model}: onnxruntime cannot load it "
                        f"({str(e).splitlines()[0][:200]})") from None


def resolve_model(ref: str | Path) -> Path:
    """A path, or zoo:NAME for a model shipped with ganq."""
    ref = str(ref)
    if ref.startswith("zoo:"):
        from ganq.zoo import path as zoo_path
        return zoo_path(ref[4:])
    return Path(ref)


class Generator:
    """A generator .onnx with its spec; generate() gives uint8 NHWC images."""

    def __init__(self, model: str | Path, provider: str = "cpu", threads: int | None = None):
        from ganq.quantize import load_model

        self.path = resolve_model(model)
        proto = load_model(self.path, external_data=False)  # the metadata is all this needs; onnxruntime loads
        self.spec: GeneratorSpec = read_spec(proto, str(self.path))
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        self.session = session(self.path, provider, threads)
        ins = {i.name: i for i in self.session.get_inputs()}
        if self.spec.input_name not in ins:
            raise GanqError(f"{self.path}: spec names input {self.spec.input_name!r}, the graph has "
                            f"{', '.join(ins)}")
        zshape = ins[self.spec.input_name].shape
        if len(zshape) != 2 or (isinstance(zshape[1], int) and zshape[1] != self.spec.latent_dim):
            raise GanqError(f"{self.path}: spec says latent size {self.spec.latent_dim}, the graph's input "
                            f"{self.spec.input_name} has shape {list(zshape)}")
        if ins[self.spec.input_name].type != "tensor(float)":
            raise GanqError(f"{self.path}: input {self.spec.input_name} is {ins[self.spec.input_name].type}, "
                            "not float32 latents")
        outs = {o.name: o for o in self.session.get_outputs()}
        if self.spec.output_name not in outs:
            raise GanqError(f"{self.path}: spec names output {self.spec.output_name!r}, the graph has "
                            f"{', '.join(outs)}")
        shape = outs[self.spec.output_name].shape
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(shape) != 4 or any(f is not None and f != w for f, w in zip(fixed[1:], self.spec.image_shape)):
            raise GanqError(f"{self.path}: output {self.spec.output_name} has shape {list(shape)}, not an image "
                            f"batch [N, {', '.join(map(str, self.spec.image_shape))}]")

    def latents(self, n: int, seed: int) -> np.ndarray:
        """float32 [n, latent_dim] from a seeded generator: the same seed gives every bit width the same latents."""
        rng = np.random.default_rng(seed)
        if self.spec.latent == "uniform":
            return rng.uniform(-1, 1, (n, self.spec.latent_dim)).astype(np.float32)
        return rng.standard_normal((n, self.spec.latent_dim)).astype(np.float32)

    def run(self, z: np.ndarray) -> np.ndarray:
        """float32 [N, C, H, W] in the spec's output range."""
        return self.session.run([self.spec.output_name], {self.spec.input_name: z})[0]

    def generate(self, n: int, seed: int = 0, batch: int = 500, progress=None) -> np.ndarray:
        """uint8 [n, H, W, C] images from n seeded latents, in batches."""
        if n < 1:
            raise GanqError(f"n must be at least 1, got {n}")
        if batch < 1:
            raise GanqError(f"batch must be at least 1, got {batch}")
        z = self.latents(n, seed)
        out = np.empty((n, self.spec.height, self.spec.width, self.spec.channels), np.uint8)
        for i in range(0, n, batch):
            out[i:i + batch] = to_uint8(self.run(z[i:i + batch]), self.spec.output_range)
            if progress:
                progress(min(batch, n - i))
        return out


def to_uint8(x: np.ndarray, output_range=(-1.0, 1.0)) -> np.ndarray:
    """float [N, C, H, W] in output_range -> uint8 [N, H, W, C], as an image file would hold it."""
    lo, hi = output_range
    u = np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(u.transpose(0, 2, 3, 1))


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1] (the input of ganq's feature networks)."""
    return (images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5)) - np.float32(1.0)
