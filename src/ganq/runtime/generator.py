"""A ganq generator in onnxruntime: its spec checked against its graph, images from seeded latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganq.errors import GanqError
from ganq.onnx_io import (batch_mode, check_spec, default_decode, fixed_batch, load_model, read_metadata, read_spec, resolve_model,
                          run_batched, sample_inputs, sample_latents, session, slice_feed)
from ganq.spec import GeneratorSpec


class Generator:
    """A generator .onnx with its spec; generate() gives uint8 NHWC images from inputs drawn from the spec."""

    def __init__(self, model: str | Path, provider: str = "cpu", threads: int | None = None, data_root=None,
                 decode: str = "once"):
        self.path = resolve_model(model)
        self.data_root = data_root
        proto = load_model(self.path, external_data=False)  # the metadata is all this needs; onnxruntime loads
        self.spec: GeneratorSpec = read_spec(proto, str(self.path))
        self.metadata = read_metadata(proto)
        check_spec(proto, self.spec, str(self.path))
        self.fixed = None
        self.source = self.path  # what sessions are built from: the file, or its symbolic-batch copy
        if fixed_batch(proto, self.spec) is not None:
            self.source, self.fixed = batch_mode(load_model(self.path), self.spec, str(self.path))
        # weight decoders folded when the session is made, or run on every call; integer kernels for a file with
        # quantized activations (onnx_io.DECODE)
        self.decode = default_decode(proto, decode)
        from ganq.quantize.nbits import DOMAIN
        self._nbits = any(n.op_type == "MatMulNBits" and n.domain == DOMAIN for n in proto.graph.node)
        self.session = session(self.session_source(self.decode), provider, threads, decode=self.decode)

    def session_source(self, decode: str):
        """What a session with this decode is made from: the file (or its symbolic-batch copy), and for "once" with
        MatMulNBits nodes (--format nbits) a copy whose MatMulNBits weights are decoded into float32 MatMul weights
        here, once (quantize.nbits.decoded_model): no session option folds them, and onnxruntime's kernel decodes
        blocks on every call."""
        if decode != "once" or not self._nbits:
            return self.source
        from ganq.quantize.nbits import decoded_model

        proto = load_model(self.source) if isinstance(self.source, (str, Path)) else self.source
        return decoded_model(proto) or self.source

    def latents(self, n: int, seed: int) -> np.ndarray:
        """float32 [n, latent_dim] from a seeded generator: the same seed gives every bit width the same latents."""
        return sample_latents(self.spec, n, seed)

    def inputs(self, n: int, seed: int, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The feed of n calls, every input drawn from the spec (labels: the label input's values, if given)."""
        return sample_inputs(self.spec, n, seed, data_root=self.data_root, labels=labels)

    def run(self, feed, batch: int = 500) -> np.ndarray:
        """float32 images in the spec's output range and layout, for a feed (or the latents of a one-latent
        generator), in batches (of the graph's fixed batch where it has one)."""
        if not isinstance(feed, dict):
            feed = {self.spec.input_name: feed}
        parts = [o for (o,) in run_batched(self.session, [self.spec.output_name], self.spec, feed, batch, self.fixed)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def generate(self, n: int, seed: int = 0, batch: int = 500, progress=None,
                 labels: np.ndarray | None = None) -> np.ndarray:
        """uint8 [n, H, W, C] images from n seeded inputs, in batches."""
        if n < 1:
            raise GanqError(f"n must be at least 1, got {n}")
        if batch < 1:
            raise GanqError(f"batch must be at least 1, got {batch}")
        feed = self.inputs(n, seed, labels)
        out = np.empty((n, self.spec.height, self.spec.width, self.spec.channels), np.uint8)
        for i in range(0, n, batch):
            part = slice_feed(self.spec, feed, i, i + batch)
            out[i:i + batch] = to_uint8(self.run(part, batch), self.spec.output_range, self.spec.output_layout)
            if progress:
                progress(min(batch, n - i))
        return out


def to_uint8(x: np.ndarray, output_range=(-1.0, 1.0), layout: str = "NCHW") -> np.ndarray:
    """float [N, C, H, W] (or NHWC) in output_range -> uint8 [N, H, W, C], as an image file would hold it."""
    lo, hi = output_range
    u = np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(u if layout == "NHWC" else u.transpose(0, 2, 3, 1))


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1] (the input of ganq's feature networks)."""
    return (images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5)) - np.float32(1.0)
