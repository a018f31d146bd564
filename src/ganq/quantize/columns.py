"""A weight layer's input columns X [K, m], such that W_rows @ X (+ bias) is the layer's output, W_rows = the weight
with its output channels as rows and (input channel, ky, kx) as columns (pure numpy):


    Gemm / MatMul    X = alpha * A'^T  (A' = A or A^T)
    Conv             im2col: X[(ci, ky, kx), (n, oy, ox)] = x[n, ci, oy*s + ky*d - pad, ...]  (0 outside)
    ConvTranspose    the convolution of the zero-stuffed input: X[(ci, ky, kx), (n, oy, ox)] = x[n, ci, iy, ...]
                     where iy = (oy + pad - ky*d) / s when that is an integer inside the input, else 0

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganq.errors import GanqError
from ganq.quantize.ops import OPS, attr as _attr


class Unsupported(GanqError):
    """A layer whose input columns ganq cannot build (the calibrated methods fall back to round-to-nearest)."""


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


def _gemm_columns(node, x, weight_shape):
    a = x.T if _attr(node, "transA", 0) else x
    return (np.float32(_attr(node, "alpha", 1.0)) * a).T


def _matmul_columns(node, x, weight_shape):
    if len(weight_shape) != 2:
        raise Unsupported(f"MatMul with a {len(weight_shape)}-D weight")
    return x.reshape(-1, x.shape[-1]).T


def _conv_like_columns(node, x, weight_shape):
    if x.ndim != 4:
        raise Unsupported(f"{node.op_type} on a {x.ndim}-D input")
    return _conv_columns(x, conv_geometry(node, weight_shape), node.op_type == "ConvTranspose")


def _check_conv(node, weight_shape):
    conv_geometry(node, weight_shape)


def _check_matmul(node, weight_shape):
    if len(weight_shape) != 2:
        raise Unsupported(f"MatMul with a {len(weight_shape)}-D weight")


# the op table's `columns` kinds: (builder of one batch's columns, check before any forward pass)
BUILDERS = {"gemm": (_gemm_columns, None), "matmul": (_matmul_columns, _check_matmul),
            "conv": (_conv_like_columns, _check_conv), "conv_transpose": (_conv_like_columns, _check_conv)}


def _builder(node):
    if node.op_type not in OPS or OPS.get(node.op_type).columns not in BUILDERS:
        raise Unsupported(f"op {node.op_type}")
    return BUILDERS[OPS.get(node.op_type).columns]


def layer_columns(node, x: np.ndarray, weight_shape) -> np.ndarray:
    """The input columns X [K, m] of one batch x of a weight node's data input (see the module docstring)."""
    build, _ = _builder(node)
    return build(node, np.asarray(x, np.float32), weight_shape)


def check_layer(node, weight_shape) -> None:
    """Unsupported now (before any forward pass) if the node's columns cannot be built."""
    _, check = _builder(node)
    if check is not None:
        check(node, weight_shape)
