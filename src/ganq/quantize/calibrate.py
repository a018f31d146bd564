"""Calibration with free latents: each weight layer's inputs, seen through onnxruntime (numpy only, never torch).

A GAN's inputs are latents from its own prior, so every layer's input distribution can be sampled without a data
set. `Calibrator` runs the (partly quantized) graph on `n` calibration latents in batches, with an intermediate
tensor as an extra output, and reduces what it sees on the fly:

    layer_stats(node)       H = X X^T / m and mean(X) over the layer's input columns X [K, m]
    channel_moments(name)   per-channel mean and variance of a tensor (axis 1), e.g. a BatchNormalization input

Input columns per op (`layer_columns`), so that W_rows @ X (+ bias) is the layer's output, W_rows = the weight with
its output channels as rows and (input channel, ky, kx) as columns:

    Gemm / MatMul    X = alpha * A'^T  (A' = A or A^T)
    Conv             im2col: X[(ci, ky, kx), (n, oy, ox)] = x[n, ci, oy*s + ky*d - pad, ...]  (0 outside)
    ConvTranspose    the convolution of the zero-stuffed input: X[(ci, ky, kx), (n, oy, ox)] = x[n, ci, iy, ...]
                     where iy = (oy + pad - ky*d) / s when that is an integer inside the input, else 0

Columns are built per batch and folded into H at once, so memory stays bounded (a batch's columns are kept under
COLUMN_BUDGET bytes); all columns of all latents are never held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ganq.errors import GanqError

COLUMN_BUDGET = 96 * 2 ** 20
MAX_BATCH = 256
SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


class Unsupported(GanqError):
    """A layer whose input columns ganq cannot build (the calibrated methods fall back to round-to-nearest)."""


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]       # top, left, bottom, right
    output_padding: tuple[int, int] = (0, 0)


def conv_geometry(node, weight_shape) -> ConvGeometry:
    """The 2-D geometry of a Conv / ConvTranspose node; Unsupported for what the columns do not cover."""
    if len(weight_shape) != 4:
        raise Unsupported(f"{node.op_type} with a {len(weight_shape)}-D weight (only 2-D convolutions)")
    if _attr(node, "group", 1) != 1:
        raise Unsupported(f"grouped {node.op_type} (group={_attr(node, 'group', 1)})")
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        raise Unsupported(f"{node.op_type} with auto_pad={auto}")
    if node.op_type == "ConvTranspose" and _attr(node, "output_shape", None):
        raise Unsupported("ConvTranspose with an output_shape attribute")
    k = tuple(int(v) for v in weight_shape[2:])
    s = tuple(int(v) for v in _attr(node, "strides", [1, 1]))
    d = tuple(int(v) for v in _attr(node, "dilations", [1, 1]))
    p = (0, 0, 0, 0) if auto == "VALID" else tuple(int(v) for v in _attr(node, "pads", [0, 0, 0, 0]))
    op = tuple(int(v) for v in _attr(node, "output_padding", [0, 0]))
    return ConvGeometry(k, s, d, p, op)


def _out_size(x_shape, g: ConvGeometry, transpose: bool) -> tuple[int, int]:
    h, w = x_shape[2:]
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = g.kernel, g.strides, g.dilations, g.pads
    if transpose:
        ho = sh * (h - 1) + g.output_padding[0] + dh * (kh - 1) + 1 - pt - pb
        wo = sw * (w - 1) + g.output_padding[1] + dw * (kw - 1) + 1 - pl - pr
    else:
        ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise Unsupported(f"output size {ho}x{wo}")
    return ho, wo


def _index(outs, taps, size, s, d, pad, transpose):
    """Input index [len(outs), len(taps)] each (output position, kernel tap) reads, and whether it is inside."""
    o, kk = outs[:, None], taps[None, :]
    if transpose:
        num = o + pad - kk * d
        i, ok = num // s, (num % s == 0)
    else:
        i, ok = o * s + kk * d - pad, np.ones((len(outs), len(taps)), bool)
    ok = ok & (i >= 0) & (i < size)
    return np.where(ok, i, 0), ok


def _gather(x, iy, oky, ix, okx) -> np.ndarray:
    """Columns [(c, ty, tx), (n, oy, ox)] for the given per-axis (index, inside) tables."""
    n, c = x.shape[:2]
    ty, tx = iy.shape[1], ix.shape[1]
    cols = np.empty((c, ty, tx, n, iy.shape[0], ix.shape[0]), np.float32)
    xt = np.moveaxis(x, 1, 0)  # [c, n, h, w]
    for a in range(ty):
        sel = xt[:, :, iy[:, a], :] * oky[:, a][None, None, :, None]   # [c, n, oy, w]
        for b in range(tx):
            cols[:, a, b] = sel[:, :, :, ix[:, b]] * okx[:, b][None, None, None, :]
    return cols.reshape(c * ty * tx, -1)


def _conv_columns(x: np.ndarray, g: ConvGeometry, transpose: bool) -> np.ndarray:
    ho, wo = _out_size(x.shape, g, transpose)
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = g.kernel, g.strides, g.dilations, g.pads
    iy, oky = _index(np.arange(ho), np.arange(kh), x.shape[2], sh, dh, pt, transpose)
    ix, okx = _index(np.arange(wo), np.arange(kw), x.shape[3], sw, dw, pl, transpose)
    return _gather(x, iy, oky, ix, okx)


def column_blocks(node, x: np.ndarray, weight_shape):
    """Yield (rows, columns): the layer's input columns in blocks, each with the K-indices it can be non-zero on.

    A strided ConvTranspose's zero-stuffed input leaves most taps structurally zero: output positions of one phase
    (oy mod s, ox mod s) read only the taps with (oy + pad - ky*d) = 0 mod s, so its columns are built on those
    rows alone (s^2 fewer rows, s^2 fewer columns per block: X X^T costs s^4 less). Other layers: one block."""
    if node.op_type != "ConvTranspose":
        cols = layer_columns(node, x, weight_shape)
        yield np.arange(cols.shape[0]), cols
        return
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise Unsupported(f"ConvTranspose on a {x.ndim}-D input")
    g = conv_geometry(node, weight_shape)
    ho, wo = _out_size(x.shape, g, True)
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = g.kernel, g.strides, g.dilations, g.pads
    c = x.shape[1]
    for py in range(min(sh, ho)):
        ty = np.array([k for k in range(kh) if (py + pt - k * dh) % sh == 0], np.int64)
        for px in range(min(sw, wo)):
            tx = np.array([k for k in range(kw) if (px + pl - k * dw) % sw == 0], np.int64)
            if not len(ty) or not len(tx):
                continue
            iy, oky = _index(np.arange(py, ho, sh), ty, x.shape[2], sh, dh, pt, True)
            ix, okx = _index(np.arange(px, wo, sw), tx, x.shape[3], sw, dw, pl, True)
            rows_k = (np.arange(c)[:, None, None] * (kh * kw) + ty[None, :, None] * kw + tx[None, None, :])
            yield rows_k.reshape(-1), _gather(x, iy, oky, ix, okx)


def layer_columns(node, x: np.ndarray, weight_shape) -> np.ndarray:
    """The input columns X [K, m] of one batch x of a weight node's data input (see the module docstring)."""
    op = node.op_type
    x = np.asarray(x, np.float32)
    if op == "Gemm":
        a = x.T if _attr(node, "transA", 0) else x
        return (np.float32(_attr(node, "alpha", 1.0)) * a).T
    if op == "MatMul":
        if len(weight_shape) != 2:
            raise Unsupported(f"MatMul with a {len(weight_shape)}-D weight")
        return x.reshape(-1, x.shape[-1]).T
    if op in ("Conv", "ConvTranspose"):
        if x.ndim != 4:
            raise Unsupported(f"{op} on a {x.ndim}-D input")
        return _conv_columns(x, conv_geometry(node, weight_shape), op == "ConvTranspose")
    raise Unsupported(f"op {op}")


def check_layer(node, weight_shape) -> None:
    """Unsupported now (before any forward pass) if the node's columns cannot be built."""
    if node.op_type in ("Conv", "ConvTranspose"):
        conv_geometry(node, weight_shape)
    elif node.op_type == "MatMul" and len(weight_shape) != 2:
        raise Unsupported(f"MatMul with a {len(weight_shape)}-D weight")
    elif node.op_type not in ("Gemm", "MatMul"):
        raise Unsupported(f"op {node.op_type}")


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
    """Runs `model` (its initializers overridden by `weights`) on calibration latents, in batches."""

    def __init__(self, model: onnx.ModelProto, input_name: str, latents: np.ndarray, threads: int | None = None):
        self.model = model
        self.input_name = input_name
        self.latents = latents
        self.weights: dict[str, np.ndarray] = {}
        self.threads = threads
        self.passes = 0

    def _session(self, outputs: list[str]):
        from ganq.onnx_io import session

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        for init in m.graph.initializer:
            if init.name in self.weights:
                init.CopyFrom(numpy_helper.from_array(self.weights[init.name].astype(np.float32), init.name))
        return session(m, threads=self.threads, outputs=outputs)

    def batches(self, outputs: list[str], batch: int):
        """Yield the requested tensors for each batch of calibration latents."""
        sess = self._session(outputs)
        self.passes += 1
        for i in range(0, len(self.latents), batch):
            yield sess.run(outputs, {self.input_name: self.latents[i:i + batch]})

    def _per_sample(self, name: str) -> tuple[int, ...]:
        (x,) = next(self.batches([name], 1))
        return x.shape

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


def following_batchnorm(graph, node):
    """The BatchNormalization that consumes `node`'s output (through shape-only ops), or None."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = node.output[0]
    outputs = {o.name for o in graph.output}
    while True:
        users = consumers.get(out, [])
        if len(users) != 1 or out in outputs:
            return None
        (u,) = users
        if u.op_type == "BatchNormalization" and u.input[0] == out:
            return u
        if u.op_type in SHAPE_OPS and u.input[0] == out:
            out = u.output[0]
            continue
        return None


__all__ = ["Calibrator", "LayerStats", "Unsupported", "layer_columns", "following_batchnorm",
           "check_layer", "column_blocks"]
