"""ocs: outlier channel splitting (Zhao, Hu, Dotzel, De Sa, Zhang 2019, "Improving Neural Network Quantization
without Retraining using Outlier Channel Splitting").

Repeatedly take the input channel that holds the largest |w| and split it in two halves: w -> (w/2, w/2), the layer's
input channel duplicated in the graph (Gather + Concat before the layer), so that W' x' = W x exactly while the
weight range shrinks. ceil(ratio * C_in) splits; then the expanded weight is quantized with min-max. The extra
weights cost bytes: the report shows them (params against the original).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ganq.errors import GanqError
from ganq.quantize.methods import Method, option, prepare, register
from ganq.quantize.methods.minmax import MinMax


def split_channels(w: np.ndarray, in_axis: int, n_split: int) -> tuple[np.ndarray, list[int]]:
    """(expanded weight, the original input channel each new channel repeats)."""
    cols = np.moveaxis(w, in_axis, 0).reshape(w.shape[in_axis], -1).astype(np.float32)
    cols = list(cols)
    source = list(range(len(cols)))
    peak = [float(np.abs(c).max()) for c in cols]
    for _ in range(n_split):
        j = int(np.argmax(peak))
        half = cols[j] * np.float32(0.5)  # exact in float32 (barring subnormals)
        cols[j] = half
        cols.append(half.copy())
        source.append(source[j])
        peak[j] /= 2
        peak.append(peak[j])
    moved = (len(cols),) + tuple(s for i, s in enumerate(w.shape) if i != in_axis)
    return np.moveaxis(np.stack(cols).reshape(moved), 0, in_axis), source[w.shape[in_axis]:]


@register
@dataclass(frozen=True)
class OCS(Method):
    name = "ocs"
    summary = "outlier channel splitting: halve the largest input channels (ratio=0.05), duplicating their inputs"
    paper = "Zhao et al. 2019, Improving Neural Network Quantization without Retraining using Outlier Channel Splitting"
    ratio: float = option(0.05, 0, 1, lo_open=True)
    rewrites_input: ClassVar[bool] = True
    conflicts: ClassVar[dict] = {"recalibrate_bn": "it changes the layers' input shapes"}

    def rewrite(self, edit, node, target, sol) -> list:
        """Nodes that feed `node` its data input with sol.split's channels repeated (Gather + Concat)."""
        from onnx import helper

        x = node.input[0]
        idx = edit.init(f"{target.name}_split", np.array(sol.split, np.int64))
        gathered = edit.fresh(f"{target.name}_xdup")
        cat = edit.fresh(f"{target.name}_xsplit")
        nodes = [helper.make_node("Gather", [x, idx], [gathered], name=gathered, axis=target.x_axis),
                 helper.make_node("Concat", [x, gathered], [cat], name=cat, axis=target.x_axis)]
        node.input[0] = cat
        return nodes

    def solve(self, x, bits, axis, ctx=None):
        self.check_bits(bits)
        x, axis, _ = prepare(x, axis)
        if ctx is None or ctx.in_axis is None:
            raise GanqError("method ocs needs the layer's input-channel axis (a weight of Conv, ConvTranspose, Gemm "
                            "or MatMul)")
        if ctx.group != 1:
            raise GanqError(f"method ocs: {ctx.name} is a grouped {ctx.op_type} (group={ctx.group}); not supported")
        in_axis = ctx.in_axis % x.ndim
        n_split = math.ceil(self.ratio * x.shape[in_axis])
        w, split = split_channels(x, in_axis, n_split)
        sol = MinMax().solve(w, bits, axis)
        return replace(sol, split=tuple(split), in_axis=in_axis,
                       info={"splits": len(split), "extra_params": int(w.size - x.size)})
