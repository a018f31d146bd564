"""Corrections after a weight is quantized, seen through calibration latents: BatchNorm re-estimation and bias
correction (--recalibrate-bn). They read the op table for the bias slot and factor of each op."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ganq.quantize.decoders import rows as as_rows
from ganq.quantize.edit import GraphEdit
from ganq.quantize.ops import OPS, following_batchnorm, set_bias_input, uses as count_uses


def _change(old: np.ndarray, new: np.ndarray) -> float:
    return float(np.max(np.abs(new.astype(np.float64) - old.astype(np.float64)))) if old.size else 0.0


def correct(edit: GraphEdit, node, t, w, w_hat, stats, calib, notes) -> list[dict]:
    """After weight t is quantized: re-estimate the BatchNormalization after its node from the calibration latents
    through the quantized graph, or else correct the node's bias, b <- b - E[(W~ - W) x] (scaled by the op's bias
    factor, the op table's bias_scale). Applied at once (the next layers calibrate on it); returns what changed."""
    graph, inits = edit.graph, edit.initializers
    uses = count_uses(graph)
    bn = following_batchnorm(graph, node)
    if bn is not None:
        names = [bn.input[3], bn.input[4]] if len(bn.input) >= 5 else []
        if len(names) != 2 or any(n not in inits or uses.get(n, 0) != 1 for n in names):
            notes.append(f"{t.name}: BatchNormalization {bn.name} not re-estimated (its statistics are not "
                         "initializers of its own)")
            return []
        mean, var = calib.channel_moments(bn.input[0])
        out = []
        for name, new, kind in zip(names, (mean, var), ("bn_mean", "bn_var")):
            old = numpy_helper.to_array(inits[name])
            new32 = new.astype(np.float32).reshape(old.shape)
            edit.set_init(name, new32)
            out.append({"tensor": name, "kind": kind, "node": bn.name, "max_abs_change": _change(old, new32)})
        return out
    if stats is None:
        return []
    delta = (as_rows(w_hat, t.axis).astype(np.float64) - as_rows(w, t.axis).astype(np.float64)) @ stats.mean
    info = OPS.get(node.op_type)
    if info.bias is None:  # no bias input: an Add after the node
        name = edit.fresh(f"{t.name}_bias_correction")
        mid = edit.fresh(f"{node.output[0]}_uncorrected")
        b = (-delta).astype(np.float32)
        edit.add_init(name, b, fresh=False)
        add = onnx.helper.make_node("Add", [mid, name], [node.output[0]], name=edit.fresh(f"{name}_add"))
        node.output[0] = mid
        edit.insert_after(node, add)
        return [{"tensor": name, "kind": "bias_added", "node": add.name, "max_abs_change": _change(b * 0, b)}]
    beta = info.bias_scale(node)
    if beta == 0:
        notes.append(f"{t.name}: {node.op_type} with beta 0, bias not corrected")
        return []
    if len(node.input) > info.bias and node.input[info.bias]:
        name = node.input[info.bias]
        if name not in inits or uses.get(name, 0) != 1:
            notes.append(f"{t.name}: bias {name} is not an initializer of this node alone; not corrected")
            return []
        old = numpy_helper.to_array(inits[name])
        if old.size != delta.size:
            notes.append(f"{t.name}: bias {name} has shape {list(old.shape)}, not one value per output channel; "
                         "not corrected")
            return []
        new = (old.astype(np.float64) - (delta / beta).reshape(old.shape)).astype(np.float32)
        edit.set_init(name, new)
        return [{"tensor": name, "kind": "bias", "node": node.name, "max_abs_change": _change(old, new)}]
    new = (-delta / beta).astype(np.float32)
    name = edit.add_init(f"{t.name}_bias", new)
    set_bias_input(node, name)
    return [{"tensor": name, "kind": "bias_added", "node": node.name, "max_abs_change": _change(new * 0, new)}]
