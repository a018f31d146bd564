import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ganq.errors import GanqError
from ganq.quantize import QuantizeOptions, fold_batchnorm, quantize_file, quantize_model
from ganq.quantize.formats import pack_planes, unpack_planes
from ganq.quantize.methods.minmax import MinMax
from ganq.quantize.ops import find_targets
from ganq.onnx_io import META_QUANT, read_metadata

def _mm(x, bits, granularity="tensor", axis=None):
    return MinMax().solve(x, bits, axis if granularity == "channel" else None)


floats = arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 7)),
                elements=st.floats(-1e3, 1e3, width=32, allow_nan=False))


# --- the scheme: closed forms and properties -----------------------------------------------------------------

def test_minmax_closed_form():
    x = np.array([-1.0, -0.2, 0.0, 0.3, 1.0], np.float32)
    q = _mm(x, 2)  # grid: -1, -1/3, 1/3, 1
    assert q.codes.tolist() == [0, 1, 1, 2, 3]
    assert np.allclose(q.dequantize(), [-1, -1 / 3, -1 / 3, 1 / 3, 1], atol=1e-7)
    assert q.dequantize()[0] == -1.0 and q.dequantize()[-1] == 1.0  # the extremes are exact


def test_constant_tensor_comes_back_exactly():
    for value in (0.0, 0.7, -3.25):
        x = np.full((4, 3), value, np.float32)
        for g in ("tensor", "channel"):
            xh = _mm(x, 3, g, axis=0).dequantize()
            assert np.array_equal(xh, x) and not np.isnan(xh).any()


@settings(max_examples=60, deadline=None)
@given(floats, st.integers(1, 16), st.sampled_from(["tensor", "channel"]))
def test_properties(x, bits, granularity):
    q = _mm(x, bits, granularity, axis=1)
    xh = q.dequantize()
    assert xh.dtype == np.float32 and xh.shape == x.shape
    assert q.codes.min() >= 0 and q.codes.max() <= 2 ** bits - 1
    if granularity == "tensor":
        assert len(np.unique(xh)) <= 2 ** bits
    else:
        assert all(len(np.unique(xh[:, c])) <= 2 ** bits for c in range(x.shape[1]))
    # |x - Q(x)| <= step / 2 (plus float32 rounding of the reconstruction)
    step = q.decoder.scale
    tol = step / 2 + 4 * np.finfo(np.float32).eps * np.maximum(np.abs(x), np.abs(q.decoder.offset)).max()
    assert np.all(np.abs(x - xh) <= tol)
    # idempotent: quantizing x_hat again gives the same codes
    q2 = _mm(xh, bits, granularity, axis=1)
    assert np.array_equal(q2.codes, q.codes)
    # the minimum comes back exactly (code 0); the maximum within one float32 ulp of the range max - min
    # (x_hat = q * scale + min rounds the scale, so the error scales with the range, not with max itself)
    axis = None if granularity == "tensor" else 0
    lo, hi = x.min(axis=axis), x.max(axis=axis)
    assert np.array_equal(xh.min(axis=axis), lo)
    assert np.all(np.abs(xh.max(axis=axis) - hi) <= np.spacing((hi - lo).astype(np.float32)) + np.abs(np.spacing(hi)))
    # deterministic
    assert np.array_equal(_mm(x, bits, granularity, axis=1).codes, q.codes)


@given(st.integers(1, 16), st.integers(1, 300), st.integers(0, 2 ** 32 - 1))
@settings(max_examples=40, deadline=None)
def test_bit_planes_roundtrip(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 2 ** bits, n)
    planes = pack_planes(codes, bits)
    assert planes.shape == (bits, (n + 7) // 8) and planes.dtype == np.uint8
    assert np.array_equal(unpack_planes(planes, n), codes)


def test_bad_options():
    for kw, msg in (({"bits": 0}, "from 1 to 16"), ({"bits": 17}, "from 1 to 16"),
                    ({"bits": 4, "format": "zip"}, "fake, int, packed"),
                    ({"bits": 4, "granularity": "row"}, "tensor, channel"),
                    ({"bits": 4, "method": "nearest"}, "minmax, symmetric, mse")):
        with pytest.raises(GanqError, match=msg):
            QuantizeOptions(**kw)


# --- one-node graphs: selection, axes, formats, against onnx.reference --------------------------------------

def _one_node(op, w_shape, x_shape, y_shape, opset=21, seed=0, bias=True, **attrs):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(w_shape).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["X", "W"]
    if bias and op != "MatMul":
        n_out = {"Conv": w_shape[0], "ConvTranspose": w_shape[1],
                 "Gemm": w_shape[0] if attrs.get("transB") else w_shape[1]}[op]
        inits.append(numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "B"))
        inputs.append("B")
    node = helper.make_node(op, inputs, ["Y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


CASES = {
    "conv": (("Conv", (4, 3, 3, 3), [2, 3, 8, 8], [2, 4, 6, 6]), {}, 0),
    "convT": (("ConvTranspose", (3, 5, 4, 4), [2, 3, 4, 4], [2, 5, 10, 10]), {"strides": [2, 2]}, 1),
    "gemm_tB": (("Gemm", (6, 5), [2, 5], [2, 6]), {"transB": 1}, 0),
    "gemm": (("Gemm", (5, 6), [2, 5], [2, 6]), {}, 1),
    "matmul": (("MatMul", (5, 6), [2, 5], [2, 6]), {}, 1),
}


@pytest.mark.parametrize("case", CASES)
def test_selection_axes(case):
    args, attrs, axis = CASES[case]
    m = _one_node(*args, **attrs)
    (t,) = find_targets(m)
    assert (t.name, t.axis, t.role) == ("W", axis, "weight")
    if args[0] != "MatMul":
        assert {x.name for x in find_targets(m, include_bias=True)} == {"W", "B"}


def _expected_weight(m, bits, granularity, axis):
    w = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "W"))
    return _mm(w, bits, granularity, axis).dequantize()


def _with_weight_output(model):
    m = onnx.ModelProto.FromString(model.SerializeToString())
    m.graph.output.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, None))
    return m


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", ["fake", "int", "packed"])
@pytest.mark.parametrize("bits,granularity", [(2, "tensor"), (3, "channel"), (4, "tensor"), (5, "channel"),
                                              (8, "channel"), (11, "tensor")])
def test_formats_oracle(case, fmt, bits, granularity):
    args, attrs, axis = CASES[case]
    m = _one_node(*args, **attrs)
    qm, report = quantize_model(m, QuantizeOptions(bits=bits, granularity=granularity, format=fmt))
    expected = _expected_weight(m, bits, granularity, axis)
    x = np.random.default_rng(1).standard_normal(args[2]).astype(np.float32)
    # the weights the graph computes are bit-identical to the numpy reconstruction, in every format
    probe = _with_weight_output(qm) if fmt != "fake" else None
    if probe is not None:
        w_ref = ReferenceEvaluator(probe).run(["W"], {"X": x})[0]
        w_ort = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["W"], {"X": x})[0]
        assert np.array_equal(w_ref, expected) and np.array_equal(w_ort, expected)
    else:
        w = numpy_helper.to_array(next(i for i in qm.graph.initializer if i.name == "W"))
        assert np.array_equal(w, expected)
    # and the node's output matches the float graph with the expected weights
    ref_model = onnx.ModelProto.FromString(m.SerializeToString())
    next(i for i in ref_model.graph.initializer if i.name == "W").CopyFrom(numpy_helper.from_array(expected, "W"))
    want = ReferenceEvaluator(ref_model).run(None, {"X": x})[0]
    got = ort.InferenceSession(qm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    assert np.allclose(got, want, atol=1e-5)
    meta = json.loads(read_metadata(qm)[META_QUANT])
    assert meta["bits"] == bits and meta["format"] == fmt and meta["tensors"][0]["tensor"] == "W"


def test_int_container_types():
    args, attrs, _ = CASES["conv"]
    for bits, dtype in ((3, TensorProto.UINT4), (4, TensorProto.UINT4), (5, TensorProto.UINT8),
                        (8, TensorProto.UINT8), (9, TensorProto.UINT16)):
        qm, _ = quantize_model(_one_node(*args, **attrs), QuantizeOptions(bits=bits, format="int"))
        codes = next(i for i in qm.graph.initializer if i.name.startswith("W_q"))
        assert codes.data_type == dtype
        if dtype == TensorProto.UINT4:
            assert len(codes.raw_data) == (4 * 3 * 3 * 3 + 1) // 2  # two codes per byte


def test_biases_and_other_tensors_untouched():
    args, attrs, _ = CASES["conv"]
    m = _one_node(*args, **attrs)
    qm, _ = quantize_model(m, QuantizeOptions(bits=2, format="fake"))
    b0 = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "B"))
    b1 = numpy_helper.to_array(next(i for i in qm.graph.initializer if i.name == "B"))
    assert np.array_equal(b0, b1)
    qm, rep = quantize_model(m, QuantizeOptions(bits=2, format="fake", include_bias=True))
    b2 = numpy_helper.to_array(next(i for i in qm.graph.initializer if i.name == "B"))
    assert len(np.unique(b2)) <= 4 and len(rep["tensors"]) == 2


def test_grouped_conv_transpose_per_channel_refused():
    m = _one_node("ConvTranspose", (4, 2, 3, 3), [1, 4, 5, 5], [1, 4, 7, 7], group=2, bias=False)
    with pytest.raises(GanqError, match="grouped ConvTranspose"):
        quantize_model(m, QuantizeOptions(bits=4, granularity="channel"))
    quantize_model(m, QuantizeOptions(bits=4, granularity="tensor"))


def test_bits_32_leaves_model_float():
    m = _one_node(*CASES["gemm"][0])
    qm, rep = quantize_model(m, QuantizeOptions(bits=32))
    assert rep["tensors"] == [] and all(
        np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(m.graph.initializer, qm.graph.initializer))


def test_low_opset_int_and_packed():
    args, attrs, _ = CASES["gemm"]
    m = _one_node(*args, opset=17, **attrs)
    # --no-upgrade-opset: what opset 17 has (packed needs BitwiseAnd, int falls back to a uint8 container)
    with pytest.raises(GanqError, match="opset >= 18"):
        quantize_model(m, QuantizeOptions(bits=3, format="packed", upgrade_opset=False))
    qm, _ = quantize_model(m, QuantizeOptions(bits=3, format="int", upgrade_opset=False))
    assert next(i for i in qm.graph.initializer if i.name.startswith("W_q")).data_type == TensorProto.UINT8
    # by default the opset is upgraded (onnx.version_converter, outputs checked) and said so
    for fmt in ("int", "packed"):
        qm, rep = quantize_model(m, QuantizeOptions(bits=3, format=fmt))
        assert rep["opset"] == 21 and any("opset 17 -> 21" in n for n in rep["notes"])
    assert next(i for i in qm.graph.initializer if i.name.startswith("W_planes")).data_type == TensorProto.UINT8
    qm, rep = quantize_model(m, QuantizeOptions(bits=3, format="int"))
    assert next(i for i in qm.graph.initializer if i.name.startswith("W_q")).data_type == TensorProto.UINT4
    _, rep = quantize_model(m, QuantizeOptions(bits=3, format="fake"))  # fake needs nothing: left alone
    assert rep["opset"] == 17 and "notes" not in rep


# --- BatchNorm folding --------------------------------------------------------------------------------------

def _conv_bn(op="Conv"):
    rng = np.random.default_rng(0)
    w_shape = (4, 3, 3, 3) if op == "Conv" else (3, 4, 3, 3)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.1, 3, 4).astype(np.float32), "var")]
    nodes = [helper.make_node(op, ["X", "W"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["Y"], epsilon=1e-3),
             ]
    out = [2, 4, 6, 6] if op == "Conv" else [2, 4, 10, 10]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 8, 8])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_fold_bn_matches_reference(op):
    m = _conv_bn(op)
    folded, n = fold_batchnorm(m)
    assert n == 1 and "BatchNormalization" not in {x.op_type for x in folded.graph.node}
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.allclose(ReferenceEvaluator(folded).run(None, {"X": x})[0],
                       ReferenceEvaluator(m).run(None, {"X": x})[0], atol=1e-5)


# --- real generators ------------------------------------------------------------------------------------------

def _run(path, z):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]


def test_generator_formats_agree_and_shrink(tiny_onnx, tmp_path):
    z = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    fp32 = _run(tiny_onnx, z)
    for bits in (8, 4, 3):
        outs, reps = {}, {}
        for fmt in ("fake", "int", "packed"):
            reps[fmt] = quantize_file(tiny_onnx, tmp_path / f"{fmt}{bits}.onnx", QuantizeOptions(bits=bits, format=fmt))
            outs[fmt] = _run(tmp_path / f"{fmt}{bits}.onnx", z)
            assert reps[fmt]["bytes_gzip"] > 0 and reps[fmt]["bytes_ideal"] < reps[fmt]["bytes_fp32"]
        assert np.abs(outs["int"] - outs["fake"]).max() <= 1e-5
        assert np.abs(outs["packed"] - outs["fake"]).max() <= 1e-5
        # packed is the ideal k-bit size plus a few KiB of graph (int: codes in 4 or 8 bits); fake does not shrink
        assert reps["packed"]["bytes_file"] <= reps["packed"]["bytes_ideal"] * 1.1 + 4096
        if bits == 4:
            assert reps["int"]["bytes_file"] <= reps["int"]["bytes_ideal"] * 1.1 + 4096
        assert reps["fake"]["bytes_file"] >= reps["fake"]["bytes_fp32"]
        if bits == 8:
            assert np.abs(outs["fake"] - fp32).max() < 0.1
    # the same input gives the same bytes
    quantize_file(tiny_onnx, tmp_path / "again.onnx", QuantizeOptions(bits=3, format="packed"))
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "packed3.onnx").read_bytes()


def test_fold_bn_on_generator(tiny_onnx, tmp_path):
    z = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    rep = quantize_file(tiny_onnx, tmp_path / "f.onnx", QuantizeOptions(bits=32, fold_bn=True))
    assert rep["bn_folded"] == 3  # MatMul, two ConvTranspose
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(tmp_path / "f.onnx")).graph.node}
    assert np.abs(_run(tmp_path / "f.onnx", z) - _run(tiny_onnx, z)).max() <= 1e-5


def test_refuses_double_quantization_and_junk(tiny_onnx, tmp_path):
    quantize_file(tiny_onnx, tmp_path / "q.onnx", QuantizeOptions(bits=4))
    with pytest.raises(GanqError, match="already quantized"):
        quantize_file(tmp_path / "q.onnx", tmp_path / "qq.onnx", QuantizeOptions(bits=4))
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01junk")
    with pytest.raises(GanqError, match="not an ONNX model"):
        quantize_file(tmp_path / "junk.onnx", tmp_path / "out.onnx", QuantizeOptions(bits=4))
    assert not (tmp_path / "qq.onnx").exists() and not (tmp_path / "out.onnx").exists()


def test_bad_models(tiny_onnx, tmp_path):
    from ganq.onnx_io import load_model

    data = tiny_onnx.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(GanqError, match="not an ONNX model"):
        load_model(tmp_path / "trunc.onnx")
    # external data that points outside the model's folder
    m = onnx.load(str(tiny_onnx))
    (tmp_path / "sub").mkdir()
    onnx.save(m, str(tmp_path / "sub" / "ext.onnx"), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    ext = onnx.load(str(tmp_path / "sub" / "ext.onnx"), load_external_data=False)
    for t in ext.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(ext, str(tmp_path / "sub" / "evil.onnx"))
    with pytest.raises(GanqError, match="points outside"):
        load_model(tmp_path / "sub" / "evil.onnx")
    assert load_model(tmp_path / "sub" / "ext.onnx").graph.initializer[0].raw_data  # inside: loads
    # no quantizable weights
    g = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    with pytest.raises(GanqError, match="no quantizable weights"):
        quantize_model(helper.make_model(g), QuantizeOptions(bits=4))
    # NaN in a weight
    bad = _one_node(*CASES["conv"][0])
    w = numpy_helper.to_array(bad.graph.initializer[0]).copy()
    w[0, 0, 0, 0] = np.nan
    bad.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    with pytest.raises(GanqError, match="NaN"):
        quantize_model(bad, QuantizeOptions(bits=4))


def test_unwritable_out(tiny_onnx, tmp_path):
    import os
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GanqError, match="cannot write here"):  # a folder path through a file, even for root
        quantize_file(tiny_onnx, tmp_path / "afile" / "q.onnx", QuantizeOptions(bits=4))
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(GanqError, match="cannot write"):
            quantize_file(tiny_onnx, ro / "q.onnx", QuantizeOptions(bits=4))
    finally:
        os.chmod(ro, 0o700)
    with pytest.raises(GanqError, match="is a folder"):
        quantize_file(tiny_onnx, tmp_path, QuantizeOptions(bits=4))


def test_the_distill_curve_the_file_keeps_is_thinned_evenly():
    from ganq.quantize.pipeline import CURVE_POINTS, thin

    curve = [[i * 20, 1.0 / (i + 1)] for i in range(51)]
    t = thin(curve)
    assert len(t) == CURVE_POINTS and t[0] == curve[0] and t[-1] == curve[-1]
    steps = [s for s, _ in t]
    assert steps == sorted(set(steps)) and max(b - a for a, b in zip(steps, steps[1:])) <= 2 * 1000 / 16
    assert thin(curve[:5]) == curve[:5]
