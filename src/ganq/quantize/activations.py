"""`--activations BITS`: integer generators for accelerators. After the weights are quantized (int format, a
symmetric grid), every float activation that an integer back-end runs gets a QuantizeLinear -> DequantizeLinear
pair (per tensor), in the QDQ layout that onnxruntime's QDQ fusions and the NPU execution providers recognise:

    x -> QuantizeLinear(s, zp) -> DequantizeLinear(s, zp) -> every consumer of x

Which tensors: the float inputs and outputs of the ops in ACT_OPS (weight layers and what back-ends run in integer
between them), except the graph's outputs (the interface stays float) and `--keep-float` (tensor names, or
`first` / `last`: the first / last weight layer's input and output, so that layer runs in float).

Ranges come from the calibration latents (the spec's calibration stream, never an evaluation's), run through the
weight-quantized graph (what the integer file computes up to each tensor, activations in float):

    minmax      the smallest and largest value seen
    percentile  numpy.percentile of the values at `p` and 100 - p (p = --act-percentile, default 99.99)
    mse         the clipping range (a fraction of min-max, 64 candidates) whose fake quantization of the values
                has the least squared error
    entropy     onnxruntime's KL-divergence calibration (its HistogramCollector, the TensorRT method)

Scale and zero point from the range by onnxruntime's own compute_scale_zp (the range widened to include 0), uint
(asymmetric) or int (symmetric, --act-symmetric). Percentile, mse and entropy see at most KEEP values a tensor:
all values of the first calibration samples up to that count (latents are iid); minmax sees every value.

Weights: integer kernels want per-channel weights with one zero point (onnxruntime's QLinearConv: "zero point of
per-channel filter must be same"), so every weight decoder must be symmetric (offset 0, one zero point: `--method
symmetric`, or gptq / adaround with grid=symmetric). Codes in a uint8 container (5 to 8 bits) keep it and their one
zero point 2^(k-1), 128 at 8 bits (int8 weights saturate in onnxruntime's x86 kernels on CPUs without VNNI: see
integer_weights); uint4 and uint16 codes become signed ones with zero point 0 (the same weights, exactly).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ganq.errors import GanqError
from ganq.quantize.edit import GraphEdit
from ganq.quantize.ops import consumers as graph_consumers

ACTIVATION_BITS = (8, 16)
CALIBRATIONS = ("minmax", "percentile", "mse", "entropy")
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACT_OPS = frozenset(WEIGHT_OPS + ("Relu", "LeakyRelu", "Add", "Concat", "Resize", "MaxPool", "AveragePool",
                                  "GlobalAveragePool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                                  "DepthToSpace", "Sigmoid"))
KEEP = 2 ** 20          # values a tensor kept for percentile / mse / entropy
MSE_CANDIDATES = 64
ENTROPY_BINS = 2048     # onnxruntime's EntropyCalibrater defaults are 128 / 128; more bins resolve heavy tails
ENTROPY_QUANTIZED_BINS = 128
BATCH_BYTES = 256 * 2 ** 20


@dataclass(frozen=True)
class ActivationPlan:
    tensors: tuple[str, ...]     # the activations that get a QDQ pair, in graph order
    kept_float: tuple[str, ...]  # candidates left float (--keep-float, or 32 bits by --act-tensor-bits)
    bits: dict                   # {tensor: 8 | 16}


def qtypes(bits: int, symmetric: bool) -> tuple[int, type]:
    """(ONNX type, numpy type) of an activation's codes."""
    if bits == 8:
        return (TensorProto.INT8, np.int8) if symmetric else (TensorProto.UINT8, np.uint8)
    return (TensorProto.INT16, np.int16) if symmetric else (TensorProto.UINT16, np.uint16)


def _constants(graph) -> set[str]:
    """Tensors that depend on initializers only (weight decoders, shapes, Constant nodes)."""
    const = {i.name for i in graph.initializer}
    inputs = {i.name for i in graph.input} - const
    for node in graph.node:
        ins = [t for t in node.input if t]
        if node.op_type == "Constant" or (ins and all(t in const for t in ins) and not (set(ins) & inputs)):
            const.update(node.output)
    return const


def _float_tensors(model) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {vi.name for vi in list(g.value_info) + list(g.input) + list(g.output)
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT}


def plan_activations(model, keep_float: tuple[str, ...] = (), bits: int = 8,
                     act_bits: tuple[tuple[str, int], ...] = ()) -> ActivationPlan:
    """The activation tensors to quantize and each one's bits (see the module's doc): `bits` for all, float for
    keep_float's, then act_bits' (NAME | first | last, 8 | 16 | 32 = float); a name that is not one of the
    candidates is one GanqError naming it."""
    g = model.graph
    const = _constants(g)
    floats = _float_tensors(model)
    outputs = {o.name for o in g.output}
    chosen: list[str] = []
    weight_nodes = []
    consumers = graph_consumers(g)
    # a weight layer's output whose one consumer adds a constant (its bias, a folded BatchNorm's shift) is inside
    # the layer: the pair goes after the Add, so onnxruntime fuses MatMul + Add into one integer Gemm
    inner = {n.output[0] for n in g.node if n.op_type in WEIGHT_OPS and len(consumers.get(n.output[0], [])) == 1
             and consumers[n.output[0]][0].op_type == "Add" and any(t in const for t in consumers[n.output[0]][0].input)}
    for node in g.node:
        if node.op_type not in ACT_OPS:
            continue
        if node.op_type in WEIGHT_OPS and any(t in const for t in node.input[1:2]):
            weight_nodes.append(node)
        ins = node.input[:1] if node.op_type in ("Resize", "Reshape", "Squeeze", "Unsqueeze") else node.input
        for t in list(ins) + list(node.output):
            if t and t not in const and t in floats and t not in outputs and t not in inner and t not in chosen:
                chosen.append(t)

    def resolve(name: str, what: str) -> list[str]:
        if name in ("first", "last"):
            if not weight_nodes:
                raise GanqError(f"{what} {name}: the model has no weight layer")
            node = weight_nodes[0] if name == "first" else weight_nodes[-1]
            out = node.output[0]
            if out in inner:  # the layer ends after its constant Add
                out = consumers[out][0].output[0]
            return [t for t in (node.input[0], out) if t in chosen]
        if name in chosen:
            return [name]
        some = ", ".join(chosen[:6]) + (", ..." if len(chosen) > 6 else "")
        raise GanqError(f"{what} {name}: not an activation tensor of the model (they are: {some}; or first, last)")

    width = {t: bits for t in chosen}
    for name in keep_float:
        width.update({t: 32 for t in resolve(name, "--keep-float")})
    for name, b in act_bits:
        width.update({t: b for t in resolve(name, "--act-tensor-bits")})
    kept = tuple(t for t in chosen if width[t] != 32)
    if not kept:
        raise GanqError("--activations: no activation tensor left to quantize")
    return ActivationPlan(kept, tuple(t for t in chosen if width[t] == 32), {t: width[t] for t in kept})


# --- ranges ---

def scale_zero_point(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[np.float32, np.integer]:
    """onnxruntime's compute_scale_zp for the range [lo, hi] (widened to include 0)."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    _, np_type = qtypes(bits, symmetric)
    info = np.iinfo(np_type)
    zp, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), np.array(info.min, np_type),
                                 np.array(info.max, np_type), symmetric=symmetric)
    return np.float32(scale), np_type(zp)


def fake_quantize(x: np.ndarray, scale, zp, bits: int, symmetric: bool) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear, as onnxruntime computes them (round half to even, saturate)."""
    _, np_type = qtypes(bits, symmetric)
    info = np.iinfo(np_type)
    q = np.clip(np.rint(x.astype(np.float32) / np.float32(scale)) + int(zp), info.min, info.max)
    return ((q - int(zp)) * np.float32(scale)).astype(np.float32)


def _mse_range(v: np.ndarray, lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float]:
    best, arg = np.inf, (lo, hi)
    for a in np.linspace(1.0 / MSE_CANDIDATES, 1.0, MSE_CANDIDATES):
        s, z = scale_zero_point(lo * a, hi * a, bits, symmetric)
        err = float(np.mean((fake_quantize(v, s, z, bits, symmetric) - v) ** 2))
        if err < best:
            best, arg = err, (float(lo * a), float(hi * a))
    return arg


def _entropy_range(name: str, v: np.ndarray, symmetric: bool) -> tuple[float, float]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    c = HistogramCollector(method="entropy", symmetric=symmetric, num_bins=ENTROPY_BINS,
                           num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=99.999, scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        c.collect({name: [v]})
        lo, hi = c.compute_collection_result()[name][:2]
    return float(lo), float(hi)


def activation_range(name: str, values: np.ndarray, lo: float, hi: float, method: str, bits: int,
                     symmetric: bool, percentile: float) -> tuple[float, float]:
    """The range of one activation by `method` from its kept values (and its exact min and max)."""
    if method == "minmax" or values.size == 0:
        return lo, hi
    if method == "percentile":
        return (float(np.percentile(values, 100.0 - percentile)), float(np.percentile(values, percentile)))
    if method == "mse":
        return _mse_range(values, lo, hi, bits, symmetric)
    return _entropy_range(name, values, symmetric)


def calibrate_activations(calib, tensors: tuple[str, ...], method: str, bits: dict, symmetric: bool,
                          percentile: float) -> dict[str, dict]:
    """{tensor: {lo, hi, scale, zero_point, seen, kept}} over every calibration input, one pass."""
    per_sample = next(calib.batches(list(tensors), 1))
    sample_bytes = sum(4 * x[0].size for x in per_sample)
    batch = int(max(1, min(256, BATCH_BYTES // max(1, sample_bytes))))
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    kept: dict[str, list] = {t: [] for t in tensors}
    count = {t: 0 for t in tensors}
    for outs in calib.batches(list(tensors), batch):
        for t, x in zip(tensors, outs):
            x = np.asarray(x, np.float32).reshape(-1)
            lo[t], hi[t] = min(lo[t], float(x.min())), max(hi[t], float(x.max()))
            if method != "minmax" and count[t] < KEEP:
                kept[t].append(x[: KEEP - count[t]])
                count[t] += kept[t][-1].size
    out = {}
    for t in tensors:
        values = np.concatenate(kept[t]) if kept[t] else np.zeros(0, np.float32)
        a, b = activation_range(t, values, lo[t], hi[t], method, bits[t], symmetric, percentile)
        s, z = scale_zero_point(a, b, bits[t], symmetric)
        out[t] = {"lo": a, "hi": b, "scale": float(s), "zero_point": int(z), "bits": bits[t]}
    return out


# --- the graph ---

def integer_weights(model) -> int:
    """Checks that every weight DequantizeLinear is symmetric (one zero point, no offset: one GanqError if not) and
    readies its codes for integer kernels; returns how many. Codes in a uint8 container (5 to 8 bits) stay uint8
    with their one zero point 2^(k-1): onnxruntime's x86 kernels for int8 weights (U8S8, S8S8) sum pairs of products in int16 and saturate on
    CPUs without VNNI (AVX2, AVX-512 before VNNI), measured on such a CPU as a mean error 30x that of uint8 weights
    (U8U8, S8U8), which every CPU computes exactly. uint4 and uint16 codes become signed codes with zero point 0 of
    the scale's shape (the same weights, exactly)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers = graph_consumers(g)
    done = 0
    for node in g.node:
        if node.op_type == "Gather" and node.input and node.input[0] in inits and any(
                c.op_type in WEIGHT_OPS for c in consumers.get(node.output[0], [])):
            raise GanqError("--activations needs affine weights (DequantizeLinear); this method's codebook "
                            "decoder (Gather) cannot run in integer kernels")
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or len(node.input) < 3:
            continue
        codes = numpy_helper.to_array(inits[node.input[0]])
        zp = numpy_helper.to_array(inits[node.input[2]])
        if codes.dtype not in (np.uint8, np.uint16, ml_dtypes.uint4):
            continue
        uses = consumers.get(node.output[0], [])
        if any(c.op_type == "Add" for c in uses) or not np.all(zp == zp.reshape(-1)[0]) or not zp.size:
            raise GanqError(f"--activations needs symmetric weights (one zero point, no offset: what integer "
                            f"kernels take per channel); weight {node.output[0].removesuffix('_dq')} has an offset or per-channel zero points: "
                            "use --method symmetric (or gptq / adaround with grid=symmetric)")
        done += 1
        if codes.dtype == np.uint8:
            continue
        z = int(zp.reshape(-1)[0])
        signed = np.int16 if codes.dtype == np.uint16 else ml_dtypes.int4  # uint8 codes stayed unsigned above
        q = (codes.astype(np.int32) - z).astype(signed)
        inits[node.input[0]].CopyFrom(numpy_helper.from_array(q, node.input[0]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.zeros(zp.shape, signed), node.input[2]))
    return done


def insert_qdq(model, ranges: dict[str, dict], symmetric: bool) -> dict[str, str]:
    """A QuantizeLinear -> DequantizeLinear pair after each tensor of `ranges` (right after its producer, so the
    nodes stay in topological order); every other consumer reads the DequantizeLinear's output. Returns {tensor:
    the DequantizeLinear's output}."""
    g = model.graph
    fresh = GraphEdit(g).fresh
    pairs, names = {}, {}
    for t, r in ranges.items():
        s, z, q, dq = (fresh(f"{t}_act_scale"), fresh(f"{t}_act_zp"), fresh(f"{t}_act_q"), fresh(f"{t}_act"))
        g.initializer.extend([numpy_helper.from_array(np.array(r["scale"], np.float32), s),
                              numpy_helper.from_array(np.array(r["zero_point"], qtypes(r["bits"], symmetric)[1]), z)])
        pairs[t] = [helper.make_node("QuantizeLinear", [t, s, z], [q], name=q),
                    helper.make_node("DequantizeLinear", [q, s, z], [dq], name=dq)]
        names[t] = dq
    nodes = []
    graph_inputs = [i.name for i in g.input]
    for t in graph_inputs:
        nodes += pairs.get(t, [])
    for node in g.node:
        for k, t in enumerate(node.input):
            if t in names:
                node.input[k] = names[t]
        nodes.append(node)
        for t in node.output:
            nodes += pairs.get(t, [])
    del g.node[:]
    g.node.extend(nodes)
    return names


def simulate_activations(model, source, options, data_root=None) -> dict[str, str]:
    """Pairs in `model` (prepared, weights still float) with the ranges of a round-to-nearest W/A file of `source`
    (the calibrated method's own grid: its fallback), so that a calibrated method's layer inputs are the quantized
    activations. Returns what insert_qdq does, for remove_pairs."""
    from dataclasses import replace

    from ganq.quantize.pipeline import quantize_model

    rtn = replace(options, method=options.method_config.fallback().name, method_opts=(), recalibrate_bn=False,
                  plan_file=None)
    _, rep = quantize_model(source, rtn, data_root=data_root)
    ranges = {t: {"scale": r[2], "zero_point": r[3], "bits": r[4]} for t, r in rep["activations"]["ranges"].items()}
    return insert_qdq(model, ranges, options.act_symmetric)


def remove_pairs(model, names: dict[str, str]) -> None:
    """Undo insert_qdq: consumers read the original tensors again; the pairs and their parameters leave."""
    g = model.graph
    back = {dq: t for t, dq in names.items()}
    pairs = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] in back]
    gone = {t for n in pairs for t in (n.output[0], n.input[0])}  # the DequantizeLinear's and its Quantize's
    params = {t for n in pairs for t in n.input[1:]}
    keep = [n for n in g.node if not (n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] in gone)]
    for n in keep:
        for k, t in enumerate(n.input):
            if t in back:
                n.input[k] = back[t]
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name not in params]
    del g.initializer[:]
    g.initializer.extend(inits)


def quantize_activations(model, options, calib) -> dict:
    """Quantize `model`'s activations in place (see the module's doc); returns the record for ganq.quant."""
    plan = plan_activations(model, options.keep_float, options.activations, options.act_overrides)
    n = integer_weights(model)
    ranges = calibrate_activations(calib, plan.tensors, options.act_calibration, plan.bits,
                                   options.act_symmetric, options.act_percentile)
    insert_qdq(model, ranges, options.act_symmetric)
    rec = {"bits": options.activations, "calibration": options.act_calibration,
           "symmetric": options.act_symmetric, "tensors": len(plan.tensors), "kept_float": list(plan.kept_float),
           "integer_weights": n, "at_16_bits": [t for t, b in plan.bits.items() if b == 16],
           "ranges": {t: [round(r["lo"], 6), round(r["hi"], 6), r["scale"], r["zero_point"], r["bits"]]
                      for t, r in ranges.items()}}
    if options.act_calibration == "percentile":
        rec["percentile"] = options.act_percentile
    return rec
