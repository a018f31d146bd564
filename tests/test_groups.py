"""group:G granularity (issue 24): G consecutive weights of an output channel's row share a decoder, for every op the
op table knows, every method and every format (torch-free)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ganq.errors import GanqError
from ganq.quantize import QuantizeOptions, quantize_file, quantize_model
from ganq.quantize.decoders import parse_granularity, rows
from ganq.quantize.groups import solve_groups
from ganq.quantize.methods import METHODS, SolveContext, make_method


@pytest.mark.parametrize("text,want", [("tensor", ("tensor", None)), ("channel", ("channel", None)),
                                       ("group:16", ("group", 16)), ("group:128", ("group", 128))])
def test_granularity_parses(text, want):
    assert parse_granularity(text) == want


@pytest.mark.parametrize("text", ["group:8", "group:48", "group:", "group:x", "row", "group:-32", 32])
def test_bad_granularity_is_one_line(text):
    with pytest.raises(GanqError, match="granularity must be tensor, channel or group:G"):
        parse_granularity(text)
    with pytest.raises(GanqError, match="granularity must be"):
        QuantizeOptions(bits=4, granularity=text)


def test_minmax_groups_closed_form():
    """Each group of 16 (the last one 8) gets its own min-max grid: scale = (max - min) / (2^k - 1), offset = min,
    and every weight is within half a step."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 40)).astype(np.float32) * np.array([[1], [5], [0.1]], np.float32)
    sol = solve_groups(make_method("minmax"), w, 3, 0, 16)
    assert sol.group == 16 and sol.decoder.scale.shape == (3, 3) and sol.groups == 3
    for c in range(3):
        for j, (a, b) in enumerate(((0, 16), (16, 32), (32, 40))):
            g = w[c, a:b]
            assert sol.decoder.scale[c, j] == np.float32((np.float32(g.max()) - np.float32(g.min())) / np.float32(7))
            assert sol.decoder.offset[c, j] == g.min()
    err = np.abs(sol.dequantize() - w)
    step = np.repeat(sol.decoder.scale, 16, axis=1)[:, :40]
    assert np.all(err <= step / 2 + 1e-6)


def _round_to_nearest_methods():
    return [n for n, cls in METHODS.items() if not cls.calibrated and not cls.rewrites_input
            and not getattr(cls, "end_to_end", False)]


@pytest.mark.parametrize("method", _round_to_nearest_methods())
@pytest.mark.parametrize("axis", [0, 1])
def test_one_group_per_row_is_per_channel(method, axis):
    """With G >= K every row is one group: the same weights as per channel, for every round-to-nearest method."""
    w = np.random.default_rng(1).standard_normal((4, 5, 3, 3)).astype(np.float32)
    m = make_method(method)
    k = w.size // w.shape[axis]
    got = solve_groups(m, w, 3, axis, 64).dequantize()
    assert k <= 64 and np.array_equal(got, m.solve(w, 3, axis).dequantize())


@pytest.mark.parametrize("method", ["gptq", "adaround"])
def test_one_group_per_row_is_per_channel_for_calibrated_methods(method):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 20)).astype(np.float32)
    x = rng.standard_normal((20, 200))
    ctx = SolveContext(out_axis=0, hessian=x @ x.T / 200)
    m = make_method(method, {"steps": "50"} if method == "adaround" else {})
    grouped = m.solve(w, 3, 0, SolveContext(out_axis=0, hessian=ctx.hessian, group_size=32))
    assert grouped.group == 32 and np.array_equal(grouped.dequantize(), m.solve(w, 3, 0, ctx).dequantize())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10 ** 6), bits=st.integers(2, 4), k=st.integers(1, 70),
       method=st.sampled_from(["minmax", "mse", "symmetric", "kmeans", "gptq"]))
def test_every_group_holds_at_most_2k_values_on_its_grid(seed, bits, k, method):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, k)).astype(np.float32)
    m = make_method(method)
    if m.calibrated:
        x = rng.standard_normal((k, 64))
        sol = m.solve(w, bits, 0, SolveContext(out_axis=0, hessian=x @ x.T / 64 + 1e-3 * np.eye(k), group_size=16))
    else:
        sol = solve_groups(m, w, bits, 0, 16)
    w_hat = sol.dequantize()
    assert np.all(sol.codes < 2 ** bits)
    for j in range(0, k, 16):
        for c in range(3):
            assert len(np.unique(w_hat[c, j:j + 16])) <= 2 ** bits
    if sol.decoder.kind == "affine":  # on the group's grid: (q - zp) * scale + offset
        d = sol.row_decoder()
        q = (w_hat - d.offset) / d.scale + d.zero_point
        assert np.allclose(q, np.rint(q), atol=1e-3)


def _layers():
    from test_decode import _layer_then_bn

    return _layer_then_bn


@pytest.mark.parametrize("op,attrs", [("Conv", {}), ("ConvTranspose", {}), ("Gemm", {}), ("Gemm", {"transB": 1}),
                                      ("MatMul", {})])
@pytest.mark.parametrize("method", ["minmax", "kmeans", "symmetric"])
def test_formats_agree_and_onnx_reference_runs_them(op, attrs, method):
    """fake, int (blocked DequantizeLinear) and packed give the same outputs in onnxruntime, and onnx.reference
    runs the int and packed files to the same values (the ragged last group included: K = 54 or 6)."""
    from onnx.reference import ReferenceEvaluator

    from ganq.onnx_io import run

    m = _layers()(op, **attrs)
    x = np.random.default_rng(1).standard_normal((4, 6, 5, 5) if op.startswith("Conv") else (4, 6)).astype(np.float32)
    outs = {}
    for fmt in ("fake", "int", "packed"):
        q, rep = quantize_model(m, QuantizeOptions(bits=3, method=method, granularity="group:16", format=fmt))
        assert rep["tensors"][0]["granularity"] == "group:16"
        outs[fmt] = run(q, {"x": x})[0]
        if fmt != "fake":
            ref = ReferenceEvaluator(q).run(None, {"x": x})[0]
            assert np.abs(ref - outs[fmt]).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))
    for fmt in ("int", "packed"):
        assert np.abs(outs[fmt] - outs["fake"]).max() <= 1e-5 * max(1.0, float(np.abs(outs["fake"]).max()))


@pytest.mark.parametrize("op,attrs", [("Conv", {}), ("ConvTranspose", {}), ("Gemm", {"transB": 1}), ("MatMul", {})])
@pytest.mark.parametrize("fmt,method", [("int", "minmax"), ("packed", "mse"), ("packed", "kmeans")])
def test_batchnorm_folds_into_group_decoders_exactly(op, attrs, fmt, method):
    from ganq.onnx_io import run

    m = _layers()(op, **attrs)
    kw = dict(bits=3, method=method, granularity="group:16", format=fmt)
    plain, _ = quantize_model(m, QuantizeOptions(**kw))
    folded, rep = quantize_model(m, QuantizeOptions(**kw, bn_into_decoder=True))
    assert rep["bn_into_decoder"] == 1
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    x = np.random.default_rng(1).standard_normal((4, 6, 5, 5) if op.startswith("Conv") else (4, 6)).astype(np.float32)
    a, b = run(plain, {"x": x})[0], run(folded, {"x": x})[0]
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(a).max()))


@pytest.mark.parametrize("fmt", ["int", "packed"])
def test_group_files_count_their_decoders_and_decode_once(tiny_onnx, tmp_path, fmt):
    """The file in parts still sums, each tensor's decoder holds ceil(K / G) groups per channel, and decode once
    equals decode per call."""
    from ganq.runtime import Generator

    q = tmp_path / "q.onnx"
    rep = quantize_file(tiny_onnx, q, QuantizeOptions(bits=4, method="mse", granularity="group:16", format=fmt),
                        sizes=True)
    assert rep["bytes_codes"] + rep["bytes_decoders"] + rep["bytes_other"] == rep["bytes_file"]
    ch = quantize_file(tiny_onnx, tmp_path / "c.onnx", QuantizeOptions(bits=4, method="mse", granularity="channel",
                                                                       format=fmt))
    assert rep["bytes_decoders"] > ch["bytes_decoders"] and rep["bytes_codes"] == ch["bytes_codes"]
    once, per = Generator(q), Generator(q, decode="per-call")
    z = once.latents(9, 0)
    assert np.abs(once.run(z) - per.run(z)).max() <= 1e-6


def test_group_grids_lower_the_error(tiny_onnx):
    """Smaller groups, smaller weight error (the reason they exist): group:16 under channel at 3 bits."""
    from ganq.onnx_io import load_model, probe_inputs, read_spec, run

    model = load_model(tiny_onnx)
    spec = read_spec(model)
    feed = probe_inputs(spec, 16)
    (ref,) = run(model, feed, [spec.output_name])
    err = {}
    for g in ("channel", "group:16"):
        q, _ = quantize_model(model, QuantizeOptions(bits=3, method="minmax", granularity=g))
        (y,) = run(q, feed, [spec.output_name])
        err[g] = float(np.mean((y - ref) ** 2))
    assert err["group:16"] < err["channel"]


def test_refusals_before_work():
    with pytest.raises(GanqError, match="method ocs splits channels; it has no group:G"):
        QuantizeOptions(bits=4, method="ocs", granularity="group:32")
    with pytest.raises(GanqError, match="--activations needs --granularity tensor or channel"):
        QuantizeOptions(bits=8, method="symmetric", granularity="group:32", format="int", activations=8)


def test_plan_chooses_granularity_per_tensor(tiny_onnx):
    """A plan may give one tensor group:16 and leave the rest per channel; the record says so per tensor."""
    from ganq.onnx_io import load_model
    from ganq.quantize.plan import make_plan

    model = load_model(tiny_onnx)
    first = make_plan(model, 4, make_method("minmax"), "channel").tensors[0].target.name
    plan = make_plan(model, 4, make_method("minmax"), "channel", overrides={first: {"granularity": "group:16"}})
    grans = {t.target.name: t.granularity for t in plan.tensors}
    assert grans[first] == "group:16" and set(grans.values()) == {"group:16", "channel"}
    _, rep = quantize_model(model, QuantizeOptions(bits=4, granularity="channel"), plan=plan)
    got = {r["tensor"]: r["granularity"] for r in rep["tensors"]}
    assert got[first] == "group:16"


def test_cli_bad_granularity_is_one_line(tiny_onnx, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "q.onnx"
    r = subprocess.run([sys.executable, "-m", "ganq", "quantize", str(tiny_onnx), "--bits", "4", "--granularity",
                        "group:24", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "group:G" in r.stderr
    assert not out.exists()


def test_rows_of_a_group_solution_follow_the_layer_columns():
    """Groups run along the row form (rows(weight, axis)): for a ConvTranspose weight [I, O, k, k] (axis 1) the
    first group of output channel o is the first G of rows(w, 1)[o]."""
    w = np.random.default_rng(3).standard_normal((4, 2, 3, 3)).astype(np.float32)
    sol = solve_groups(make_method("minmax"), w, 4, 1, 16)
    r = rows(w, 1)
    assert sol.decoder.offset.shape == (2, 3)
    assert np.allclose(sol.decoder.offset[:, 0], r[:, :16].min(axis=1))


# --- --format nbits: onnxruntime's MatMulNBits ----------------------------------------------------------------

def _gemm(op: str, k: int = 40, n: int = 12, **attrs):
    """x [N, k] -> op (weight, a bias for Gemm) -> y [N, n], seeded."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    trans = attrs.get("transB", 0)
    w = rng.standard_normal((n, k) if trans else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if op == "Gemm":
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "c"))
        inputs.append("c")
    g = helper.make_graph([helper.make_node(op, inputs, ["y"], **attrs)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("op,attrs", [("MatMul", {}), ("Gemm", {}), ("Gemm", {"transB": 1}),
                                      ("Gemm", {"transB": 1, "beta": 0.5})])
@pytest.mark.parametrize("bits,method", [(2, "minmax"), (3, "mse"), (4, "symmetric"), (4, "aciq"), (8, "minmax"),
                                         (8, "symmetric")])
def test_nbits_files_run_in_onnxruntime_and_equal_their_reference_decode(op, attrs, bits, method):
    from onnx import numpy_helper

    from ganq.onnx_io import run
    from ganq.quantize import nbits

    m = _gemm(op, **attrs)
    kw = dict(bits=bits, method=method, granularity="group:16")
    q, rep = quantize_model(m, QuantizeOptions(**kw, format="nbits"))
    fake, _ = quantize_model(m, QuantizeOptions(**kw, format="fake"))
    node = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
    assert node.domain == "com.microsoft" and [n.op_type for n in q.graph.node] == ["MatMulNBits"]
    info = rep["tensors"][0]["info"]["nbits"]
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    a = {"B": inits[node.input[1]], "scales": inits[node.input[2]], "zero_points": inits[node.input[3]],
         "bits": info["container_bits"], "K": 40, "N": 12, "block": 16}
    w = nbits.decode(a)                       # [N, K]
    x = np.random.default_rng(5).standard_normal((7, 40)).astype(np.float32)
    bias = inits[node.input[5]] if len(node.input) > 5 else 0
    got = run(q, {"x": x})[0]
    assert np.abs(got - (x @ w.T + bias)).max() <= 1e-4
    # the same weights as the fake file: exactly for a zero-centred grid, to float rounding with float zero points,
    # and the nearest integer grid (its difference recorded) in the 8-bit container with an offset
    want = run(fake, {"x": x})[0]
    if info["zero_point"] == "uint8 (nearest grid)":
        assert bits == 8 and method == "minmax" and info["max_abs"] > 0
        assert np.abs(got - want).max() <= 40 * info["max_abs"] + 1e-4
    else:
        assert info["max_abs"] <= (0 if method == "symmetric" else 1e-6)
        assert np.abs(got - want).max() <= 1e-4
    assert info["bytes_codes"] == a["B"].nbytes == 12 * 3 * 16 * info["container_bits"] // 8


def test_nbits_keeps_other_ops_in_the_int_form_and_says_why(tiny_onnx, tmp_path):
    from ganq.onnx_io import load_model, probe_inputs, read_spec, run

    rep = quantize_file(tiny_onnx, tmp_path / "n.onnx", QuantizeOptions(bits=4, granularity="group:16",
                                                                        format="nbits"))
    kept = [r for r in rep["tensors"] if "kept_int" in r["info"]["nbits"]]
    done = [r for r in rep["tensors"] if "op" in r["info"]["nbits"]]
    assert done and kept and all(r["op"] in ("Conv", "ConvTranspose") for r in kept)
    fake = quantize_file(tiny_onnx, tmp_path / "f.onnx", QuantizeOptions(bits=4, granularity="group:16"))
    spec = read_spec(load_model(tiny_onnx))
    feed = probe_inputs(spec, 8)
    a = run(load_model(tmp_path / "n.onnx"), feed)[0]
    b = run(load_model(tmp_path / "f.onnx"), feed)[0]
    assert fake and np.abs(a - b).max() <= 1e-4


def test_nbits_with_batchnorm_folded(tmp_path):
    from ganq.onnx_io import run

    m = _layers()("Gemm", transB=1)
    kw = dict(bits=4, method="mse", granularity="group:16")
    plain, _ = quantize_model(m, QuantizeOptions(**kw, format="fake"))
    folded, rep = quantize_model(m, QuantizeOptions(**kw, format="nbits", bn_into_decoder=True))
    assert [n.op_type for n in folded.graph.node] == ["MatMulNBits"] and rep["bn_into_decoder"] == 1
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    a, b = run(plain, {"x": x})[0], run(folded, {"x": x})[0]
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(a).max()))


def test_nbits_needs_groups():
    with pytest.raises(GanqError, match="--format nbits needs --granularity group:G"):
        QuantizeOptions(bits=4, granularity="channel", format="nbits")


def test_minmax_integer_zero_point_is_onnxruntimes_asymmetric_grid():
    """zero_point=integer: zp = round(-min / scale), no offset, zero exact; within one step of every weight."""
    w = np.random.default_rng(6).standard_normal((5, 64)).astype(np.float32)
    sol = make_method("minmax", {"zero_point": "integer"}).solve(w, 4, 0)
    d = sol.decoder
    scale = (w.max(axis=1) - w.min(axis=1)) / np.float32(15)
    assert not d.has_offset and np.array_equal(d.zero_point.ravel(), np.rint(-w.min(axis=1) / scale))
    assert np.all(np.abs(sol.dequantize() - w) <= d.scale + 1e-6)
    assert np.all(Affine_decode_zero(d) == 0)


def Affine_decode_zero(d):
    return d.decode(d.zero_point.copy())


def test_nbits_with_integer_zero_points_is_bit_identical():
    m = _gemm("MatMul")
    kw = dict(bits=4, method="minmax", method_opts=(("zero_point", "integer"),), granularity="group:16")
    q, rep = quantize_model(m, QuantizeOptions(**kw, format="nbits"))
    info = rep["tensors"][0]["info"]["nbits"]
    assert info["zero_point"] == "uint8" and info["max_abs"] == 0


def test_symmetric_full_range_uses_every_code():
    """range=full: the weight of largest magnitude maps to -2^(k-1) exactly (a negative scale where it is
    positive), 2^k levels; narrow keeps 2^k - 1; full is refused by --activations (negative scales)."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((6, 64)).astype(np.float32)
    for bits in (2, 3, 4):
        full = make_method("symmetric", {"range": "full"}).solve(w, bits, 0)
        narrow = make_method("symmetric").solve(w, bits, 0)
        wf = full.dequantize()
        for c in range(6):
            v = w[c, np.abs(w[c]).argmax()]
            assert wf[c, np.abs(w[c]).argmax()] == v
            assert full.decoder.scale.ravel()[c] == np.float32(v / np.float32(-(2 ** (bits - 1))))
        assert full.codes.max() - full.codes.min() <= 2 ** bits - 1 and narrow.codes.min() >= 1
        assert len(np.unique(full.codes)) > len(np.unique(narrow.codes)) or bits > 2
    with pytest.raises(GanqError, match="--activations needs a symmetric weight grid"):
        QuantizeOptions(bits=8, method="symmetric", method_opts=(("range", "full"),), granularity="channel",
                        format="int", activations=8)
    m = _gemm("MatMul")
    _, rep = quantize_model(m, QuantizeOptions(bits=2, method="symmetric", method_opts=(("range", "full"),),
                                               granularity="group:16", format="nbits"))
    info = rep["tensors"][0]["info"]["nbits"]
    assert info["zero_point"] == "uint8" and info["max_abs"] == 0
