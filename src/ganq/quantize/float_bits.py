"""`--float-bits 16`: every float32 initializer that is not a quantized weight (biases, BatchNorm and other
parameters, the decoders' scales, offsets and levels) stored as float16 and cast back to float32 in the graph
(onnxruntime folds the Cast when it loads the model: nothing is cast per call). The outputs are checked against
the 32-bit file's on probe inputs: their RMS difference must stay within FLOAT16_TOLERANCE of the output range's
width (the RMS and the largest difference are recorded). float16's relative error (2^-11) in a decoder's scale and
offset moves every weight of a channel the same way, so single pixels can move by ~0.2 where the RMS moves by
~0.01 (the shipped Fashion-MNIST generator at 4 bits, whose quantization error is 0.14 RMS); docs/deployment.md
has its FID both ways.

`--float-bits 8`: the biases and other parameters (not the decoders) as int8 per tensor with their own float32
scale, max|x| / 127, behind a DequantizeLinear (folded at load, like the weights' decoders); the decoders' scales,
offsets and levels as float16 (8 bits there would move whole channels). The same output check applies.

Per tensor (`--float-tensor-bits NAME=B`, or the plan file's "floats": {NAME: B}): NAME a float initializer (a bias,
a BatchNorm parameter...) at 32, 16 or 8 bits, or a quantized weight, meaning its decoder's parameters, at 32 or 16;
the others at --float-bits (widths())."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ganq.errors import GanqError

FLOAT_BITS_CHOICES = (32, 16, 8)
INT8_MIN_SIZE = 8   # smaller tensors stay float16: an int8 copy plus its scale would not be smaller
FLOAT16_TOLERANCE = 0.02   # RMS output difference against 32-bit floats, as a share of the output range's width
F16_MAX = 65504.0


def check_names(model: onnx.ModelProto, overrides, weights: set[str]) -> None:
    """Each per-tensor float width names a float initializer of the model or one of its quantized weights (before
    any work: one line otherwise)."""
    floats = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    for name, bits in overrides:
        if name in weights:
            if bits == 8:
                raise GanqError(f"--float-tensor-bits {name}=8: a weight's decoder takes 32 or 16 bits (8 would move "
                                "whole channels)")
        elif name not in floats:
            raise GanqError(f"--float-tensor-bits {name}: not a float initializer or a quantized weight of the model")


def widths(model: onnx.ModelProto, default: int, overrides, decoders: set[str], decoders_of: dict[str, set[str]],
           keep: set[str]) -> dict[str, int]:
    """Every float32 initializer not in `keep` -> the bits it is stored at: `default` (the decoders' parameters,
    `decoders`, at 16 where it is 8), then the overrides in order (a weight's name sets its decoder's parameters,
    decoders_of[weight])."""
    out = {i.name: (16 if default == 8 and i.name in decoders else default) for i in model.graph.initializer
           if i.data_type == TensorProto.FLOAT and i.name not in keep}
    for name, bits in overrides:
        for target in (decoders_of[name] if name in decoders_of else {name}):
            if target in out:
                out[target] = bits
    return out


def to_float16(model: onnx.ModelProto, keep: set[str], int8: set[str] | None = None) -> int:
    """Store the float32 initializers not in `keep` as float16 behind a Cast, in place; returns how many. A
    tensor whose values float16 cannot hold (beyond 65504) stays float32. int8: names stored as int8 per tensor
    behind a DequantizeLinear instead (--float-bits 8; those of fewer than INT8_MIN_SIZE values stay float16)."""
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    casts, kept = [], []
    n = 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in keep or init.name in graph_inputs:
            kept.append(init)
            continue
        x = numpy_helper.to_array(init)
        if x.size == 0 or not np.all(np.isfinite(x)) or np.abs(x).max() > F16_MAX:
            kept.append(init)
            continue
        if int8 is not None and init.name in int8 and x.size >= INT8_MIN_SIZE:
            top = float(np.abs(x).max())
            scale = np.float32(top / 127 if top > 0 else 1.0)
            q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
            qn, sn = init.name + "_i8", init.name + "_i8_scale"
            kept += [numpy_helper.from_array(q, qn), numpy_helper.from_array(np.array(scale, np.float32), sn)]
            casts.append(helper.make_node("DequantizeLinear", [qn, sn], [init.name], name=qn + "_dq"))
            n += 1
            continue
        half = init.name + "_f16"
        kept.append(numpy_helper.from_array(x.astype(np.float16), half))
        casts.append(helper.make_node("Cast", [half], [init.name], name=half + "_cast", to=TensorProto.FLOAT))
        n += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return n


def check_float16(before: onnx.ModelProto, after: onnx.ModelProto, bits: int = 16) -> dict:
    """{rms, max_abs}: the output difference of the float16 file against the 32-bit one on probe inputs (the
    spec's, else random ones); one GanqError when the RMS exceeds FLOAT16_TOLERANCE of the output range."""
    from ganq.onnx_io import META_SPEC, fixed_batch, probe_inputs, random_feed, read_metadata, read_spec, run

    width = 2.0
    if META_SPEC in read_metadata(before):
        spec = read_spec(before)
        feed = probe_inputs(spec, fixed_batch(before, spec) or 64)
        width = spec.output_range[1] - spec.output_range[0]
    else:
        feed = random_feed(before)
        if feed is None:
            return {"rms": None, "max_abs": None}
    a, b = run(before, feed), run(after, feed)
    d = np.concatenate([(x.astype(np.float64) - y).ravel() for x, y in zip(a, b)])
    rms, top = float(np.sqrt(np.mean(d * d))) if d.size else 0.0, float(np.abs(d).max()) if d.size else 0.0
    if not rms <= FLOAT16_TOLERANCE * width:
        raise GanqError(f"--float-bits {bits} changes the outputs by {rms:.3g} RMS (more than {FLOAT16_TOLERANCE:.0%} "
                        f"of the output range); keep --float-bits {32 if bits == 16 else '16 or 32'}")
    return {"rms": rms, "max_abs": top}
