"""Decode once or per call (issue 24): the runtime folds the weights' decoders when its session is made; the
outputs equal the per-call decode's for every format (torch-free)."""

import numpy as np
import pytest

from ganq.quantize import QuantizeOptions, quantize_file
from ganq.runtime import Generator


@pytest.mark.parametrize("fmt,bits,method", [("fake", 4, "minmax"), ("int", 4, "minmax"), ("int", 3, "kmeans"),
                                             ("int", 8, "mse"), ("packed", 3, "minmax"), ("packed", 2, "kmeans")])
def test_decode_once_equals_decode_per_call(tiny_onnx, tmp_path, fmt, bits, method):
    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, QuantizeOptions(bits=bits, method=method, granularity="channel", format=fmt))
    once, per = Generator(q), Generator(q, decode="per-call")
    assert once.decode == "once" and per.decode == "per-call"
    z = once.latents(17, 3)
    a, b = once.run(z), per.run(z)
    assert np.abs(a - b).max() <= 1e-6
    assert np.array_equal(once.generate(9, 1), per.generate(9, 1))


def test_bad_decode_mode_is_one_line(tiny_onnx):
    from ganq.errors import GanqError

    with pytest.raises(GanqError, match="--decode must be once or per-call"):
        Generator(tiny_onnx, decode="lazy")


def _layer_then_bn(op: str, **attrs):
    """x -> op (weight W, no bias) -> BatchNormalization -> y, seeded; the op's weight layout as the op table says."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c_in, c_out = 6, 5
    if op in ("Conv", "ConvTranspose"):
        w = rng.standard_normal((c_out, c_in, 3, 3) if op == "Conv" else (c_in, c_out, 3, 3)).astype(np.float32)
        x_shape, bn_in = ["N", c_in, 5, 5], c_out
        node = helper.make_node(op, ["x", "w"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    else:
        trans = attrs.get("transB", 0)
        w = rng.standard_normal((c_out, c_in) if trans else (c_in, c_out)).astype(np.float32)
        x_shape, bn_in = ["N", c_in], c_out
        node = helper.make_node(op, ["x", "w"], ["h"], **attrs)
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("g", 1 + 0.3 * rng.standard_normal(bn_in)), ("b", 0.2 * rng.standard_normal(bn_in)),
        ("m", 0.5 * rng.standard_normal(bn_in)), ("v", 0.5 + rng.random(bn_in)))]
    g = helper.make_graph([node, helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c_out] + x_shape[2:])],
                          [numpy_helper.from_array(w, "w"), *bn])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("op,attrs", [("Conv", {}), ("ConvTranspose", {}), ("Gemm", {}), ("Gemm", {"transB": 1}),
                                      ("MatMul", {})])
@pytest.mark.parametrize("fmt,method", [("fake", "minmax"), ("int", "minmax"), ("packed", "mse"),
                                        ("int", "kmeans"), ("packed", "kmeans")])
def test_batchnorm_folded_into_the_decoder_is_exact_and_leaves_the_file(op, attrs, fmt, method):
    from ganq.onnx_io import run
    from ganq.quantize import quantize_model

    m = _layer_then_bn(op, **attrs)
    kw = dict(bits=3, method=method, granularity="channel", format=fmt)
    plain, _ = quantize_model(m, QuantizeOptions(**kw))
    folded, rep = quantize_model(m, QuantizeOptions(**kw, bn_into_decoder=True))
    assert rep["bn_into_decoder"] == 1
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    assert not {"g", "b", "m", "v"} & {i.name for i in folded.graph.initializer}
    x = np.random.default_rng(1).standard_normal((4, 6, 5, 5) if op.startswith("Conv") else (4, 6)).astype(np.float32)
    a, b = run(plain, {"x": x})[0], run(folded, {"x": x})[0]
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(a).max()))


def _layer_ops_bn(case: str):
    """x -> a weight layer -> ops that commute with a per-channel affine map -> BatchNormalization -> y, seeded:
    gemm-reshape (a Linear projection reshaped into 5 maps of 2x2 before a BatchNorm2d, the PyTorch-GAN DCGAN's
    first block), matmul-reshape (the same without a bias slot), convt-resize (ConvTranspose, nearest 2x Resize),
    conv-identity (Conv, Identity, inference Dropout), and conv-flatten (channels merged with pixels: no fold)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits, nodes = [], []
    if case in ("gemm-reshape", "matmul-reshape"):
        c_bn, x_shape, y_shape = 5, ["N", 6], ["N", 5, 2, 2]
        w = rng.standard_normal((20, 6) if case == "gemm-reshape" else (6, 20)).astype(np.float32)
        if case == "gemm-reshape":
            inits.append(numpy_helper.from_array(rng.standard_normal(20).astype(np.float32), "c"))
            nodes.append(helper.make_node("Gemm", ["x", "w", "c"], ["h"], transB=1))
        else:
            nodes.append(helper.make_node("MatMul", ["x", "w"], ["h"]))
        inits.append(numpy_helper.from_array(np.array([-1, 5, 2, 2], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["h", "shape"], ["t"]))
    elif case == "convt-resize":
        c_bn, x_shape, y_shape = 5, ["N", 6, 3, 3], ["N", 5, 6, 6]
        w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        nodes += [helper.make_node("ConvTranspose", ["x", "w"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Resize", ["h", "", "scales"], ["t"], mode="nearest")]
    else:
        c_bn, x_shape = 5, ["N", 6, 4, 4]
        w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
        nodes.append(helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        if case == "conv-identity":
            y_shape = ["N", 5, 4, 4]
            nodes += [helper.make_node("Identity", ["h"], ["h2"]), helper.make_node("Dropout", ["h2"], ["t"])]
        else:
            c_bn, y_shape = 80, ["N", 80]
            nodes.append(helper.make_node("Flatten", ["h"], ["t"]))
    inits.append(numpy_helper.from_array(w, "w"))
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("g", 1 + 0.3 * rng.standard_normal(c_bn)), ("b", 0.2 * rng.standard_normal(c_bn)),
        ("m", 0.5 * rng.standard_normal(c_bn)), ("v", 0.5 + rng.random(c_bn)))]
    nodes.append(helper.make_node("BatchNormalization", ["t", "g", "b", "m", "v"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), x_shape


@pytest.mark.parametrize("case", ["gemm-reshape", "matmul-reshape", "convt-resize", "conv-identity"])
@pytest.mark.parametrize("fmt,method,gran", [("fake", "minmax", "channel"), ("int", "mse", "channel"),
                                             ("packed", "kmeans", "channel"), ("packed", "mse", "group:16")])
def test_batchnorm_folds_through_ops_that_commute(case, fmt, method, gran):
    """A BatchNorm after ops that commute with a per-channel affine map folds into the decoder exactly (1e-5): the
    Reshape of a projection into maps (weight channel j takes BatchNorm channel j // 4), a Resize, an Identity and
    an inference Dropout; the BatchNorm and its parameters leave the file."""
    from ganq.onnx_io import run
    from ganq.quantize import quantize_model

    m, x_shape = _layer_ops_bn(case)
    kw = dict(bits=3, method=method, granularity=gran, format=fmt)
    plain, _ = quantize_model(m, QuantizeOptions(**kw))
    folded, rep = quantize_model(m, QuantizeOptions(**kw, bn_into_decoder=True))
    assert rep["bn_into_decoder"] == 1, rep["notes"]
    assert "BatchNormalization" not in [n.op_type for n in folded.graph.node]
    assert not {"g", "b", "m", "v"} & {i.name for i in folded.graph.initializer}
    x = np.random.default_rng(1).standard_normal([4] + x_shape[1:]).astype(np.float32)
    a, b = run(plain, {"x": x})[0], run(folded, {"x": x})[0]
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(a).max()))


def test_batchnorm_after_channels_merged_with_pixels_is_kept_with_a_note():
    """Flatten of [N, 5, 4, 4] into 80 BatchNorm channels: each channel a pixel, which no per-channel decoder holds."""
    from ganq.quantize import quantize_model

    m, _ = _layer_ops_bn("conv-flatten")
    q, rep = quantize_model(m, QuantizeOptions(bits=4, granularity="channel", format="int", bn_into_decoder=True))
    assert rep["bn_into_decoder"] == 0
    assert any("does not keep or split the channel axis" in n for n in rep["notes"]), rep["notes"]
    assert [n.op_type for n in q.graph.node].count("BatchNormalization") == 1


def test_batchnorm_is_kept_with_a_note_where_it_does_not_fold():
    from ganq.quantize import quantize_model

    q, rep = quantize_model(_layer_then_bn("Conv"), QuantizeOptions(bits=4, granularity="tensor", format="int",
                                                                    bn_into_decoder=True))
    assert rep["bn_into_decoder"] == 0 and any("per tensor" in n for n in rep["notes"])
    assert [n.op_type for n in q.graph.node].count("BatchNormalization") == 1


@pytest.mark.parametrize("fmt", ["fake", "int", "packed"])
def test_float16_floats_stay_within_the_stated_tolerance(tiny_onnx, tmp_path, fmt):
    import onnx

    from ganq.quantize.float_bits import FLOAT16_TOLERANCE

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_file(tiny_onnx, a, QuantizeOptions(bits=4, granularity="channel", format=fmt, bn_into_decoder=True))
    rep = quantize_file(tiny_onnx, b, QuantizeOptions(bits=4, granularity="channel", format=fmt,
                                                      bn_into_decoder=True, float_bits=16))
    assert rep["float_bits"] == 16 and rep["float16"]["tensors"] > 0
    assert rep["float16"]["rms"] <= FLOAT16_TOLERANCE * 2 and b.stat().st_size < a.stat().st_size
    ga, gb = Generator(a), Generator(b)
    z = ga.latents(32, 0)
    d = ga.run(z) - gb.run(z)
    assert np.sqrt(np.mean(d * d)) <= FLOAT16_TOLERANCE * 2
    m = onnx.load(str(b))
    if fmt == "fake":  # the quantized weights stay float32 on their grid
        q = {r["tensor"] for r in rep["tensors"]}
        assert all(i.data_type == onnx.TensorProto.FLOAT for i in m.graph.initializer if i.name in q)


@pytest.mark.parametrize("fmt", ["fake", "int", "packed"])
def test_the_file_in_three_parts_and_its_bounds(tiny_onnx, tmp_path, fmt):
    """codes + decoders + the rest is the file; packed codes are k bit planes; the entropy bound is at most k bits a
    weight; xz is a real compressed size."""
    rep = quantize_file(tiny_onnx, tmp_path / "q.onnx", QuantizeOptions(bits=3, granularity="channel", format=fmt),
                        sizes=True)
    assert rep["bytes_codes"] + rep["bytes_decoders"] + rep["bytes_other"] == rep["bytes_file"]
    n = sum(r["params"] for r in rep["tensors"])
    if fmt == "packed":
        assert rep["bytes_codes"] == sum(3 * ((r["params"] + 7) // 8) for r in rep["tensors"])
    assert all(0 <= r["entropy_bits"] <= 3 + 1e-9 for r in rep["tensors"])
    assert rep["bytes_entropy_codes"] <= -(-3 * n // 8) + len(rep["tensors"])
    import lzma
    assert rep["bytes_xz"] == len(lzma.compress((tmp_path / "q.onnx").read_bytes(), preset=9 | lzma.PRESET_EXTREME))


@pytest.mark.parametrize("fmt", ["int", "packed"])
def test_float_bits_8_stores_biases_as_int8_and_decoders_as_float16(tiny_onnx, tmp_path, fmt):
    """--float-bits 8: the other parameters int8 per tensor (scale max|x| / 127) behind DequantizeLinear, the
    decoders float16; smaller than 16, within the same tolerance, and the file's parts still sum."""
    import onnx

    from ganq.quantize.float_bits import FLOAT16_TOLERANCE

    kw = dict(bits=4, granularity="channel", format=fmt, bn_into_decoder=True)
    a = quantize_file(tiny_onnx, tmp_path / "a.onnx", QuantizeOptions(**kw, float_bits=16), sizes=True)
    b = quantize_file(tiny_onnx, tmp_path / "b.onnx", QuantizeOptions(**kw, float_bits=8), sizes=True)
    assert b["float_bits"] == 8 and b["bytes_file"] < a["bytes_file"]
    assert b["float16"]["rms"] <= FLOAT16_TOLERANCE * 2
    for r in (a, b):
        assert r["bytes_codes"] + r["bytes_decoders"] + r["bytes_other"] == r["bytes_file"]
        assert r["bytes_other"] > 0
    m = onnx.load(str(tmp_path / "b.onnx"))
    inits = {i.name: i for i in m.graph.initializer}
    int8 = [n for n, i in inits.items() if i.data_type == onnx.TensorProto.INT8]
    assert int8 and all(n.endswith("_i8") for n in int8)
    from onnx import numpy_helper
    for n in int8:
        q = numpy_helper.to_array(inits[n])
        assert np.abs(q).max() == 127  # max|x| maps to 127
    dq = {n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    assert set(int8) <= dq
    assert not [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.name.endswith("_scale")
                and not i.name.endswith("_i8_scale") and i.name not in {"", None}
                and len(i.dims) > 0 and np.prod(i.dims) > 1]  # decoders' scales are float16 now
    ga, gb = Generator(tmp_path / "a.onnx"), Generator(tmp_path / "b.onnx")
    z = ga.latents(16, 0)
    assert np.sqrt(np.mean((ga.run(z) - gb.run(z)) ** 2)) <= FLOAT16_TOLERANCE * 2


def test_bad_float_bits_is_one_line():
    from ganq.errors import GanqError

    with pytest.raises(GanqError, match="--float-bits must be 32, 16 or 8"):
        QuantizeOptions(bits=4, float_bits=4)


@pytest.mark.parametrize("bits,method", [(4, "minmax"), (3, "mse"), (2, "symmetric"), (8, "minmax")])
def test_nbits_decoded_once_into_matmul_weights(tiny_onnx, tmp_path, bits, method):
    """--format nbits decoded once: the session runs MatMul on float32 weights decoded by numpy (no MatMulNBits
    left, since no session option folds it), with the outputs of onnxruntime's own MatMulNBits kernel (per call)."""
    from ganq.onnx_io import load_model
    from ganq.quantize.nbits import decoded_model

    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, QuantizeOptions(bits=bits, method=method, granularity="group:16", format="nbits"))
    coded = load_model(q)
    assert any(n.op_type == "MatMulNBits" for n in coded.graph.node)
    once, per = Generator(q), Generator(q, decode="per-call")
    src = once.session_source("once")
    assert not any(n.op_type == "MatMulNBits" for n in src.graph.node)
    assert per.session_source("per-call") == per.source  # per call: the file as it is
    z = once.latents(17, 3)
    assert np.abs(once.run(z) - per.run(z)).max() <= 1e-6
    assert decoded_model(load_model(tiny_onnx)) is None  # nothing to decode: no copy


def test_float_bits_per_tensor_through_options_and_the_plan(tiny_onnx, tmp_path):
    """Per-tensor float widths: one float initializer at 16 (the rest float32), one weight's decoder kept at 32 under
    --float-bits 16, and a plan file's "floats" giving the same file as the option; recorded in ganq.quant."""
    import json

    import onnx

    from ganq.onnx_io import load_model, read_quant

    m = load_model(tiny_onnx)
    kw = dict(bits=4, granularity="channel", format="int")
    rep = quantize_file(tiny_onnx, tmp_path / "w.onnx", QuantizeOptions(**kw))
    weight = rep["tensors"][0]["tensor"]
    other = next(i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                 and i.name not in {r["tensor"] for r in rep["tensors"]} and len(i.dims) == 1 and i.dims[0] >= 2)
    r1 = quantize_file(tiny_onnx, tmp_path / "a.onnx", QuantizeOptions(**kw, float_tensor_bits=((other, 16),)))
    a = onnx.load(str(tmp_path / "a.onnx"))
    halves = [i.name for i in a.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves == [other + "_f16"] and r1["float16"]["tensors"] == 1
    assert read_quant(a)["float16"]["per_tensor"] == {other: 16}
    r2 = quantize_file(tiny_onnx, tmp_path / "b.onnx", QuantizeOptions(**kw, float_bits=16,
                                                                     float_tensor_bits=((weight, 32),)))
    b = {i.name: i for i in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    mine = [n for n in b if n.startswith(weight + "_") and b[n].data_type in (onnx.TensorProto.FLOAT,
                                                                               onnx.TensorProto.FLOAT16)]
    assert mine and all(b[n].data_type == onnx.TensorProto.FLOAT for n in mine)  # its decoder stays float32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in b.values())       # the rest is float16
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tensors": {}, "floats": {weight: 32}}))
    quantize_file(tiny_onnx, tmp_path / "c.onnx", QuantizeOptions(**kw, float_bits=16, plan_file=str(plan)))
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert r2["float16"]["rms"] <= 0.04


def test_bad_per_tensor_float_bits_are_one_line(tiny_onnx, tmp_path):
    from ganq.errors import GanqError
    from ganq.quantize.plan import parse_float_bits

    with pytest.raises(GanqError, match="must be NAME=32, NAME=16 or NAME=8"):
        parse_float_bits(["x=12"])
    rep = quantize_file(tiny_onnx, tmp_path / "w.onnx", QuantizeOptions(bits=4, granularity="channel", format="int"))
    weight = rep["tensors"][0]["tensor"]
    for pair, msg in (((("nope", 16),), "not a float initializer or a quantized weight"),
                      (((weight, 8),), "a weight's decoder takes 32 or 16 bits")):
        with pytest.raises(GanqError, match=msg):
            quantize_file(tiny_onnx, tmp_path / "x.onnx", QuantizeOptions(bits=4, granularity="channel", format="int",
                                                                          float_tensor_bits=pair))
        assert not (tmp_path / "x.onnx").exists()
