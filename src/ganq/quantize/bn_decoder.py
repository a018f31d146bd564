"""BatchNorm folded into a quantized layer's decoder (after quantization, exactly): a BatchNormalization right
after a weight layer quantized per output channel is y = a * (W_hat x + b) + c per channel, with a = gamma /
sqrt(var + eps) and c = beta - a * mean. So the decoder's per-channel scale and offset (or a codebook's levels) are
multiplied by a, the bias becomes a * b + c, and the BatchNorm and its four parameter tensors leave the file. The
codes do not change (unlike `--fold-bn`, which folds before quantizing and so quantizes other weights).

Where it applies: per-channel and group solutions (granularity channel or group:G) of ops the op table marks foldable
(OpInfo.folds_bn and fold_ok), whose output the BatchNormalization alone reads, directly or through ops that commute
with a per-channel affine map (ops.batchnorm_through: Identity, Dropout, Resize, and shape ops that keep the channel
axis or split [N, C] into [N, C / R, ...], as a Linear projection reshaped into feature maps before a BatchNorm2d:
weight channel j then takes BatchNorm channel j // R); its parameters are initializers. Anything else is left as it
is, with one note."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import numpy_helper

from ganq.quantize.decoders import Affine, Codebook, Solution, channel_shape
from ganq.quantize.ops import OPS, attr, batchnorm_through


def fold_into_decoder(edit, node, t, sol: Solution, notes: list[str], shapes=None) -> Solution:
    """sol with the following BatchNormalization folded into its decoder, the node's bias and the BatchNorm's
    removal staged in `edit` (committed with the rest); sol unchanged (and a note) where it does not apply.
    shapes: a callable giving tensor -> dims (ops.inferred_shapes), asked only where it is needed."""
    bn, r = batchnorm_through(edit.graph, node, shapes)
    if bn is None:
        if r:
            notes.append(f"{t.name}: the BatchNormalization after it not folded into its decoder ({r})")
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
    if gamma.ndim != 1 or gamma.size * r != channels:
        return skip(f"it has {gamma.size} channels, the weight {channels}" + (f" in blocks of {r}" if r > 1 else ""))
    eps = float(attr(bn, "epsilon", 1e-5))
    a_bn = gamma / np.sqrt(var + eps)
    c_bn = beta - a_bn * mean
    a, c = np.repeat(a_bn, r), np.repeat(c_bn, r)  # per weight channel: channel j takes BatchNorm channel j // r
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
    # an op without a bias slot (MatMul) keeps an Add of the shift where the BatchNorm was, in its layout
    rank = 2
    if info.bias is None and bn.input[0] != node.output[0] and shapes is not None:
        rank = len(shapes().get(bn.input[0]) or [None, None])
    shift = (c_bn / beta_gemm).reshape((-1,) + (1,) * (rank - 2)).astype(np.float32)
    edit.fold_batchnorm(node, bn, new_bias, params, shift)
    notes.append(f"{t.name}: BatchNormalization {bn.name or bn.output[0]} folded into its decoder and bias")
    return replace(sol, decoder=dec)

