"""An ONNX graph run in torch, node by node, so that autograd reaches its weights: the engine of `distill`.

    net = OnnxTorch(model)                       # float initializers become tensors net.tensors[name]
    out = net({"z": z}, {"fc.weight": w_q})      # feeds by input name; any initializer replaced for this call

Each op is a small function over torch tensors with the ONNX semantics of the opsets ganq reads (13-21), for the
ops of the generators and feature networks people export (the op table's weight ops, the value-preserving ops, the
activations, normalisations, shape arithmetic, resizing). Integer shape arithmetic runs on int64 tensors, as in
ONNX. An op outside this table, or an attribute value it does not implement, raises Unsupported naming it, so that
`distill` refuses a model in one line instead of training a different network; the rebuild is also checked
against onnxruntime before every run (check_against_onnxruntime).

Why not onnx2torch: benchmarks/onnx_torch_coverage.py converts the zoo and the bring-your-own families with both;
this table covers all of them, and it keeps every initializer addressable by its ONNX name, which the quantized
forward pass needs (onnx2torch folds weights into nn.Conv2d / nn.Linear modules under its own names).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F

from ganq.errors import GanqError


class Unsupported(GanqError):
    pass


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axes(x, axes):
    return [a % x.dim() for a in axes]


def _gemm(x, a, inp):
    b = inp[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        b = b.t()
    y = a.get("alpha", 1.0) * (x @ b)
    if len(inp) > 2 and inp[2] is not None:
        y = y + a.get("beta", 1.0) * inp[2]
    return y


def _pads(a, nd):
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
        raise Unsupported(f"auto_pad {a['auto_pad']!r}")
    p = a.get("pads", [0] * (2 * nd))
    return p[:nd], p[nd:]


def _conv(x, a, inp):
    nd = x.dim() - 2
    begin, end = _pads(a, nd)
    strides, dil, groups = a.get("strides", [1] * nd), a.get("dilations", [1] * nd), a.get("group", 1)
    if list(begin) != list(end):
        x = F.pad(x, [v for i in reversed(range(nd)) for v in (begin[i], end[i])])
        begin = [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, inp[1], inp[2] if len(inp) > 2 else None, strides, list(begin), dil, groups)


def _conv_t(x, a, inp):
    nd = x.dim() - 2
    begin, end = _pads(a, nd)
    if "output_shape" in a:
        raise Unsupported("ConvTranspose output_shape")
    strides, dil, groups = a.get("strides", [1] * nd), a.get("dilations", [1] * nd), a.get("group", 1)
    outp = list(a.get("output_padding", [0] * nd))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    if list(begin) != list(end):  # asymmetric pads: pad by the smaller, crop the rest
        lo = [min(b, e) for b, e in zip(begin, end)]
        y = fn(x, inp[1], inp[2] if len(inp) > 2 else None, strides, lo, outp, groups, dil)
        sl = [slice(None), slice(None)] + [slice(b - m, y.shape[2 + i] - (e - m)) for i, (b, e, m)
                                           in enumerate(zip(begin, end, lo))]
        return y[tuple(sl)]
    return fn(x, inp[1], inp[2] if len(inp) > 2 else None, strides, list(begin), outp, groups, dil)


def _bn(x, a, inp):
    if a.get("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    return F.batch_norm(x, inp[3], inp[4], inp[1], inp[2], False, 0.0, a.get("epsilon", 1e-5))


def _instance_norm(x, a, inp):
    return F.instance_norm(x, weight=inp[1], bias=inp[2], eps=a.get("epsilon", 1e-5))


def _reshape(x, a, inp):
    shape = _ints(inp[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _flatten(x, a, inp):
    ax = a.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(int(np.prod(x.shape[:ax])), -1)


def _unsqueeze(x, a, inp):
    axes = a["axes"] if "axes" in a else _ints(inp[1])
    rank = x.dim() + len(axes)
    for ax in sorted(v % rank for v in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(x, a, inp):
    axes = a.get("axes") if "axes" in a else (_ints(inp[1]) if len(inp) > 1 and inp[1] is not None else None)
    if axes is None:
        return x.squeeze()
    for ax in sorted(_axes(x, axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _reduce(fn):
    def op(x, a, inp):
        axes = a.get("axes") if "axes" in a else (_ints(inp[1]) if len(inp) > 1 and inp[1] is not None else None)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, _axes(x, axes), keep)
    return op


def _slice(x, a, inp):
    """ONNX Slice, any step (a negative one walks backwards: the exporters' flips and reflection pads)."""
    starts, ends = _ints(inp[1]), _ints(inp[2])
    axes = _ints(inp[3]) if len(inp) > 3 and inp[3] is not None else list(range(len(starts)))
    steps = _ints(inp[4]) if len(inp) > 4 and inp[4] is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax % x.dim()
        n = x.shape[ax]
        s, e = s + n if s < 0 else s, e + n if e < 0 else e
        if st > 0:
            s, e = max(0, min(n, s)), max(0, min(n, e))
        else:
            s, e = max(-1, min(n - 1, s)), max(-1, min(n - 1, e))
        x = torch.index_select(x, ax, torch.arange(s, e, st, dtype=torch.int64))
    return x


def _resize(x, a, inp):
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ct = a.get("coordinate_transformation_mode", b"half_pixel")
    ct = ct.decode() if isinstance(ct, bytes) else ct
    sizes = inp[3] if len(inp) > 3 and inp[3] is not None and inp[3].numel() else None
    scales = inp[2] if len(inp) > 2 and inp[2] is not None and inp[2].numel() else None
    if sizes is not None:
        size = _ints(sizes)[2:]
    elif scales is not None:
        sc = [float(v) for v in scales.tolist()]
        if sc[:2] != [1.0, 1.0]:
            raise Unsupported("Resize over the batch or channel axis")
        size = [int(math.floor(n * s)) for n, s in zip(x.shape[2:], sc[2:])]
    else:
        raise Unsupported("Resize without scales or sizes")
    if mode == "nearest":
        nm = a.get("nearest_mode", b"round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        if ct == "asymmetric" and nm == "floor":
            return F.interpolate(x, size=size, mode="nearest")
        if ct in ("half_pixel", "pytorch_half_pixel") and nm in ("round_prefer_ceil", "round_prefer_floor") \
                and all(o % i == 0 for o, i in zip(size, x.shape[2:])):
            return F.interpolate(x, size=size, mode="nearest-exact")
        raise Unsupported(f"Resize nearest with {ct} / {nm}")
    torch_mode = {"linear": {3: "linear", 4: "bilinear", 5: "trilinear"}.get(x.dim()), "cubic": "bicubic"}.get(mode)
    if torch_mode is None or (mode == "cubic" and abs(a.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6):
        raise Unsupported(f"Resize mode {mode}")
    if ct == "align_corners":
        return F.interpolate(x, size=size, mode=torch_mode, align_corners=True)
    if ct in ("half_pixel", "pytorch_half_pixel"):
        return F.interpolate(x, size=size, mode=torch_mode, align_corners=False)
    raise Unsupported(f"Resize {mode} with coordinate_transformation_mode {ct}")


def _depth_to_space(x, a, inp):
    b = a["blocksize"]
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n, c, h, w = x.shape
    if mode == "CRD":
        return F.pixel_shuffle(x, b)
    y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


def _pad(x, a, inp):
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = a["pads"] if "pads" in a else _ints(inp[1])
    value = float(inp[2].reshape(-1)[0]) if len(inp) > 2 and inp[2] is not None and inp[2].numel() else 0.0
    if len(inp) > 3 and inp[3] is not None:
        raise Unsupported("Pad with axes")
    nd = x.dim()
    begin, end = pads[:nd], pads[nd:]
    if any(begin[:2]) or any(end[:2]):
        raise Unsupported("Pad over the batch or channel axis")
    flat = [v for i in reversed(range(2, nd)) for v in (begin[i], end[i])]
    if mode == "constant":
        return F.pad(x, flat, value=value)
    return F.pad(x, flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _pool(kind):
    def op(x, a, inp):
        nd = x.dim() - 2
        begin, end = _pads(a, nd)
        if list(begin) != list(end) or a.get("ceil_mode", 0):
            raise Unsupported(f"{kind} with asymmetric pads or ceil_mode")
        k, s = a["kernel_shape"], a.get("strides", [1] * nd)
        if kind == "max":
            return F.max_pool2d(x, k, s, list(begin), a.get("dilations", [1] * nd))
        return F.avg_pool2d(x, k, s, list(begin), count_include_pad=bool(a.get("count_include_pad", 0)))
    return op


def _cast(x, a, inp):
    to = onnx.helper.tensor_dtype_to_np_dtype(a["to"])
    return x.to({np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                 np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
                 np.dtype(np.bool_): torch.bool, np.dtype(np.float64): torch.float64}[np.dtype(to)])


def _clip(x, a, inp):
    lo = inp[1] if len(inp) > 1 and inp[1] is not None else a.get("min")
    hi = inp[2] if len(inp) > 2 and inp[2] is not None else a.get("max")
    if lo is not None:
        x = torch.maximum(x, lo if torch.is_tensor(lo) else torch.tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi if torch.is_tensor(hi) else torch.tensor(hi, dtype=x.dtype))
    return x


def _split(x, a, inp):
    ax = a.get("axis", 0)
    split = a.get("split") or (_ints(inp[1]) if len(inp) > 1 and inp[1] is not None else None)
    if split is None:
        n = a["num_outputs"]
        size = -(-x.shape[ax] // n)
        split = [min(size, x.shape[ax] - i * size) for i in range(n)]
    return list(torch.split(x, split, ax))


def _const(a):
    if "value" in a:
        return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
    for key, dt in (("value_float", torch.float32), ("value_int", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dt)
    for key, dt in (("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(list(a[key]), dtype=dt)
    raise Unsupported("Constant without a value")


def _const_of_shape(x, a, inp):
    v = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.zeros(1)
    return v.reshape(-1)[0].expand(*_ints(x)).clone()


def _gather(x, a, inp):
    ax = a.get("axis", 0) % x.dim()
    idx = inp[1].long()
    idx = torch.where(idx < 0, idx + x.shape[ax], idx)
    out = torch.index_select(x, ax, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:ax]) + tuple(idx.shape) + tuple(x.shape[ax + 1:]))


def _range(x, a, inp):
    return torch.arange(inp[0].item(), inp[1].item(), inp[2].item(), dtype=inp[0].dtype)


# name -> fn(first input, attributes, every input) returning one tensor or a list
OPS = {
    "Gemm": _gemm, "MatMul": lambda x, a, i: x @ i[1], "Conv": _conv, "ConvTranspose": _conv_t,
    "Add": lambda x, a, i: x + i[1], "Sub": lambda x, a, i: x - i[1], "Mul": lambda x, a, i: x * i[1],
    "Div": lambda x, a, i: (torch.div(x, i[1], rounding_mode="trunc") if not x.is_floating_point() else x / i[1]),
    "Pow": lambda x, a, i: torch.pow(x, i[1]), "Sqrt": lambda x, a, i: torch.sqrt(x),
    "Neg": lambda x, a, i: -x, "Exp": lambda x, a, i: torch.exp(x), "Log": lambda x, a, i: torch.log(x),
    "Abs": lambda x, a, i: torch.abs(x), "Reciprocal": lambda x, a, i: 1.0 / x,
    "Erf": lambda x, a, i: torch.erf(x),
    "Relu": lambda x, a, i: F.relu(x), "LeakyRelu": lambda x, a, i: F.leaky_relu(x, a.get("alpha", 0.01)),
    "PRelu": lambda x, a, i: torch.where(x >= 0, x, x * i[1]),
    "Tanh": lambda x, a, i: torch.tanh(x), "Sigmoid": lambda x, a, i: torch.sigmoid(x),
    "Softplus": lambda x, a, i: F.softplus(x), "Elu": lambda x, a, i: F.elu(x, a.get("alpha", 1.0)),
    "Selu": lambda x, a, i: F.selu(x), "HardSigmoid": lambda x, a, i: torch.clamp(
        a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
    "Softmax": lambda x, a, i: F.softmax(x, a.get("axis", -1)), "Clip": _clip,
    "BatchNormalization": _bn, "InstanceNormalization": _instance_norm,
    "Identity": lambda x, a, i: x, "Dropout": lambda x, a, i: x,
    "Reshape": _reshape, "Flatten": _flatten, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Transpose": lambda x, a, i: x.permute(*(a.get("perm") or list(reversed(range(x.dim()))))),
    "Concat": lambda x, a, i: torch.cat([t for t in i if t is not None], a["axis"]),
    "Split": _split, "Slice": _slice, "Gather": _gather, "Cast": _cast,
    "Shape": lambda x, a, i: torch.tensor(list(x.shape)[a.get("start", 0):a.get("end", x.dim())],
                                          dtype=torch.int64),
    "Size": lambda x, a, i: torch.tensor(x.numel(), dtype=torch.int64),
    "ConstantOfShape": _const_of_shape, "Range": _range,
    "Expand": lambda x, a, i: x * torch.ones(_ints(i[1]), dtype=x.dtype),
    "Tile": lambda x, a, i: x.repeat(*_ints(i[1])),
    "Equal": lambda x, a, i: x == i[1], "Less": lambda x, a, i: x < i[1], "Greater": lambda x, a, i: x > i[1],
    "Not": lambda x, a, i: ~x, "Where": lambda x, a, i: torch.where(x, i[1], i[2]),
    "Min": lambda x, a, i: torch.stack(torch.broadcast_tensors(*i)).min(0).values,
    "Max": lambda x, a, i: torch.stack(torch.broadcast_tensors(*i)).max(0).values,
    "ReduceMean": _reduce(lambda x, ax, k: x.mean(ax, keepdim=k)),
    "ReduceSum": _reduce(lambda x, ax, k: x.sum(ax, keepdim=k)),
    "ReduceMax": _reduce(lambda x, ax, k: x.amax(ax, keepdim=k)),
    "ReduceL2": _reduce(lambda x, ax, k: x.pow(2).sum(ax, keepdim=k).sqrt()),
    "Resize": _resize, "DepthToSpace": _depth_to_space, "Pad": _pad,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda x, a, i: x.mean(list(range(2, x.dim())), keepdim=True),
}


class OnnxTorch(torch.nn.Module):
    """model's graph as a torch callable; its float initializers are in self.tensors (name -> float32 tensor)."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        missing = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")} |
                         {n.op_type for n in model.graph.node if n.op_type not in OPS and n.op_type != "Constant"})
        if missing:
            raise Unsupported(f"the torch rebuild has no {', '.join(missing)}")
        if any(a.type == onnx.AttributeProto.GRAPH for n in model.graph.node for a in n.attribute):
            raise Unsupported("subgraphs (If, Loop, Scan)")
        self.tensors: dict[str, torch.Tensor] = {}
        for init in model.graph.initializer:
            a = numpy_helper.to_array(init)
            t = torch.from_numpy(np.array(a, copy=True))
            self.tensors[init.name] = t.float() if t.is_floating_point() else t
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in model.graph.node]
        self.outputs = [o.name for o in model.graph.output]

    def forward(self, feeds: dict, replace: dict | None = None, outputs: list[str] | None = None):
        env = dict(self.tensors)
        if replace:
            env.update(replace)
        for k, v in feeds.items():
            env[k] = v if torch.is_tensor(v) else torch.from_numpy(np.asarray(v))
        for op, ins, outs, a in self.nodes:
            if op == "Constant":
                env[outs[0]] = _const(a)
                continue
            args = [env[n] if n else None for n in ins]
            try:
                y = OPS[op](args[0] if args else None, a, args)
            except Unsupported:
                raise
            except (RuntimeError, KeyError, IndexError, ValueError, TypeError) as e:
                raise Unsupported(f"{op} ({outs[0]}): {str(e).splitlines()[0][:160]}") from None
            if isinstance(y, list):
                for name, t in zip(outs, y):
                    env[name] = t
            else:
                env[outs[0]] = y
        want = outputs or self.outputs
        return [env[n] for n in want]


def check_against_onnxruntime(model: onnx.ModelProto, feed: dict, tol: float = 1e-4, what: str = "model") -> float:
    """Max |torch rebuild - onnxruntime| on feed; Unsupported when it exceeds tol."""
    from ganq.onnx_io import session

    net = OnnxTorch(model)
    with torch.no_grad():
        got = [t.numpy() for t in net(feed)]
    want = session(model).run(None, feed)
    worst = 0.0
    for g, w in zip(got, want):
        if g.shape != w.shape:
            raise Unsupported(f"the torch rebuild of {what} gives shape {g.shape}, onnxruntime {w.shape}")
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0)
    if not worst <= tol:
        raise Unsupported(f"the torch rebuild of {what} differs from onnxruntime by {worst:.3g} > {tol:g}")
    return worst
