"""Calibration with free latents: each weight layer's inputs, seen through onnxruntime (numpy only, never torch).

A GAN's inputs are latents from its own prior, so every layer's input distribution can be sampled without a data
set. `Calibrator` runs the (partly quantized) graph on `n` calibration latents in batches, with an intermediate
tensor as an extra output, and reduces what it sees on the fly:

    layer_stats(node)       H = X X^T / m and mean(X) over the layer's input columns X [K, m]
    channel_moments(name)   per-channel mean and variance of a tensor (axis 1), e.g. a BatchNormalization input

Input columns per op: quantize.columns (the op table, quantize.ops, names each op's builder).

Columns are built per batch and folded into H at once, so memory stays bounded (a batch's columns are kept under
COLUMN_BUDGET bytes); all columns of all latents are never held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ganq.quantize.columns import Unsupported, check_layer, column_blocks, layer_columns
from ganq.quantize.ops import following_batchnorm

COLUMN_BUDGET = 96 * 2 ** 20
MAX_BATCH = 256


def _gram(cols: np.ndarray) -> np.ndarray:
    """cols @ cols.T in float32 BLAS (ssyrk: one triangle, half the work), as float64."""
    try:
        from scipy.linalg.blas import ssyrk
    except ImportError:  # pragma: no cover - scipy is a dependency
        return (cols @ cols.T).astype(np.float64)
    u = ssyrk(1.0, cols.T, trans=1).astype(np.float64)  # cols.T is Fortran-ordered: no copy; upper triangle
    return np.triu(u) + np.triu(u, 1).T


@dataclass
class LayerStats:
    hessian: np.ndarray   # [K, K] float64, X X^T / m
    mean: np.ndarray      # [K] float64, the mean input column
    columns: int          # m


class Calibrator:
    """Runs `model` (its initializers overridden by `weights`) on calibration inputs (`feed`: every input of the
    spec, n rows each), in batches. A model exported with a fixed batch runs with a symbolic one where its graph
    allows it, else in batches of its size (onnx_io.batch_mode, said once)."""

    def __init__(self, model: onnx.ModelProto, spec, feed: dict[str, np.ndarray], threads: int | None = None):
        from ganq.onnx_io import batch_mode, fixed_batch

        self.model = model
        self.spec = spec
        self.feed = feed
        self.weights: dict[str, np.ndarray] = {}
        self.threads = threads
        self.passes = 0
        self.fixed = self.symbolic = None
        b = fixed_batch(model, spec)
        if b is not None:
            _, self.fixed = batch_mode(model, spec, "the model")
            self.symbolic = b if self.fixed is None else None

    def _session(self, outputs: list[str]):
        from ganq.onnx_io import session, symbolic_batch

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        for init in m.graph.initializer:
            if init.name in self.weights:
                init.CopyFrom(numpy_helper.from_array(self.weights[init.name].astype(np.float32), init.name))
        if self.symbolic is not None:
            symbolic_batch(m, self.spec, self.symbolic)
        return session(m, threads=self.threads, outputs=outputs)

    def batches(self, outputs: list[str], batch: int):
        """Yield the requested tensors for each batch of calibration inputs."""
        from ganq.onnx_io import run_batched

        sess = self._session(outputs)
        self.passes += 1
        yield from run_batched(sess, outputs, self.spec, self.feed, batch, self.fixed)

    def _per_sample(self, name: str) -> tuple[int, ...]:
        (x,) = next(self.batches([name], 1))
        return (1, *x.shape[1:])

    def layer_stats(self, node, weight_shape, hessian: bool = True) -> LayerStats:
        """H (when `hessian`; else None) and the mean of the node's input columns over all calibration latents."""
        check_layer(node, weight_shape)
        shape = self._per_sample(node.input[0])
        probe = layer_columns(node, np.zeros(shape, np.float32), weight_shape)  # one latent's columns
        per_latent = probe.shape[1]
        k = probe.shape[0]
        batch = int(max(1, min(MAX_BATCH, COLUMN_BUDGET // max(1, 4 * k * per_latent))))
        h = np.zeros((k, k), np.float64) if hessian else None
        s = np.zeros(k, np.float64)
        m = 0
        for (x,) in self.batches([node.input[0]], batch):
            for idx, cols in column_blocks(node, x, weight_shape):
                if hessian:
                    h[np.ix_(idx, idx)] += _gram(cols)
                s[idx] += cols.sum(axis=1, dtype=np.float64)
            m += probe.shape[1] * x.shape[0]
        return LayerStats(h / m if hessian else None, s / m, m)

    def channel_moments(self, name: str, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (axis 1) mean and population variance of tensor `name` over all latents and positions."""
        s = s2 = None
        m = 0
        shift = None
        for (x,) in self.batches([name], batch):
            x = np.moveaxis(np.asarray(x, np.float64), 1, 0).reshape(x.shape[1], -1)
            if shift is None:
                shift = x.mean(axis=1, keepdims=True)  # a shifted sum keeps the variance accurate
            d = x - shift
            s = d.sum(axis=1) if s is None else s + d.sum(axis=1)
            s2 = (d * d).sum(axis=1) if s2 is None else s2 + (d * d).sum(axis=1)
            m += x.shape[1]
        mean = s / m
        var = np.maximum(s2 / m - mean * mean, 0.0)
        return (mean + shift[:, 0]), var


__all__ = ["Calibrator", "LayerStats", "Unsupported", "layer_columns", "following_batchnorm",
           "check_layer", "column_blocks"]
