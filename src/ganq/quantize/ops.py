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

WEIGHT_OPS = tuple(OPS)
# ops whose output holds the same values as their input, maybe laid out otherwise (a weight seen through them is
# still that weight: quantized at its initializer, its channel axes mapped back through them)
VALUE_PRESERVING = ("Identity", "Cast", "Transpose", "Unsqueeze", "Reshape")
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


def _step_back(graph, node, shape_in: list[int], inits: dict):
    """(output shape, map output axis -> input axis or None) of one value-preserving node on an input of
    shape_in; None when ganq cannot follow it (a shape computed at run time)."""
    import numpy as np

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
    if node.op_type == "Reshape":
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


def source_initializer(graph, name: str, inits: dict, producers: dict | None = None):
    """(initializer name, map consumer-side axis -> initializer axis) for tensor `name` when it holds an
    initializer's values through value-preserving ops; None otherwise. The map gives None for an axis that has no
    counterpart in the initializer."""
    producers = producers if producers is not None else {o: n for n in graph.node for o in n.output}
    chain = []
    seen = set()
    while name not in inits:
        node = producers.get(name)
        if node is None or node.op_type not in VALUE_PRESERVING or name in seen or not node.input:
            return None
        seen.add(name)
        chain.append(node)
        name = node.input[0]
    shape = list(inits[name].dims)
    maps = []
    for node in reversed(chain):
        step = _step_back(graph, node, shape, inits)
        if step is None:
            return None
        shape, back = step
        maps.append(back)

    def to_source(a):
        for back in reversed(maps):
            if a is None:
                return None
            a = back(a)
        return a
    return name, to_source, len(shape)


def weight_nodes(graph):
    """(node, OpInfo) for every node of a weight op type, in graph order."""
    for node in graph.node:
        if node.op_type in OPS:
            yield node, OPS.get(node.op_type)


def find_targets(model: onnx.ModelProto, include_bias: bool = False, granularity: str = "tensor") -> list[Target]:
    """Float32 initializers feeding the weight input (and, with include_bias, the bias input) of weight ops."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    overridable = {i.name for i in graph.input}  # an initializer that is also a graph input may be fed at run time
    targets: dict[str, Target] = {}
    counts = uses(graph)
    producers = {o: n for n in graph.node for o in n.output}
    for node, info in weight_nodes(graph):
        slots = [(info.weight, "weight")] + ([(info.bias, "bias")] if include_bias and info.bias is not None else [])
        for idx, role in slots:
            if len(node.input) <= idx:
                continue
            found = source_initializer(graph, node.input[idx], inits, producers)
            if found is None or found[0] in overridable:
                continue
            name, to_source, ndim = found  # ndim: the rank the consumer sees
            init = inits[name]
            if init.data_type != TensorProto.FLOAT or len(init.dims) == 0:
                continue
            if role == "weight":
                if ndim < info.min_weight_rank:
                    continue
                if node.op_type == "ConvTranspose" and info.grouped(node) != 1 and granularity == "channel":
                    raise GanqError(f"{node.name or init.name}: grouped ConvTranspose (group={info.grouped(node)}) "
                                    "is not supported per channel; use --granularity tensor")
                axis = to_source(info.out_axis(node, ndim))
                in_axis, x_axis = info.in_axes(node, ndim)
                in_axis = to_source(in_axis % ndim)
                if axis is None:
                    continue  # its output channels have no axis in the initializer: ganq leaves it float
            else:
                axis, in_axis, x_axis = 0, None, None
            if name in targets and targets[name].axis != axis and granularity == "channel":
                raise GanqError(f"initializer {name} feeds weight ops along different channel axes; "
                                "use --granularity tensor")
            targets.setdefault(name, Target(name, node.op_type, role, axis, in_axis, x_axis,
                                            info.grouped(node), counts.get(name, 1), name == node.input[idx]))
    return list(targets.values())


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


__all__ = ["OPS", "OpInfo", "Target", "WEIGHT_OPS", "VALUE_PRESERVING", "SHAPE_OPS", "attr", "count_weights",
           "find_targets", "following_batchnorm", "opset", "set_bias_input", "source_initializer", "uses",
           "weight_nodes", "consumers"]
