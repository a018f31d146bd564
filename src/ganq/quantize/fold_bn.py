"""Fold BatchNormalization into the preceding weight op (the op table's folds_bn entries; a torch-free graph pass)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from ganq.quantize.ops import OPS, attr as _attr, set_bias_input


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
        info = OPS.get(p.op_type) if p is not None and p.op_type in OPS else None
        if info is None or not info.folds_bn or uses[p.output[0]] != 1:
            continue
        wname = p.input[info.weight]
        if any(n not in inits for n in bn.input[1:5]) or wname not in inits or uses[wname] != 1:
            continue
        if info.grouped(p) != 1 or not info.fold_ok(p):
            continue
        if info.bias is None and ranks.get(p.output[0]) != 2:  # x @ W' + b' only where the bias is per column
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = _attr(bn, "epsilon", 1e-5)
        s = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[wname]).astype(np.float64)
        axis = info.out_axis(p, w.ndim)
        if w.shape[axis] != len(s):
            continue
        shape = [1] * w.ndim
        shape[axis] = len(s)
        w = w * s.reshape(shape)
        has_bias = info.bias is not None and len(p.input) > info.bias and p.input[info.bias] != ""
        if has_bias and (p.input[info.bias] not in inits or uses[p.input[info.bias]] != 1):
            continue
        b = numpy_helper.to_array(inits[p.input[info.bias]]).astype(np.float64) if has_bias else np.zeros(len(s))
        b = (b - mean) * s + beta

        new_inits[wname] = numpy_helper.from_array(w.astype(np.float32), wname)
        bias_name = p.input[info.bias] if has_bias else f"{wname}_folded_bias"
        new_inits[bias_name] = numpy_helper.from_array(b.astype(np.float32), bias_name)
        if info.bias is None:
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
