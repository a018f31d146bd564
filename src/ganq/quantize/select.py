"""Which initializers are weights, and along which axis their output channels lie (onnxruntime's should-quantize gate)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from ganq.errors import GanqError


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


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _in_axes(node, ndim: int) -> tuple[int, int]:
    """(input-channel axis of the weight, channel axis of the data input) of a weight op."""
    if node.op_type == "Conv":
        return 1, 1
    if node.op_type == "ConvTranspose":
        return 0, 1
    if node.op_type == "Gemm":
        return (1 if _attr(node, "transB", 0) else 0), (0 if _attr(node, "transA", 0) else 1)
    return ndim - 2, -1  # MatMul


def _weight_axis(node, ndim: int) -> int:
    """Output-channel axis of a node's weight input (input 1)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1  # weight is [C_in, C_out / group, kH, kW]
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return ndim - 1  # MatMul: x @ W, W [..., K, N]


WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def find_targets(model: onnx.ModelProto, include_bias: bool = False, granularity: str = "tensor") -> list[Target]:
    """Float32 initializers feeding the weight input (and, with include_bias, the bias input) of weight ops."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    overridable = {i.name for i in graph.input}  # an initializer that is also a graph input may be fed at run time
    targets: dict[str, Target] = {}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input):
            uses[name] = uses.get(name, 0) + 1
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        slots = [(1, "weight")] + ([(2, "bias")] if include_bias and node.op_type != "MatMul" else [])
        for idx, role in slots:
            if len(node.input) <= idx or node.input[idx] not in inits or node.input[idx] in overridable:
                continue
            init = inits[node.input[idx]]
            if init.data_type != TensorProto.FLOAT or len(init.dims) == 0:
                continue
            ndim = len(init.dims)
            if role == "weight":
                if node.op_type == "MatMul" and ndim < 2:
                    continue
                if node.op_type == "ConvTranspose" and _attr(node, "group", 1) != 1 and granularity == "channel":
                    raise GanqError(f"{node.name or init.name}: grouped ConvTranspose (group="
                                    f"{_attr(node, 'group', 1)}) is not supported per channel; use --granularity tensor")
                axis = _weight_axis(node, ndim)
                in_axis, x_axis = _in_axes(node, ndim)
            else:
                axis, in_axis, x_axis = 0, None, None
            if init.name in targets and targets[init.name].axis != axis:
                raise GanqError(f"initializer {init.name} feeds weight ops along different channel axes; "
                                "use --granularity tensor")
            targets.setdefault(init.name, Target(init.name, node.op_type, role, axis, in_axis, x_axis,
                                                 int(_attr(node, "group", 1)), uses.get(init.name, 1)))
    return list(targets.values())


def opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    raise GanqError("model imports no default ONNX opset")
