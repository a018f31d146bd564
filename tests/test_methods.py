"""The quantization methods: closed forms, properties (hypothesis), every method x format against onnxruntime and
onnx.reference, mixed plans, and models from older exporters (IR 3, opset 9)."""

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
from ganq.quantize import QuantizeOptions, quantize_file, quantize_model
from ganq.quantize.decoders import Codebook
from ganq.quantize.methods import METHODS, SolveContext, make_method, parse_method_opts
from ganq.quantize.methods.aciq import GAUSSIAN, LAPLACE, alpha_ratio
from ganq.quantize.methods.ocs import split_channels
from ganq.onnx_io import META_QUANT, read_metadata

ALL = [n for n in METHODS.names() if not METHODS.get(n).calibrated]  # the calibrated ones: test_calibrate.py
CTX = SolveContext("W", "Gemm", in_axis=1, x_axis=1)  # rows of x below are output channels, columns inputs


def err(x, sol):
    return float(np.sum((x.astype(np.float64) - sol.dequantize()) ** 2))


def bits_for(name, bits):
    cls = METHODS.get(name)
    return min(max(bits, cls.min_bits), cls.max_bits)


weights = arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(2, 9)),
                 elements=st.floats(-50, 50, width=32, allow_nan=False, allow_subnormal=False))


def test_registry_lists_every_method_in_the_issue_order():
    assert METHODS.names() == ["minmax", "symmetric", "mse", "aciq", "log2", "tanh", "em", "kmeans", "ocs", "gptq",
                               "adaround", "distill"]
    assert ALL == METHODS.names()[:9]
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert cls.summary and cls.paper and cls.__doc__ and len(cls.summary) < 120


@settings(max_examples=25, deadline=None)
@given(weights, st.integers(1, 8), st.sampled_from(ALL), st.sampled_from([None, 0]))
def test_levels_shape_and_stability(x, bits, name, axis):
    """At most 2^k values per tensor or channel; codes in range; x_hat is float32; quantizing x_hat is stable."""
    bits = bits_for(name, bits)
    m = make_method(name)
    sol = m.solve(x, bits, axis, CTX)
    xh = sol.dequantize()
    assert xh.dtype == np.float32 and sol.codes.max() <= 2 ** bits - 1
    if name == "ocs":
        assert xh.shape[0] == x.shape[0] and xh.shape[1] == x.shape[1] + len(sol.split)
        return
    assert xh.shape == x.shape
    groups = [xh] if axis is None else list(xh)
    assert all(len(np.unique(g)) <= 2 ** bits for g in groups)
    again = m.solve(xh, bits, axis, CTX).dequantize()
    if name in ("minmax", "symmetric", "log2", "tanh", "kmeans", "em"):
        # the grid is a function of the range (or the values), which x_hat keeps: the same floats come back
        assert np.allclose(again, xh, rtol=0, atol=1e-6 * max(1.0, float(np.abs(x).max()))), name
    else:  # mse / aciq re-choose a clipping range on x_hat: no worse than the first pass on x_hat itself
        assert err(xh, m.solve(xh, bits, axis, CTX)) <= err(x, sol) + 1e-6 * float(np.abs(x).max()) ** 2 * x.size


def test_idempotent_exactly_on_typical_weights():
    x = np.random.default_rng(0).standard_normal((8, 300)).astype(np.float32) * 0.05
    for name in ("minmax", "symmetric", "log2", "tanh", "kmeans"):
        for axis in (None, 0):
            m = make_method(name)
            xh = m.solve(x, 3, axis).dequantize()
            assert np.array_equal(m.solve(xh, 3, axis).dequantize(), xh), (name, axis)


@settings(max_examples=30, deadline=None)
@given(weights, st.integers(2, 12), st.sampled_from([None, 0]))
def test_symmetric_grid(x, bits, axis):
    sol = make_method("symmetric").solve(x, bits, axis)
    dec = sol.decoder
    grid = (np.arange(2 ** bits) - dec.zero_point.reshape(-1)[0]).astype(np.float32)
    for s in np.atleast_1d(dec.scale.reshape(-1)):
        levels = (grid[1:] * s).astype(np.float32)  # the codes used: 1 .. 2^k - 1
        assert np.array_equal(levels, -levels[::-1])  # symmetric about 0, 0 exact
    assert np.all(dec.offset == 0) and np.all(sol.codes >= 1)


@settings(max_examples=30, deadline=None)
@given(weights, st.integers(1, 8), st.sampled_from([None, 0]))
def test_error_orderings(x, bits, axis):
    """mse <= minmax; em <= its min-max start; kmeans (from em) <= em."""
    mm = err(x, make_method("minmax").solve(x, bits, axis))
    em = err(x, make_method("em").solve(x, bits, axis))
    assert err(x, make_method("mse").solve(x, bits, axis)) <= mm
    assert em <= mm
    assert err(x, make_method("kmeans", {"init": "em"}).solve(x, bits, axis)) <= em


def test_mse_and_em_beat_minmax_on_heavy_tails():
    x = np.random.default_rng(1).laplace(size=(4, 4000)).astype(np.float32)
    for b in (2, 3, 4):
        mm = err(x, make_method("minmax").solve(x, b, 0))
        assert err(x, make_method("mse").solve(x, b, 0)) < 0.8 * mm
        assert err(x, make_method("em").solve(x, b, 0)) < mm
        assert err(x, make_method("kmeans").solve(x, b, 0)) < err(x, make_method("em").solve(x, b, 0))


@settings(max_examples=30, deadline=None)
@given(weights, st.integers(2, 8), st.sampled_from([None, 0]))
def test_log2_levels_are_powers_of_two(x, bits, axis):
    xh = make_method("log2").solve(x, bits, axis).dequantize()
    nz = np.abs(xh[xh != 0]).astype(np.float64)
    assert np.array_equal(np.exp2(np.rint(np.log2(nz))), nz)
    assert np.all(np.sign(xh[xh != 0]) == np.sign(x[xh != 0]))


def test_log2_closed_form():
    x = np.array([0.0, 0.3, -0.26, 1.0, -0.9, 0.04, 0.1], np.float32)
    # 3 bits: e_max = round(log2 1) = 0, exponents 0, -1, -2; zero below 2^-3
    xh = make_method("log2").solve(x, 3, None).dequantize()
    assert xh.tolist() == [0.0, 0.25, -0.25, 1.0, -1.0, 0.0, 0.125 * 0 + 0.25 * (0.1 >= 0.125)]


@pytest.mark.parametrize("prior,table,dist", [("laplace", LAPLACE, "laplace"), ("gaussian", GAUSSIAN, "normal")])
def test_aciq_alpha_matches_the_table(prior, table, dist):
    rng = np.random.default_rng(0)
    x = (getattr(rng, dist)(size=400_000) * 0.02).astype(np.float32)
    true_spread = 0.02  # Laplace b = 0.02; Gaussian sigma = 0.02
    for bits, ratio in table.items():
        sol = make_method("aciq", {"prior": prior}).solve(x, bits, None)
        assert abs(sol.info["alpha_mean"] / (ratio * true_spread) - 1) < 0.01, (prior, bits)
        # the formula reproduces the paper's table
        from scipy.optimize import minimize_scalar  # noqa: F401
    import ganq.quantize.methods.aciq as aciq
    t = aciq.LAPLACE if prior == "laplace" else aciq.GAUSSIAN
    saved = dict(t)
    try:
        t.clear()
        aciq.alpha_ratio.cache_clear()
        for bits, ratio in saved.items():
            assert abs(alpha_ratio(prior, bits) / ratio - 1) < 0.005
    finally:
        t.update(saved)
        aciq.alpha_ratio.cache_clear()


def test_tanh_compands():
    x = np.random.default_rng(2).standard_normal(5000).astype(np.float32)
    sol = make_method("tanh").solve(x, 3, None)
    lv = sol.decoder.levels
    assert isinstance(sol.decoder, Codebook) and lv[0] == -np.abs(x).max() and lv[-1] == np.abs(x).max()
    gaps = np.diff(lv)
    assert np.all(gaps[:3] > gaps[1:4]) and gaps[3] == gaps.min()  # dense near zero


def test_ocs_split_is_exact_and_within_grid():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 20)).astype(np.float32)
    w[2, 7] = 9.0  # an outlier input channel (column 7)
    ws, source = split_channels(w, 1, 3)
    assert source[0] == 7 and ws.shape == (6, 23)
    x = rng.standard_normal((20, 11)).astype(np.float64)
    xs = np.concatenate([x, x[source]], axis=0)
    assert np.allclose(ws @ xs, w @ x, atol=1e-12)  # splitting alone changes nothing
    for bits in (3, 4, 8):
        sol = make_method("ocs", {"ratio": 0.15}).solve(w, bits, None, CTX)
        wh = sol.dequantize().astype(np.float64)
        step = float(sol.decoder.scale)
        # each original weight is the sum of at most 1 + (splits) grid points, each within step / 2
        merged = wh[:, :20].copy()
        for j, s in enumerate(sol.split):
            merged[:, s] += wh[:, 20 + j]
        assert np.all(np.abs(merged - w) <= step * (1 + len(sol.split)) / 2 + 1e-6)
        assert np.allclose(wh @ np.concatenate([x, x[list(sol.split)]]), merged @ x)
        # the split range is smaller than min-max's, so is the step
        mm = make_method("minmax").solve(w, bits, None)
        assert step < float(mm.decoder.scale)


def test_bad_method_options():
    for name, opts, msg in (("aciq", {"prior": "cauchy"}, "laplace, gaussian"),
                            ("mse", {"steps": "1"}, "2..10000"), ("mse", {"steps": "x"}, "must be a int"),
                            ("ocs", {"ratio": "0"}, r"\(0, 1\]"), ("log2", {"foo": "1"}, "options: none"), ("symmetric", {"range": "wide"}, "narrow, full"), ("minmax", {"zero_point": "int"}, "float, integer"),
                            ("kmeans", {"seed": "1"}, "init, iters"), ("nope", {}, "unknown method")):
        with pytest.raises(GanqError, match=msg):
            make_method(name, opts)
    with pytest.raises(GanqError, match="KEY=VALUE"):
        parse_method_opts(["prior"])
    with pytest.raises(GanqError, match="twice"):
        parse_method_opts(["a=1", "a=2"])
    for name, bits, msg in (("symmetric", 1, "2 to 16 bits"), ("log2", 1, "2 to 8"), ("kmeans", 9, "1 to 8"),
                            ("tanh", 12, "1 to 8")):
        with pytest.raises(GanqError, match=msg):
            QuantizeOptions(bits=bits, method=name)


# --- every method x every format on one-node graphs ------------------------------------------------------------

def _one_node(op, w_shape, x_shape, y_shape, opset=21, seed=0, **attrs):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(w_shape) * rng.uniform(0.5, 2, w_shape)).astype(np.float32)
    node = helper.make_node(op, ["X", "W"], ["Y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)],
                          initializer=[numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


CASES = {
    "conv": (("Conv", (4, 3, 3, 3), [2, 3, 8, 8], [2, 4, 6, 6]), {}),
    "convT": (("ConvTranspose", (3, 5, 4, 4), [2, 3, 4, 4], [2, 5, 10, 10]), {"strides": [2, 2]}),
    "gemm_tB": (("Gemm", (6, 5), [2, 5], [2, 6]), {"transB": 1}),
    "matmul": (("MatMul", (5, 6), [2, 5], [2, 6]), {}),
}


def _session(model):
    # ganq's session options: stock onnxruntime fuses DequantizeLinear -> MatMul (when no Add sits between, as with
    # symmetric's zero offset) into MatMulNBits with int8 activations (errors ~1e-2); test_stock_fusion shows it
    from ganq.onnx_io import session_options

    return ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])


def test_stock_onnxruntime_fuses_dq_matmul():
    """A finding kept as a test: default onnxruntime runs a symmetric int MatMul with 8-bit activations."""
    args, attrs = CASES["matmul"]
    m = _one_node(*args, **attrs)
    x = np.random.default_rng(1).standard_normal(args[2]).astype(np.float32)
    qm, _ = quantize_model(m, QuantizeOptions(bits=3, method="symmetric", format="int"))
    fake, _ = quantize_model(m, QuantizeOptions(bits=3, method="symmetric", format="fake"))
    want = ReferenceEvaluator(fake).run(None, {"X": x})[0]
    stock = ort.InferenceSession(qm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    assert np.abs(_session(qm).run(None, {"X": x})[0] - want).max() <= 1e-5
    assert np.abs(stock - want).max() > 1e-4  # if this fails, onnxruntime stopped fusing: drop the workaround


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_every_method_in_every_format(case, name, granularity):
    args, attrs = CASES[case]
    m = _one_node(*args, **attrs)
    bits = bits_for(name, 3)
    x = np.random.default_rng(1).standard_normal(args[2]).astype(np.float32)
    models, outs = {}, {}
    for fmt in ("fake", "int", "packed"):
        qm, rep = quantize_model(m, QuantizeOptions(bits=bits, method=name, granularity=granularity, format=fmt))
        models[fmt] = qm
        outs[fmt] = _session(qm).run(None, {"X": x})[0]
        assert np.allclose(ReferenceEvaluator(qm).run(None, {"X": x})[0], outs[fmt], atol=1e-5)
        meta = json.loads(read_metadata(qm)[META_QUANT])
        assert meta["tensors"][0]["method"] == name and meta["tensors"][0]["bits"] == bits
    # weights bit-identical across formats: the decoded initializer of fake equals what int/packed compute
    w_fake = numpy_helper.to_array(next(i for i in models["fake"].graph.initializer if i.name == "W"))
    for fmt in ("int", "packed"):
        probe = onnx.ModelProto.FromString(models[fmt].SerializeToString())
        probe.graph.output.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, None))
        assert np.array_equal(_session(probe).run(["W"], {"X": x})[0], w_fake), fmt
        assert np.array_equal(ReferenceEvaluator(probe).run(["W"], {"X": x})[0], w_fake), fmt
        assert np.abs(outs[fmt] - outs["fake"]).max() <= 1e-5
    # the fake graph computes the layer with the quantized weights (OCS: with its split input)
    if name != "ocs":
        ref = onnx.ModelProto.FromString(m.SerializeToString())
        ref.graph.initializer[0].CopyFrom(numpy_helper.from_array(w_fake, "W"))
        assert np.allclose(outs["fake"], ReferenceEvaluator(ref).run(None, {"X": x})[0], atol=1e-5)
    else:
        want = ReferenceEvaluator(m).run(None, {"X": x})[0]  # the float layer: OCS changes it only by the grid
        assert np.abs(outs["fake"] - want).max() < np.abs(want).max()


def test_ocs_at_high_bits_equals_the_float_layer():
    for case in CASES:
        args, attrs = CASES[case]
        m = _one_node(*args, **attrs)
        x = np.random.default_rng(1).standard_normal(args[2]).astype(np.float32)
        qm, rep = quantize_model(m, QuantizeOptions(bits=16, method="ocs", method_opts=(("ratio", "0.3"),),
                                                    format="int"))
        assert rep["tensors"][0]["split_channels"] >= 1
        assert np.allclose(_session(qm).run(None, {"X": x})[0], _session(m).run(None, {"X": x})[0], atol=1e-3)


def test_ocs_refuses_a_shared_weight():
    m = _one_node(*CASES["matmul"][0])
    m.graph.node.append(helper.make_node("MatMul", ["X", "W"], ["Y2"]))
    m.graph.output.append(helper.make_tensor_value_info("Y2", TensorProto.FLOAT, [2, 6]))
    with pytest.raises(GanqError, match="feeds 2 nodes"):
        quantize_model(m, QuantizeOptions(bits=4, method="ocs"))


# --- mixed plans ------------------------------------------------------------------------------------------------

def test_mixed_plan_on_a_generator(tiny_onnx, tmp_path):
    z = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    opts = QuantizeOptions(bits=3, format="packed", granularity="channel",
                           tensor_bits=(("first", 8), ("last", 8)))
    rep = quantize_file(tiny_onnx, tmp_path / "mixed.onnx", opts)
    bits = [t["bits"] for t in rep["tensors"]]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {3} and rep["mixed"]
    assert 3 < rep["avg_bits"] < 8
    meta = json.loads(read_metadata(onnx.load(str(tmp_path / "mixed.onnx")))[META_QUANT])
    assert [t["bits"] for t in meta["tensors"]] == bits
    fake = quantize_file(tiny_onnx, tmp_path / "mixed-fake.onnx", QuantizeOptions(
        bits=3, format="fake", granularity="channel", tensor_bits=(("first", 8), ("last", 8))))
    run = lambda p: _session(onnx.load(str(p))).run(None, {"z": z})[0]  # noqa
    assert np.abs(run(tmp_path / "mixed.onnx") - run(tmp_path / "mixed-fake.onnx")).max() <= 1e-5
    assert fake["tensors"][0]["bits"] == 8
    # a plan file: one tensor with another method, one left float
    names = [t["tensor"] for t in rep["tensors"]]
    plan = {"tensors": {names[0]: {"bits": 32}, names[1]: {"bits": 4, "method": "kmeans"}}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    rep2 = quantize_file(tiny_onnx, tmp_path / "plan.onnx", QuantizeOptions(bits=3, format="int",
                                                                              plan_file=str(tmp_path / "plan.json")))
    got = {t["tensor"]: (t["bits"], t["method"], t["decoder"]) for t in rep2["tensors"]}
    assert names[0] not in got and got[names[1]] == (4, "kmeans", "codebook")
    assert run(tmp_path / "plan.onnx").shape == (8, 1, 28, 28)
    for bad, msg in (({"tensors": {"nope": {"bits": 3}}}, "not a quantizable weight"),
                     ({"tensors": {names[0]: {"bits": 0}}}, "from 1 to 16"),
                     ({"tensors": {names[0]: {"bitz": 3}}}, "unknown keys"), ([1], "a plan is")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(GanqError, match=msg):
            quantize_file(tiny_onnx, tmp_path / "bad.onnx", QuantizeOptions(bits=3, plan_file=str(tmp_path / "bad.json")))
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("name", ALL)
def test_every_method_on_a_generator(tiny_onnx, tmp_path, name):
    z = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    bits = bits_for(name, 3)
    outs, reps = {}, {}
    for fmt in ("fake", "int", "packed"):
        reps[fmt] = quantize_file(tiny_onnx, tmp_path / f"{fmt}.onnx", QuantizeOptions(
            bits=bits, method=name, granularity="channel", format=fmt))
        outs[fmt] = _session(onnx.load(str(tmp_path / f"{fmt}.onnx"))).run(None, {"z": z})[0]
    assert np.abs(outs["int"] - outs["fake"]).max() <= 1e-5 and np.abs(outs["packed"] - outs["fake"]).max() <= 1e-5
    assert reps["packed"]["bytes_file"] <= 1.1 * reps["packed"]["bytes_ideal"] + 4096
    again = quantize_file(tiny_onnx, tmp_path / "again.onnx", QuantizeOptions(
        bits=bits, method=name, granularity="channel", format="packed"))
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "packed.onnx").read_bytes()
    assert again["bytes_file"] == reps["packed"]["bytes_file"]


# --- models from older exporters ------------------------------------------------------------------------------

def _legacy(ir=3, opset=9):
    """A Gemm + Relu + MatMul model as an IR-3 exporter writes it: every initializer also a graph input."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 5)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    w2 = rng.standard_normal((6, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"), numpy_helper.from_array(w2, "W2")]
    nodes = [helper.make_node("Gemm", ["X", "W1", "B1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["Y"])]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 5])] + [
        helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in inits]
    g = helper.make_graph(nodes, "legacy", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 4])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


@pytest.mark.parametrize("fmt", ["fake", "int", "packed"])
def test_ir3_opset9_models(fmt):
    m = _legacy()
    x = np.random.default_rng(5).standard_normal((2, 5)).astype(np.float32)
    want = ReferenceEvaluator(m).run(None, {"X": x})[0]
    qm, rep = quantize_model(m, QuantizeOptions(bits=8, format=fmt))
    assert {t["tensor"] for t in rep["tensors"]} == {"W1", "W2"}
    assert any("IR version 3" in n and "treated as constants" in n for n in rep["notes"])
    assert [i.name for i in qm.graph.input] == ["X"] and qm.ir_version >= 4
    if fmt != "fake":
        assert rep["opset"] == 21 and any("opset 9 -> 21" in n for n in rep["notes"])
    got = _session(qm).run(None, {"X": x})[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    # kept overridable: nothing to quantize, and the message says why
    with pytest.raises(GanqError, match="graph inputs; drop --keep-overridable"):
        quantize_model(m, QuantizeOptions(bits=8, format=fmt, keep_overridable=True))


def test_cli_methods(tiny_onnx, tmp_path):
    from typer.testing import CliRunner

    from ganq.cli import app

    r = CliRunner().invoke(app, ["quantize", "--help"])
    assert r.exit_code == 0 and all(f"{n}:" in r.output for n in ALL)
    r = CliRunner().invoke(app, ["quantize", str(tiny_onnx), "--bits", "3", "--method", "aciq", "--method-opt",
                                 "prior=gaussian", "--granularity", "channel", "--format", "packed",
                                 "--out", str(tmp_path / "a.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["method"] == "aciq" and rep["tensors"][0]["method_opts"] == {"prior": "gaussian"}
    for args, msg in ((["--method", "nope"], "unknown method 'nope'"),
                      (["--method", "aciq", "--method-opt", "prior=cauchy"], "prior must be one of"),
                      (["--method", "mse", "--method-opt", "nope=1"], "options: steps, min_shrink"),
                      (["--method", "log2", "--bits", "1"], "2 to 8 bits"),
                      (["--tensor-bits", "x"], "NAME=BITS")):
        full = ["quantize", str(tiny_onnx), "--bits", "3", "--out", str(tmp_path / "bad.onnx")] + args
        if "--bits" in args:
            full = ["quantize", str(tiny_onnx), "--out", str(tmp_path / "bad.onnx")] + args
        r = CliRunner().invoke(app, full)
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, (args, r.output)
        assert not (tmp_path / "bad.onnx").exists()
