"""Fold BatchNormalization into the preceding Conv, ConvTranspose, Gemm or MatMul (a torch-free graph pass)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from ganq.quantize.select import _attr


def set_bias_input(node, name: str) -> None:
    """Make `name` the bias input (input 2) of a Conv / ConvTranspose / Gemm node."""
    while len(node.input) < 2:
        node.input.append("")
    if len(node.input) == 2:
        node.input.append(name)
    else:
        node.input[2] = name


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of model with each foldable BatchNormalization folded; returns (model, number folded).

    Foldable: inference-mode BN whose input comes from exactly one weight op with initializer weights, that op's
    output feeding nothing else, the weights used by that op only; ungrouped convolutions; Gemm with alpha = beta = 1.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses = Counter(name for n in graph.node for name in n.input)
    uses.update(o.name for o in graph.output)
    producer = {o: n for n in graph.node for o in n.output}
    ranks = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.type.tensor_type.HasField("shape"):
                ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    except Exception:  # shape inference is only needed to check MatMul's output rank
        pass

    folded, remove, new_inits = 0, [], {}
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or _attr(bn, "training_mode", 0) or len(bn.output) != 1:
            continue
        p = producer.get(bn.input[0])
        if p is None or p.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or uses[p.output[0]] != 1:
            continue
        if any(n not in inits for n in bn.input[1:5]) or p.input[1] not in inits or uses[p.input[1]] != 1:
            continue
        if _attr(p, "group", 1) != 1:
            continue
        if p.op_type == "Gemm" and (_attr(p, "alpha", 1.0) != 1.0 or _attr(p, "beta", 1.0) != 1.0):
            continue
        if p.op_type == "MatMul" and ranks.get(p.output[0]) != 2:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = _attr(bn, "epsilon", 1e-5)
        s = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[p.input[1]]).astype(np.float64)
        axis = {"Conv": 0, "ConvTranspose": 1, "MatMul": w.ndim - 1}.get(p.op_type)
        if p.op_type == "Gemm":
            axis = 0 if _attr(p, "transB", 0) else 1
        if w.shape[axis] != len(s):
            continue
        shape = [1] * w.ndim
        shape[axis] = len(s)
        w = w * s.reshape(shape)
        has_bias = p.op_type != "MatMul" and len(p.input) > 2 and p.input[2] != ""
        if has_bias and (p.input[2] not in inits or uses[p.input[2]] != 1):
            continue
        b = numpy_helper.to_array(inits[p.input[2]]).astype(np.float64) if has_bias else np.zeros(len(s))
        b = (b - mean) * s + beta

        new_inits[p.input[1]] = numpy_helper.from_array(w.astype(np.float32), p.input[1])
        bias_name = p.input[2] if has_bias else f"{p.input[1]}_folded_bias"
        new_inits[bias_name] = numpy_helper.from_array(b.astype(np.float32), bias_name)
        if p.op_type == "MatMul":
            # x @ W' + b': the BN node becomes the Add
            bn.op_type, bn.domain = "Add", ""
            del bn.input[:]
            bn.input.extend([p.output[0], bias_name])
            del bn.attribute[:]
        else:
            if not has_bias:
                set_bias_input(p, bias_name)
            p.output[0] = bn.output[0]
            remove.append(bn)
        folded += 1

    for n in remove:
        graph.node.remove(n)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used and i.name not in new_inits]
    del graph.initializer[:]
    graph.initializer.extend(kept + [t for name, t in new_inits.items() if name in used])
    return model, folded
