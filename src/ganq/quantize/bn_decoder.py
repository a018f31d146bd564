"""BatchNorm folded into a quantized layer's decoder (after quantization, exactly): a BatchNormalization right
after a weight layer quantized per output channel is y = a * (W_hat x + b) + c per channel, with a = gamma /
sqrt(var + eps) and c = beta - a * mean. So the decoder's per-channel scale and offset (or a codebook's levels) are
multiplied by a, the bias becomes a * b + c, and the BatchNorm and its four parameter tensors leave the file. The
codes do not change (unlike `--fold-bn`, which folds before quantizing and so quantizes other weights).

Where it applies: per-channel and group solutions (granularity channel or group:G) of ops the op table marks foldable (OpInfo.folds_bn
and fold_ok), whose output the BatchNormalization alone reads, directly; its channels are the weight's output
channels; its parameters are initializers. Anything else is left as it is, with one note."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import numpy_helper

from ganq.quantize.decoders import Affine, Codebook, Solution, channel_shape
from ganq.quantize.ops import OPS, attr, following_batchnorm


def fold_into_decoder(edit, node, t, sol: Solution, notes: list[str]) -> Solution:
    """sol with the following BatchNormalization folded into its decoder, the node's bias and the BatchNorm's
    removal staged in `edit` (committed with the rest); sol unchanged (and a note) where it does not apply."""
    bn = following_batchnorm(edit.graph, node)
    if bn is None or bn.input[0] != node.output[0]:  # read directly, not through shape ops
        return sol
    info = OPS.get(node.op_type)

    def skip(why):
        notes.append(f"{t.name}: BatchNormalization {bn.name or bn.output[0]} not folded into its decoder ({why})")
        return sol
    if sol.axis is None:
        return skip("the weight is quantized per tensor; --granularity channel folds it")
    if sol.split or not info.folds_bn or not info.fold_ok(node) or info.grouped(node) != 1:
        return skip(f"{node.op_type} with these attributes does not fold")
    if attr(bn, "training_mode", 0):
        return skip("training mode")
    inits = edit.initializers
    params = bn.input[1:5]
    if len(params) != 4 or any(p not in inits for p in params):
        return skip("its parameters are not initializers")
    gamma, beta, mean, var = (numpy_helper.to_array(inits[p]).astype(np.float64) for p in params)
    channels = sol.codes.shape[sol.axis]
    if gamma.shape != (channels,):
        return skip(f"it has {gamma.size} channels, the weight {channels}")
    eps = float(attr(bn, "epsilon", 1e-5))
    a = gamma / np.sqrt(var + eps)
    c = beta - a * mean
    # per channel: keepdims along the axis; group:G: the compact row form [C, ng] (levels [C * ng, L])
    shape = (channels, 1) if sol.group else channel_shape(sol.codes.ndim, sol.axis, channels)
    dec = sol.decoder
    if isinstance(dec, Affine):
        ab = a.reshape(shape)
        dec = Affine((dec.scale * ab).astype(np.float32), (dec.offset * ab).astype(np.float32), dec.zero_point)
    elif isinstance(dec, Codebook):
        dec = Codebook((dec.levels * np.repeat(a, sol.groups)[:, None]).astype(np.float32))
    else:
        return skip(f"a {dec.kind} decoder")
    beta_gemm = info.bias_scale(node) or 1.0
    b = np.zeros(channels)
    if info.bias is not None and len(node.input) > info.bias and node.input[info.bias]:
        if node.input[info.bias] not in inits:
            return skip("its layer's bias is not an initializer")
        b = numpy_helper.to_array(inits[node.input[info.bias]]).astype(np.float64).reshape(-1)
        if b.size != channels:
            return skip("its layer's bias is broadcast")
    new_bias = (a * b + c / beta_gemm).astype(np.float32)
    edit.fold_batchnorm(node, bn, new_bias, params)
    notes.append(f"{t.name}: BatchNormalization {bn.name or bn.output[0]} folded into its decoder and bias")
    return replace(sol, decoder=dec)
