"""A ganq generator in onnxruntime: its spec checked against its graph, images from seeded latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganq.errors import GanqError
from ganq.onnx_io import check_spec, load_model, read_metadata, read_spec, resolve_model, sample_latents, session
from ganq.spec import GeneratorSpec


class Generator:
    """A generator .onnx with its spec; generate() gives uint8 NHWC images."""

    def __init__(self, model: str | Path, provider: str = "cpu", threads: int | None = None):
        self.path = resolve_model(model)
        proto = load_model(self.path, external_data=False)  # the metadata is all this needs; onnxruntime loads
        self.spec: GeneratorSpec = read_spec(proto, str(self.path))
        self.metadata = read_metadata(proto)
        check_spec(proto, self.spec, str(self.path))
        self.session = session(self.path, provider, threads)
        outs = {o.name: o for o in self.session.get_outputs()}
        shape = outs[self.spec.output_name].shape
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(shape) != 4 or any(f is not None and f != w for f, w in zip(fixed[1:], self.spec.image_shape)):
            raise GanqError(f"{self.path}: output {self.spec.output_name} has shape {list(shape)}, not an image "
                            f"batch [N, {', '.join(map(str, self.spec.image_shape))}]")

    def latents(self, n: int, seed: int) -> np.ndarray:
        """float32 [n, latent_dim] from a seeded generator: the same seed gives every bit width the same latents."""
        return sample_latents(self.spec, n, seed)

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
