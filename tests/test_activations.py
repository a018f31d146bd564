"""Integer generators (issue 25): --activations puts QDQ pairs on the activations, calibrated on the calibration
latents. Checked against closed forms on the captured tensors (min-max exactly, percentile against numpy), against
onnx.reference (the fake-quantized graph), and against onnxruntime's QDQ fusion (integer kernels in the optimized
model). Torch-free."""

from __future__ import annotations

import collections
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ganq.errors import GanqError
from ganq.quantize import QuantizeOptions, quantize_file, quantize_model

SYM = dict(method="symmetric", granularity="channel", format="int")


def _act(**kw) -> QuantizeOptions:
    return QuantizeOptions(**{"bits": 8, **SYM, "activations": 8, **kw})


def _pairs(model) -> dict[str, tuple[float, int, int]]:
    """{quantized tensor: (scale, zero point, ONNX type of the codes)} from the file's QuantizeLinear nodes."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = inits[n.input[2]]
            out[n.input[0]] = (float(numpy_helper.to_array(inits[n.input[1]])),
                               int(numpy_helper.to_array(zp)), zp.data_type)
    return out


def _captured(tiny_onnx, tensors, n: int, **kw) -> dict[str, np.ndarray]:
    """The tensors over the calibration inputs, in the weight-quantized (BatchNorm-folded) graph the ranges see."""
    from ganq.onnx_io import read_spec, run, sample_inputs

    model, _ = quantize_model(onnx.load(tiny_onnx), QuantizeOptions(bits=kw.get("bits", 8), **SYM, fold_bn=True))
    spec = read_spec(model)
    feed = sample_inputs(spec, n, 0, calibration=True)
    return dict(zip(tensors, run(model, feed, outputs=list(tensors))))


def test_the_qdq_graph_is_valid_and_onnxruntime_fuses_it_into_integer_kernels(tiny_onnx, tmp_path):
    import onnxruntime as ort

    q = tmp_path / "w8a8.onnx"
    rep = quantize_file(tiny_onnx, q, _act())
    m = onnx.load(q)
    onnx.checker.check_model(m, full_check=True)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    assert ops["QuantizeLinear"] == rep["activations"]["tensors"] == len(_pairs(m)) and "BatchNormalization" not in ops
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)
    # the Conv and the MatMul (+ its folded BatchNorm's shift) run in integer; onnxruntime's CPU provider has no
    # integer ConvTranspose, so those stay float between their DequantizeLinear and QuantizeLinear
    assert fused["QLinearConv"] == 1 and fused["QGemm"] + fused["QLinearMatMul"] == 1, fused
    # 8-bit weights stay uint8 codes with one zero point 128 (int8 weights saturate on CPUs without VNNI)
    w = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert w["out.weight_q"].dtype == np.uint8 and np.all(w["out.weight_zp"] == 128)


def test_minmax_scale_and_zero_point_are_the_closed_form_of_the_captured_tensor(tiny_onnx, tmp_path):
    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, _act(calibration=64))
    pairs = _pairs(onnx.load(q))
    seen = _captured(tiny_onnx, list(pairs), 64)
    for t, (scale, zp, typ) in pairs.items():
        lo, hi = min(float(seen[t].min()), 0.0), max(float(seen[t].max()), 0.0)
        want = np.float32((hi - lo) / 255.0)
        assert typ == onnx.TensorProto.UINT8 and scale == pytest.approx(float(want), rel=1e-6), t
        assert zp == int(np.clip(np.round(-lo / float(want)), 0, 255)), t


def test_symmetric_activations_are_signed_with_zero_point_zero(tiny_onnx, tmp_path):
    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, _act(calibration=64, act_symmetric=True))
    pairs = _pairs(onnx.load(q))
    seen = _captured(tiny_onnx, list(pairs), 64)
    for t, (scale, zp, typ) in pairs.items():
        a = float(np.abs(seen[t]).max())
        assert typ == onnx.TensorProto.INT8 and zp == 0 and scale == pytest.approx(2 * a / 255, rel=1e-6), t


def test_percentile_ranges_are_numpys_percentiles_of_the_captured_tensor(tiny_onnx, tmp_path):
    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, _act(calibration=32, act_calibration="percentile", act_percentile=99.0))
    pairs = _pairs(onnx.load(q))
    seen = _captured(tiny_onnx, list(pairs), 32)
    for t, (scale, _, _) in pairs.items():
        v = seen[t].reshape(-1)
        assert v.size <= 2 ** 20  # every value kept: the percentile is exact
        lo, hi = min(float(np.percentile(v, 1.0)), 0.0), max(float(np.percentile(v, 99.0)), 0.0)
        assert scale == pytest.approx((hi - lo) / 255, rel=1e-5), t
        assert scale < (max(v.max(), 0) - min(v.min(), 0)) / 255  # the tails are clipped


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_mse_and_entropy_ranges_clip_inside_min_max(tiny_onnx, tmp_path, method):
    from ganq.quantize.activations import fake_quantize

    q = tmp_path / "q.onnx"
    rep = quantize_file(tiny_onnx, q, _act(calibration=32, act_calibration=method))
    pairs = _pairs(onnx.load(q))
    seen = _captured(tiny_onnx, list(pairs), 32)
    for t, (scale, zp, _) in pairs.items():
        v = seen[t].reshape(-1)
        mm = (max(v.max(), 0) - min(v.min(), 0)) / 255
        assert scale <= mm * (1 + 1e-6), t
        if method == "mse":  # never worse than min-max on the values it chose from
            lo = min(float(v.min()), 0.0)
            z = int(np.clip(np.round(-lo / mm), 0, 255))
            err = np.mean((fake_quantize(v, scale, zp, 8, False) - v) ** 2)
            assert err <= np.mean((fake_quantize(v, mm, z, 8, False) - v) ** 2) * (1 + 1e-6), t
    assert rep["activations"]["calibration"] == method


def test_outputs_equal_the_reference_of_the_fake_quantized_graph(tiny_onnx, tmp_path):
    from onnx.reference import ReferenceEvaluator

    from ganq.onnx_io import sample_latents, session
    from ganq.runtime import Generator

    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, _act(calibration=64))
    g = Generator(q)
    assert g.decode == "integer"  # a file with quantized activations runs onnxruntime's integer kernels
    z = sample_latents(g.spec, 16, 5)
    ref = ReferenceEvaluator(onnx.load(q)).run(None, {"z": z})[0]
    plain = session(q, optimization="disable").run(None, {"z": z})[0]
    assert np.abs(plain - ref).max() <= 1e-5
    fused = g.run(z)  # integer kernels requantize in their own arithmetic: a code may move by one step
    d = np.abs(fused - ref)
    assert d.mean() <= 1e-2 and np.mean(d > 0.05) <= 0.01, (d.mean(), d.max())


def test_keep_float_first_and_last_leave_those_layers_float(tiny_onnx, tmp_path):
    q = tmp_path / "q.onnx"
    rep = quantize_file(tiny_onnx, q, _act(keep_float=("first", "last", "h6")))
    pairs = _pairs(onnx.load(q))
    # first: the MatMul's input z and, as the layer ends after the folded BatchNorm's Add, that Add's output h1;
    # last: the Conv's input h9 and output h10
    kept = set(rep["activations"]["kept_float"])
    assert {"z", "h1", "h9", "h10", "h6"} <= kept and not {"z", "h1", "h9", "h10", "h6"} & set(pairs)
    assert "h3" in pairs


def test_activations_off_gives_todays_file(tiny_onnx, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_file(tiny_onnx, a, QuantizeOptions(bits=4, **SYM))
    quantize_file(tiny_onnx, b, QuantizeOptions(bits=4, **SYM, activations=0))
    assert a.read_bytes() == b.read_bytes() and "QuantizeLinear" not in {n.op_type for n in onnx.load(a).graph.node}


@pytest.mark.parametrize("kw,msg", [
    ({"activations": 7}, "--activations must be 8 or 16"),
    ({"act_percentile": 0.0}, r"--act-percentile must be in \(0, 100\]"),
    ({"act_percentile": 100.5}, r"--act-percentile must be in \(0, 100\]"),
    ({"act_calibration": "kl"}, "--act-calibration must be one of minmax, percentile, mse, entropy"),
    ({"method": "minmax"}, "--activations needs a symmetric weight grid"),
    ({"method": "gptq"}, "grid=symmetric"),
    ({"format": "packed"}, "--activations needs --format int"),
    ({"float_bits": 16}, "--float-bits 16"),
])
def test_bad_activation_options_are_refused_before_any_work(kw, msg):
    with pytest.raises(GanqError, match=msg):
        _act(**kw)


def test_options_that_need_activations_are_refused_without_them():
    with pytest.raises(GanqError, match="need --activations"):
        QuantizeOptions(bits=8, keep_float=("last",))


def test_cli_refuses_an_unknown_keep_float_tensor_in_one_line_and_writes_nothing(tiny_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    r = subprocess.run([sys.executable, "-m", "ganq", "quantize", str(tiny_onnx), "--out", str(out), "--bits", "8",
                        "--method", "symmetric", "--format", "int", "--activations", "8", "--keep-float", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "--keep-float nope" in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_weight_with_an_offset_is_refused_naming_it(tiny_onnx, tmp_path):
    # a plan that gives one tensor an offset grid (minmax) under --activations: refused after solving, nothing written
    import json

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tensors": {"up1.weight": {"method": "minmax"}}}))
    with pytest.raises(GanqError, match="weight up1.weight has an offset"):
        quantize_file(tiny_onnx, tmp_path / "q.onnx", _act(plan_file=str(plan)))
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("name", ["gptq", "adaround"])
def test_calibrated_methods_round_onto_the_symmetric_grid(tiny_onnx, tmp_path, name):
    opts = (("grid", "symmetric"),) + ((("steps", "20"),) if name == "adaround" else ())
    q = tmp_path / "q.onnx"
    rep = quantize_file(tiny_onnx, q, QuantizeOptions(bits=4, method=name, method_opts=opts, calibration=64,
                                                      activations=8, granularity="channel", format="int"))
    rows = {r["tensor"]: r for r in rep["tensors"]}
    assert rows["up1.weight"]["method"] == name
    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(q).graph.initializer}
    codes = w["up1.weight_q"].astype(np.int32)
    assert codes.min() >= -7 and codes.max() <= 7 and not np.any(w["up1.weight_zp"].astype(np.int32))
    info = rows["up1.weight"].get("info", rows["up1.weight"])
    if "output_error" in info:
        assert info["output_error"] <= info["output_error_nearest"] * (1 + 1e-9)


def test_another_tools_qdq_file_runs_integer_kernels_too(tiny_onnx, tmp_path):
    """onnxruntime's quantize_static file (the benchmark's anchor) gets the integer decode, not the float one."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from ganq.onnx_io import copy_metadata, load_model
    from ganq.runtime import Generator

    g = Generator(tiny_onnx)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"z": g.latents(16, 1)}])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "ort.onnx"
    quantize_static(str(tiny_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    m = onnx.load(out)
    copy_metadata(load_model(tiny_onnx, external_data=False), m)
    onnx.save(m, out)
    assert Generator(out).decode == "integer" and Generator(tiny_onnx).decode == "once"


def test_per_tensor_activation_bits_from_the_option_and_the_plan_file(tiny_onnx, tmp_path):
    import json

    q = tmp_path / "q.onnx"
    rep = quantize_file(tiny_onnx, q, _act(calibration=32, act_tensor_bits=(("h6", 16), ("h9", 32))))
    pairs = _pairs(onnx.load(q))
    assert pairs["h6"][2] == onnx.TensorProto.UINT16 and pairs["h3"][2] == onnx.TensorProto.UINT8
    assert "h9" not in pairs and "h9" in rep["activations"]["kept_float"] and rep["activations"]["at_16_bits"] == ["h6"]
    seen = _captured(tiny_onnx, ["h6"], 32)["h6"]
    assert pairs["h6"][0] == pytest.approx((max(seen.max(), 0) - min(seen.min(), 0)) / 65535, rel=1e-6)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tensors": {}, "activations": {"h6": 16, "last": 32}}))
    rep2 = quantize_file(tiny_onnx, tmp_path / "p.onnx", _act(calibration=32, plan_file=str(plan)))
    assert rep2["activations"]["at_16_bits"] == ["h6"] and "h9" in rep2["activations"]["kept_float"]
    with pytest.raises(GanqError, match="--act-tensor-bits must be NAME=8, NAME=16 or NAME=32"):
        from ganq.quantize.plan import parse_act_bits
        parse_act_bits(["h6=12"])
    with pytest.raises(GanqError, match="--act-tensor-bits nope: not an activation tensor"):
        quantize_file(tiny_onnx, tmp_path / "n.onnx", _act(calibration=32, act_tensor_bits=(("nope", 16),)))
    with pytest.raises(GanqError, match="need --activations"):
        QuantizeOptions(bits=8, **SYM, plan_file=str(plan))


def test_the_activation_search_widens_exactly_the_tensor_that_costs_quality(tiny_onnx, tiny_classifier,
                                                                              toy_data_root, tmp_path, monkeypatch):
    """A file whose h9 is quantized at 8 bits is made to cost 30 FID (by a wrapped evaluate): the search must widen
    h9 to 16 bits and nothing else, verify the file, and write the widths as a plan that --plan reuses."""
    import importlib
    import json

    from ganq.study.act_search import ActSearchOptions, activation_search

    ev = importlib.import_module("ganq.evaluate.run")
    real = ev.evaluate

    def h9_costs(model, *a, **k):
        out = real(model, *a, **k)
        pairs = _pairs(onnx.load(str(model))) if str(model).endswith(".onnx") else {}
        if "h9" in pairs and pairs["h9"][2] == onnx.TensorProto.UINT8:
            out["fid"] += 30.0
        return out

    monkeypatch.setattr(ev, "evaluate", h9_costs)
    out = tmp_path / "s.onnx"
    r = activation_search(tiny_onnx, out, _act(calibration=32), ActSearchOptions("fid=1.5", proxy_n=100, verify_n=100),
                          dataset="mnist", features=str(tiny_classifier[0]), data_root=toy_data_root)
    loss = {x["tensor"]: x["loss"] for x in r["tensors"]}
    assert max(loss, key=loss.get) == "h9" and loss["h9"] >= 25
    assert r["widened"] == {"h9": 16} and r["rounds"][-1]["meets"] and r["verified"] <= 1.5 * r["fp32"]
    assert json.loads((tmp_path / "s.onnx.plan.json").read_text()) == {"tensors": {}, "activations": {"h9": 16}}
    pairs = _pairs(onnx.load(out))
    assert pairs["h9"][2] == onnx.TensorProto.UINT16 and pairs["h3"][2] == onnx.TensorProto.UINT8
    again = quantize_file(tiny_onnx, tmp_path / "p.onnx", _act(calibration=32, plan_file=str(out) + ".plan.json"))
    assert again["activations"]["at_16_bits"] == ["h9"]


def test_the_activation_search_refuses_what_it_does_not_take():
    from ganq.study.act_search import check_request

    with pytest.raises(GanqError, match="takes --target only"):
        check_request(8, (), "300KiB", None, None)
    with pytest.raises(GanqError, match="drop --plan and --act-tensor-bits"):
        check_request(8, ["h6=16"], None, None, None)
    with pytest.raises(GanqError, match="needs --bits"):
        check_request(None, (), None, None, None)


def test_export_ort_keeps_an_integer_file_integer(tiny_onnx, tmp_path):
    from ganq.app.mobile import export_ort, read_operators

    q = tmp_path / "q.onnx"
    quantize_file(tiny_onnx, q, _act(calibration=32))
    r = export_ort(q, tmp_path / "q.ort")
    ops = read_operators(tmp_path / "q.required_operators.config")
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops) and "BatchNormalization" not in ops, (r, ops)


@pytest.mark.parametrize("name", ["gptq", "adaround"])
def test_calibrated_methods_see_the_quantized_activations(tiny_onnx, tmp_path, monkeypatch, name):
    """Under --activations a calibrated method's layer inputs are the 8-bit activations (at most 256 distinct
    values a tensor), and the file keeps exactly one pair per activation tensor."""
    from ganq.quantize import calibrate

    seen = {}
    real = calibrate.Calibrator.batches

    def spy(self, outputs, batch):
        for outs in real(self, outputs, batch):
            for t, x in zip(outputs, outs):
                seen.setdefault(t, set()).update(np.unique(x).tolist()[:300])
            yield outs

    monkeypatch.setattr(calibrate.Calibrator, "batches", spy)
    opts = (("grid", "symmetric"),) + ((("steps", "20"),) if name == "adaround" else ())
    q = tmp_path / "q.onnx"
    rep = quantize_file(tiny_onnx, q, QuantizeOptions(bits=4, method=name, method_opts=opts, calibration=32,
                                                      activations=8, granularity="channel", format="int"))
    layer_inputs = {"h3_act", "h6_act", "h9_act"} & set(seen)  # the ConvTranspose / Conv inputs, quantized
    assert layer_inputs and all(len(seen[t]) <= 256 for t in layer_inputs), {t: len(seen[t]) for t in seen}
    m = onnx.load(q)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    assert ops["QuantizeLinear"] == rep["activations"]["tensors"] == len(_pairs(m))
    assert not any(n.output[0].endswith("_act_1") for n in m.graph.node)  # no leftover of the first pairs
    onnx.checker.check_model(m, full_check=True)


def test_the_joint_search_chooses_weight_widths_and_activation_widths_in_one_plan(tiny_onnx, tiny_classifier,
                                                                                  toy_data_root, tmp_path,
                                                                                  monkeypatch):
    """Weights over 4/8 bits and activations 8/16, one target. A wrapped evaluate makes out.weight below 8 bits cost
    40 FID and h9 at 8 bits cost 30: the weight search (half the allowance) must keep out.weight at 8 and narrow the
    rest to 4, the activation search must widen h9 alone; the one plan file rebuilds the file byte for byte."""
    import importlib
    import json

    from ganq.study.act_search import ActSearchOptions, joint_search, weight_target
    from ganq.study.mixed import MixedOptions

    ev = importlib.import_module("ganq.evaluate.run")
    real = ev.evaluate

    def costs(model, *a, **k):
        out = real(model, *a, **k)
        m = onnx.load(str(model))
        pairs = _pairs(m)
        if "h9" in pairs and pairs["h9"][2] == onnx.TensorProto.UINT8:
            out["fid"] += 30.0
        record = json.loads(next((p.value for p in m.metadata_props if p.key == "ganq.quant"), "{}"))
        bits = {t["tensor"]: t["bits"] for t in record.get("tensors", [])}
        if bits.get("out.weight", 32) < 8:
            out["fid"] += 40.0
        return out

    monkeypatch.setattr(ev, "evaluate", costs)
    search = ActSearchOptions("fid=1.5", proxy_n=100, verify_n=100)
    assert weight_target(search) == "fid=1.25" and weight_target(ActSearchOptions("precision=0.9")) == "precision=0.95"
    mixed = MixedOptions(target="fid=1.5", bits_choices=(4, 8), proxy_n=100, verify_n=100)
    out = tmp_path / "j.onnx"
    r = joint_search(tiny_onnx, out, _act(calibration=32), search, mixed, dataset="mnist",
                     features=str(tiny_classifier[0]), data_root=toy_data_root)
    chosen = {x["tensor"]: x["chosen_bits"] for x in r["weights"]["layers"]}
    assert chosen["out.weight"] == 8 and set(chosen.values()) == {4, 8}
    assert r["widened"] == {"h9": 16} and r["verified"] <= 1.5 * r["fp32"]
    plan = json.loads((tmp_path / "j.onnx.plan.json").read_text())
    assert plan["activations"] == {"h9": 16} and plan["tensors"]["out.weight"]["bits"] == 8
    again = tmp_path / "again.onnx"
    quantize_file(tiny_onnx, again, _act(bits=4, calibration=32, plan_file=str(tmp_path / "j.onnx.plan.json")))
    assert again.read_bytes() == out.read_bytes()


def test_the_joint_search_through_the_cli(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    out = tmp_path / "j.onnx"
    base = [sys.executable, "-m", "ganq", "quantize", str(tiny_onnx), "--out", str(out), "--method", "symmetric",
            "--format", "int", "--activations", "8", "--calibration", "32"]
    r = subprocess.run(base + ["--target", "fid=4", "--bits-choices", "4,8", "--proxy-n", "100", "--verify-n", "100",
                               "--dataset", "mnist", "--features", str(tiny_classifier[0]), "--data-root",
                               str(toy_data_root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "weights: widths within fid=2.5" in r.stdout and "verified on 100 + 100 images" in r.stdout
    assert out.exists() and (tmp_path / "j.onnx.plan.json").exists()
    bad = subprocess.run(base + ["--target", "fid=1.1", "--budget", "1MiB", "--force"], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
