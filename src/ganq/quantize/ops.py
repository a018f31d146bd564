"""The op table: everything ganq knows about the ops that hold weights, in one place (NNCF's metatypes,
onnxruntime's operator registry). Every stage that asks "what is this node's weight" reads it: weight discovery
(plan), calibration's input columns, BatchNorm folding, bias correction and BatchNorm re-estimation, mixed
precision and the app's weight count. A new model family is new entries, not new branches.

    info = OPS.get("ConvTranspose")
    info.weight, info.bias            # input slots: 1, 2
    info.out_axis(node, 4)            # 1: the weight is [C_in, C_out / group, kH, kW]
    info.in_axes(node, 4)             # (0, 1): the weight's input-channel axis, the data input's channel axis

Weight discovery (`find_targets`) walks from an initializer through value-preserving ops (VALUE_PRESERVING) to the
op that consumes it, so a weight that reaches its Conv through an Identity or a Cast is found at the initializer.
An initializer shared by several consumers is one target, found once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ganq.errors import GanqError
from ganq.registry import Registry


def attr(node, name, default):
    """A node attribute's value, or default."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class OpInfo:
    """What ganq knows about one weight op type.

    weight / bias: the input slots of the weight and the bias (bias None: the op has none; bias correction then adds
    an Add after it). out_axis(node, ndim) / in_axes(node, ndim): the weight's output-channel axis, and (its
    input-channel axis, the data input's channel axis). columns: the calibration column builder's kind (see
    quantize.columns). folds_bn: a following inference BatchNormalization folds into the op. bias_scale(node): the
    factor the op multiplies its bias by (Gemm's beta), None where a bias cannot be corrected."""

    op_type: str
    weight: int
    bias: int | None
    out_axis: Callable
    in_axes: Callable
    columns: str
    folds_bn: bool = True
    min_weight_rank: int = 1
    bias_scale: Callable = lambda node: 1.0
    fold_ok: Callable = lambda node: True   # attributes under which a following BatchNormalization folds

    def grouped(self, node) -> int:
        return int(attr(node, "group", 1))


OPS: Registry[OpInfo] = Registry("weight op")


def register(info: OpInfo) -> OpInfo:
    return OPS.register(info.op_type, info)


register(OpInfo("Conv", 1, 2, lambda n, d: 0, lambda n, d: (1, 1), "conv"))
register(OpInfo("ConvTranspose", 1, 2, lambda n, d: 1, lambda n, d: (0, 1), "conv_transpose"))
register(OpInfo("Gemm", 1, 2, lambda n, d: 0 if attr(n, "transB", 0) else 1,
                lambda n, d: ((1 if attr(n, "transB", 0) else 0), (0 if attr(n, "transA", 0) else 1)), "gemm",
                bias_scale=lambda n: float(attr(n, "beta", 1.0)),
                fold_ok=lambda n: attr(n, "alpha", 1.0) == 1.0 and attr(n, "beta", 1.0) == 1.0))
register(OpInfo("MatMul", 1, None, lambda n, d: d - 1, lambda n, d: (d - 2, -1), "matmul", min_weight_rank=2))
# an embedding table (nn.Embedding): rows looked up by the indices; quantized per row (its `axis`), never calibrated
register(OpInfo("Gather", 0, None, lambda n, d: int(attr(n, "axis", 0)) % d, lambda n, d: (None, None), "lookup",
                folds_bn=False, min_weight_rank=2, bias_scale=lambda n: None))

WEIGHT_OPS = tuple(OPS)
# ops whose output holds the same values as their input, maybe laid out otherwise (a weight seen through them is
# still that weight: quantized at its initializer, its channel axes mapped back through them)
VALUE_PRESERVING = ("Identity", "Cast", "Transpose", "Unsqueeze", "Reshape", "Squeeze")
# ops that scale a weight on its way to its op (equalized learning rate, modulation and demodulation of StyleGAN's
# convolutions): the weight is quantized at its initializer, the scaling stays float and runs as before
SCALING = ("Mul", "Div")
# parameters that stay float by design (normalisation and activation parameters): counted, never quantized
FLOAT_BY_DESIGN = ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
                   "PRelu")
# ops that only reshape a tensor: a BatchNormalization after them still sees the weight op's channels
SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclass(frozen=True)
class Target:
    name: str       # initializer name
    op_type: str    # consumer's op type
    role: str       # "weight" or "bias"
    axis: int       # output-channel axis of the initializer
    in_axis: int | None = None  # the weight's input-channel axis (weights only)
    x_axis: int | None = None   # the channel axis of the consumer's data input (input 0)
    group: int = 1
    consumers: int = 1          # nodes that read this initializer
    direct: bool = True         # the initializer is the op's input itself (not seen through value-preserving ops)

    @property
    def info(self) -> OpInfo:
        return OPS.get(self.op_type)


def uses(graph) -> dict[str, int]:
    """How many nodes read each tensor (a node reading it twice counts once)."""
    out: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            out[name] = out.get(name, 0) + 1
    return out


def consumers(graph) -> dict[str, list]:
    """tensor name -> the nodes that read it, in graph order."""
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _const(graph, name: str, inits: dict):
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(attr(n, "value", None))
    return None


def _step_back(graph, node, shape_in: list, inits: dict, via: str = "", ranks: dict | None = None,
               ranks_shape: dict | None = None):
    """(output shape, map output axis -> input axis or None) of one value-preserving or scaling node on an input of
    shape_in (`via`: the input the weight arrives on); None when ganq cannot follow it (a shape computed at run
    time). ranks / ranks_shape: inferred ranks and shapes of tensors (onnx shape inference), where known."""
    d = len(shape_in)
    if node.op_type in ("Identity", "Cast"):
        return list(shape_in), (lambda a: a)
    if node.op_type == "Transpose":
        perm = list(attr(node, "perm", list(range(d))[::-1]))
        return [shape_in[p] for p in perm], (lambda a: perm[a])
    if node.op_type == "Unsqueeze":
        axes = attr(node, "axes", None)
        if axes is None:
            c = _const(graph, node.input[1], inits) if len(node.input) > 1 else None
            if c is None:
                return None
            axes = [int(v) for v in np.ravel(c)]
        n_out = d + len(axes)
        axes = sorted(a % n_out for a in axes)
        out, src = [], []
        it = iter(range(d))
        for a in range(n_out):
            if a in axes:
                out.append(1)
                src.append(None)
            else:
                i = next(it)
                out.append(shape_in[i])
                src.append(i)
        return out, (lambda a: src[a])
    if node.op_type == "Squeeze":
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1:
            c = _const(graph, node.input[1], inits)
            if c is None:
                return None
            axes = [int(v) for v in np.ravel(c)]
        axes = sorted(a % d for a in axes) if axes is not None else [i for i, v in enumerate(shape_in) if v == 1]
        src = [i for i in range(d) if i not in axes]
        return [shape_in[i] for i in src], (lambda a: src[a])
    if node.op_type in SCALING:  # broadcast: axes align from the right
        other = node.input[1] if node.input[0] == via else node.input[0]
        rank = ranks.get(node.output[0]) if ranks else None
        c = _const(graph, other, inits)
        if rank is None and c is not None:
            rank = max(d, c.ndim)
        if rank is None:
            return None
        out = ranks_shape.get(node.output[0]) if ranks_shape else None
        if out is None and c is not None:
            try:
                out = list(np.broadcast_shapes(tuple(shape_in), c.shape))
            except ValueError:
                return None
        if out is None:
            out = [None] * (rank - d) + list(shape_in)
        lead = rank - d
        return list(out), (lambda a: a - lead if a - lead >= 0 else None)
    if node.op_type == "Reshape":
        if any(v is None for v in shape_in):
            return None
        c = _const(graph, node.input[1], inits)
        if c is None:
            return None
        target = [int(v) for v in np.ravel(c)]
        total = int(np.prod(shape_in, dtype=np.int64))
        out = [shape_in[i] if v == 0 and not attr(node, "allowzero", 0) else v for i, v in enumerate(target)]
        if out.count(-1) == 1:
            known = int(np.prod([v for v in out if v != -1], dtype=np.int64))
            out[out.index(-1)] = total // known if known else 0
        if int(np.prod(out, dtype=np.int64)) != total:
            return None

        def back(a):  # the input axis holding the same channels: same extent, same product of the axes before it
            before = int(np.prod(out[:a], dtype=np.int64))
            for i in range(d):
                if shape_in[i] == out[a] and int(np.prod(shape_in[:i], dtype=np.int64)) == before:
                    return i
            return None
        return out, back
    return None


def inferred_shapes(model) -> tuple[dict, dict]:
    """(tensor -> rank, tensor -> dims with None for symbolic) from onnx shape inference (empty where it fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shape inference raises InferenceError and C++ errors on unusual graphs
        return {}, {}
    ranks, shapes = {}, {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            ranks[vi.name] = len(dims)
            shapes[vi.name] = dims
    return ranks, shapes


def source_initializer(graph, name: str, inits: dict, producers: dict | None = None, shapes=None):
    """(initializer name, map consumer-side axis -> initializer axis, the consumer-side rank, how: "direct",
    "through" value-preserving ops, or "scaled" by Mul/Div) for tensor `name` when it holds an initializer's values
    through value-preserving ops, or those values scaled; None otherwise. The map gives None for an axis ganq cannot
    follow back (no counterpart in the initializer, or a shape computed at run time)."""
    producers = producers if producers is not None else {o: n for n in graph.node for o in n.output}
    ranks, dims = shapes if shapes is not None else ({}, {})
    chain = []  # (node, the input the weight arrives on)
    seen = set()
    start = name
    while name not in inits:
        node = producers.get(name)
        if node is None or name in seen or not node.input:
            return None
        seen.add(name)
        if node.op_type in VALUE_PRESERVING:
            via = node.input[0]
        elif node.op_type in SCALING:
            via = None
            for cand in (node.input[:2] if node.op_type == "Mul" else node.input[:1]):
                found = source_initializer(graph, cand, inits, producers, shapes)
                if found is not None and len(inits[found[0]].dims) >= 2:
                    via = cand
                    break
            if via is None:
                return None
        else:
            return None
        chain.append((node, via))
        name = via
    shape = list(inits[name].dims)
    maps = []
    lost = False
    for node, via in reversed(chain):
        step = _step_back(graph, node, shape, inits, via, ranks, dims) if not lost else None
        if step is None:
            lost = True
            shape = dims.get(node.output[0], shape)
            continue
        shape, back = step
        maps.append(back)
    how = "direct" if not chain else ("scaled" if any(n.op_type in SCALING for n, _ in chain) else "through")

    def to_source(a):
        if lost:
            return None
        for back in reversed(maps):
            if a is None:
                return None
            a = back(a)
        return a
    rank = ranks.get(start, len(shape)) if chain else len(shape)
    return name, to_source, rank, how


def fallback_axis(info: "OpInfo", node, dims: list[int]) -> int:
    """The output-channel axis of an initializer whose way to its op ganq cannot follow axis by axis (a modulated
    weight, reshaped at run time): the op's own convention where the initializer has the op's rank, else its first
    axis longer than 1 (StyleGAN's [1, O, I, k, k])."""
    rank = {"Conv": 4, "ConvTranspose": 4, "Gemm": 2}.get(node.op_type)
    if rank is not None and len(dims) == rank:
        return info.out_axis(node, rank)
    return next((i for i, d in enumerate(dims) if d > 1), 0)


def weight_nodes(graph):
    """(node, OpInfo) for every node of a weight op type, in graph order."""
    for node in graph.node:
        if node.op_type in OPS:
            yield node, OPS.get(node.op_type)


def find_targets(model: onnx.ModelProto, include_bias: bool = False, granularity: str = "tensor") -> list[Target]:
    """Float32 initializers feeding the weight input (and, with include_bias, the bias input) of weight ops:
    directly, through value-preserving ops, or scaled on the way (SCALING)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    overridable = {i.name for i in graph.input}  # an initializer that is also a graph input may be fed at run time
    targets: dict[str, Target] = {}
    counts = uses(graph)
    producers = {o: n for n in graph.node for o in n.output}
    direct_only = all(n.input[i] in inits for n, info in weight_nodes(graph) for i in [info.weight]
                      if len(n.input) > i)
    shapes = ({}, {}) if direct_only else inferred_shapes(model)
    for node, info in weight_nodes(graph):
        slots = [(info.weight, "weight")] + ([(info.bias, "bias")] if include_bias and info.bias is not None else [])
        for idx, role in slots:
            if len(node.input) <= idx:
                continue
            found = source_initializer(graph, node.input[idx], inits, producers, shapes)
            if found is None or found[0] in overridable:
                continue
            name, to_source, ndim, how = found  # ndim: the rank the consumer sees
            init = inits[name]
            if init.data_type != TensorProto.FLOAT or len(init.dims) == 0:
                continue
            if role == "weight":
                if ndim < info.min_weight_rank or (how == "scaled" and len(init.dims) < 2):
                    continue
                if node.op_type == "ConvTranspose" and info.grouped(node) != 1 and granularity == "channel" \
                        and how == "direct":
                    raise GanqError(f"{node.name or init.name}: grouped ConvTranspose (group={info.grouped(node)}) "
                                    "is not supported per channel; use --granularity tensor")
                axis = to_source(info.out_axis(node, ndim))
                in_axis, x_axis = info.in_axes(node, ndim)
                in_axis = to_source(in_axis % ndim) if in_axis is not None else None
                if node.op_type == "Gather" and axis is not None and init.dims[axis] == 1:
                    axis = fallback_axis(info, node, list(init.dims))  # weight[0]: one slice taken, not rows
                if axis is None:
                    if how == "through":
                        continue  # its output channels have no axis in the initializer: ganq leaves it float
                    axis, in_axis = fallback_axis(info, node, list(init.dims)), None
            else:
                axis, in_axis, x_axis = 0, None, None
            if name in targets and targets[name].axis != axis:
                if granularity == "channel":
                    raise GanqError(f"initializer {name} feeds weight ops along different channel axes; "
                                    "use --granularity tensor")
                continue
            targets.setdefault(name, Target(name, node.op_type, role, axis, in_axis, x_axis,
                                            info.grouped(node), counts.get(name, 1), name == node.input[idx]))
    return list(targets.values())


def weight_params(model: onnx.ModelProto) -> dict[str, int]:
    """The weight parameters of a float model, name -> size: every float initializer of rank >= 2 that a weight op's
    weight input is computed from (through any ops), except what normalisation and activation ops read
    (FLOAT_BY_DESIGN). The denominator of the report's weight share; a learned constant input (StyleGAN's) is an
    activation, not a weight, and is not counted."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    by_design = {i for n in graph.node if n.op_type in FLOAT_BY_DESIGN for i in n.input}
    seen, out = set(), {}
    stack = [n.input[info.weight] for n, info in weight_nodes(graph) if len(n.input) > info.weight
             and (n.op_type != "Gather" or source_initializer(graph, n.input[0], inits, producers) is not None)]
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in inits:
            i = inits[t]
            if i.data_type == TensorProto.FLOAT and len(i.dims) >= 2 and t not in by_design:
                out[t] = int(np.prod(i.dims, dtype=np.int64))
            continue
        node = producers.get(t)
        if node is not None:
            stack.extend(node.input)
    return out


def count_weights(model: onnx.ModelProto) -> int:
    """How many weight tensors ganq would quantize in model."""
    return sum(1 for t in find_targets(model) if t.role == "weight")


def following_batchnorm(graph, node):
    """The BatchNormalization that consumes `node`'s output (through shape-only ops), or None."""
    readers = consumers(graph)
    out = node.output[0]
    outputs = {o.name for o in graph.output}
    while True:
        users = readers.get(out, [])
        if len(users) != 1 or out in outputs:
            return None
        (u,) = users
        if u.op_type == "BatchNormalization" and u.input[0] == out:
            return u
        if u.op_type in SHAPE_OPS and u.input[0] == out:
            out = u.output[0]
            continue
        return None


# ops between a weight layer and its BatchNormalization that commute with a per-channel affine map y = a x + c:
# identities, and Resize (every mode's interpolation weights sum to 1, so it maps a x + c to a Resize(x) + c), keeping
# the channel axis; shape ops that split [N, C] into [N, C', ...] (each C' channel a block of C / C' weight channels)
COMMUTING = ("Identity", "Dropout", "Resize", "Upsample")


def batchnorm_through(graph, node, shapes=None):
    """(the BatchNormalization that alone reads `node`'s output, directly or through ops that commute with a
    per-channel affine map (COMMUTING, and shape ops that keep or split the channel axis), the number R of the
    weight's output channels in each of its channels: weight channel j is BatchNorm channel j // R), or (None, why).
    shapes: a callable giving tensor -> dims (ops.inferred_shapes), called only where a shape op lies between."""
    readers = consumers(graph)
    out, r = node.output[0], 1
    outputs = {o.name for o in graph.output}
    while True:
        users = readers.get(out, [])
        if len(users) != 1 or out in outputs:
            return None, "its output is read by several nodes" if len(users) > 1 else ""
        (u,) = users
        if u.input[0] != out:
            return None, ""
        if u.op_type == "BatchNormalization":
            return u, r
        if u.op_type in COMMUTING:
            if u.op_type == "Dropout" and len(u.input) > 2 and u.input[2]:
                return None, "a Dropout with a training_mode input"
            if u.op_type == "Resize" and attr(u, "coordinate_transformation_mode", b"half_pixel") in (
                    b"tf_crop_and_resize", "tf_crop_and_resize"):
                return None, "a Resize with tf_crop_and_resize (its extrapolation value does not commute)"
        elif u.op_type in SHAPE_OPS:
            dims = shapes() if shapes is not None else {}
            dims_in, dims_out = dims.get(out), dims.get(u.output[0])
            if not dims_in or not dims_out or None in dims_in[1:] or None in dims_out[1:] or len(dims_out) < 2:
                return None, f"the shapes around {u.op_type} {u.name or u.output[0]} are not known"
            rest_in = int(np.prod(dims_in[2:])) if len(dims_in) > 2 else 1
            rest_out = int(np.prod(dims_out[2:])) if len(dims_out) > 2 else 1
            if dims_in[1:] == dims_out[1:] or (rest_in == 1 and rest_out == 1 and dims_in[1] == dims_out[1]):
                pass  # the channel axis untouched (Identity-like, or [N, C] <-> [N, C, 1, 1])
            elif rest_in == 1 and dims_in[1] == dims_out[1] * rest_out:
                r *= rest_out  # [N, C] -> [N, C / R', ...]: each new channel a block of R' old ones
            else:
                return None, f"{u.op_type} {u.name or u.output[0]} does not keep or split the channel axis"
        else:
            return None, ""
        out = u.output[0]


def set_bias_input(node, name: str) -> None:
    """Make `name` the bias input of a weight node whose op has a bias slot."""
    slot = OPS.get(node.op_type).bias
    while len(node.input) < slot:
        node.input.append("")
    if len(node.input) == slot:
        node.input.append(name)
    else:
        node.input[slot] = name


def opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    raise GanqError("model imports no default ONNX opset")


__all__ = ["OPS", "OpInfo", "Target", "WEIGHT_OPS", "VALUE_PRESERVING", "SCALING", "FLOAT_BY_DESIGN", "SHAPE_OPS",
           "attr", "count_weights", "weight_params", "inferred_shapes", "fallback_axis",
           "find_targets", "following_batchnorm", "batchnorm_through", "COMMUTING", "opset", "set_bias_input", "source_initializer", "uses",
           "weight_nodes", "consumers"]
