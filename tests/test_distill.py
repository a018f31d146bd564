"""Method distill (issue 23): the quantized generator trained end to end against its fp32 outputs, on the torch
rebuild of its ONNX graph (ganq.train.onnx_torch)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from ganq.errors import GanqError  # noqa: E402
from ganq.onnx_io import load_model, probe_inputs, read_spec, run, sample_inputs  # noqa: E402
from ganq.quantize import QuantizeOptions, quantize_file, quantize_model  # noqa: E402
from ganq.train.onnx_torch import OnnxTorch, Unsupported, check_against_onnxruntime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = (("steps", "30"), ("batch", "16"), ("holdout", "64"), ("every", "5"), ("lr", "0.02"))


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _opts(bits=3, fmt="fake", gran="channel", **kw):
    extra = dict(FAST)
    extra.update({k: str(v) for k, v in kw.items()})
    return QuantizeOptions(bits=bits, method="distill", method_opts=tuple(extra.items()), granularity=gran,
                           format=fmt)


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "zoo" / "*.onnx"))), ids=lambda p: Path(p).stem)
def test_torch_rebuild_equals_onnxruntime_on_the_zoo(path):
    m = load_model(path)
    meta = {p.key for p in m.metadata_props}
    if "ganq.spec" in meta:
        feed = probe_inputs(read_spec(m), 16)
    else:  # a feature network
        dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
        feed = {m.graph.input[0].name: np.random.default_rng(0).uniform(-1, 1, (16, *dims)).astype(np.float32)}
    assert check_against_onnxruntime(m, feed) <= 1e-4


@pytest.mark.parametrize("name", ["cgan", "stylegan2-unfused", "pix2pix", "cyclegan", "esrgan", "esrgan-ps",
                                  "dcgan64-4d"])
def test_torch_rebuild_equals_onnxruntime_on_foreign_families(name, tmp_path):
    from fixtures.families import FAMILIES, export

    from ganq.onnx_io import describe
    from ganq.spec import parse_input_option

    p = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(name, p, opset=13 if name == "cyclegan" else 17)  # opset 13: the reflection pad as negative Slices
    describe(p, p, inputs=dict(parse_input_option(a) for a in FAMILIES[name][2][1::2]))
    m = load_model(p)
    assert check_against_onnxruntime(m, probe_inputs(read_spec(m), 5)) <= 1e-4


def test_an_op_outside_the_table_is_refused_by_name():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    with pytest.raises(Unsupported, match="no Hardmax"):
        OnnxTorch(helper.make_model(g))


def _initializers(model):
    from onnx import numpy_helper
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_zero_learning_rate_reproduces_the_init_exactly(tiny_onnx):
    model = load_model(tiny_onnx)
    init, _ = quantize_model(model, QuantizeOptions(bits=3, method="mse", granularity="channel"))
    got, rep = quantize_model(model, _opts(lr=0))
    a, b = _initializers(init), _initializers(got)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert rep["distill"]["best_step"] == 0


def _output_mse(q, ref, spec, n=256, seed=0):
    feed = sample_inputs(spec, n, seed)  # the evaluation's inputs: never those distill trained or selected on
    (want,) = run(ref, feed, [spec.output_name])
    (got,) = run(q, feed, [spec.output_name])
    return float(np.mean((got - want) ** 2))


def test_lowers_the_output_error_below_its_init_on_unseen_inputs(tiny_onnx):
    model = load_model(tiny_onnx)
    spec = read_spec(model)
    init, _ = quantize_model(model, QuantizeOptions(bits=2, method="mse", granularity="channel"))
    got, rep = quantize_model(model, _opts(bits=2, steps=60))
    d = rep["distill"]
    assert d["heldout_best"] < d["heldout_init"] and d["best_step"] > 0
    assert _output_mse(got, model, spec) < 0.9 * _output_mse(init, model, spec)
    assert all(r["levels_used"] <= 4 for r in rep["tensors"])


def test_heldout_inputs_are_never_the_evaluations():
    from ganq.spec import GeneratorSpec
    from ganq.train.distill import HOLDOUT_SEED, STEP_SEED

    spec = GeneratorSpec(latent_dim=8, channels=1, height=28, width=28)
    for seed in range(3):
        hold = sample_inputs(spec, 64, HOLDOUT_SEED + seed, calibration=True)["z"]
        step = sample_inputs(spec, 64, STEP_SEED + seed * 1_000_003 + 1, calibration=True)["z"]
        for eval_seed in range(5):
            ev = sample_inputs(spec, 64, eval_seed)["z"]
            assert not np.isin(hold, ev).any() and not np.isin(step, ev).any()


def test_formats_agree_grid_holds_and_the_same_seed_gives_the_same_file(tiny_onnx, tmp_path):
    spec = read_spec(load_model(tiny_onnx))
    feed = probe_inputs(spec, 8)
    outs = {}
    for fmt in ("fake", "int", "packed"):
        rep = quantize_file(tiny_onnx, tmp_path / f"{fmt}.onnx", _opts(fmt=fmt, gran="channel"))
        (outs[fmt],) = run(load_model(tmp_path / f"{fmt}.onnx"), feed, [spec.output_name])
        assert all(r["levels_used"] <= 8 for r in rep["tensors"])
    for fmt in ("int", "packed"):
        assert np.abs(outs[fmt] - outs["fake"]).max() <= 1e-5
    quantize_file(tiny_onnx, tmp_path / "again.onnx", _opts(fmt="packed"))
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "packed.onnx").read_bytes()
    # per channel in the fake file: at most 2^k distinct values per output channel
    q = _initializers(load_model(tmp_path / "fake.onnx"))
    w = q["up1.weight"]  # ConvTranspose [I, O, k, k]: channels on axis 1
    assert max(len(np.unique(w[:, o])) for o in range(w.shape[1])) <= 8


def test_per_tensor_and_mixed_plans(tiny_onnx):
    model = load_model(tiny_onnx)
    _, rep = quantize_model(model, _opts(gran="tensor", steps=5))
    assert rep["distill"]["steps_run"] == 5
    opts = QuantizeOptions(bits=4, method="distill", method_opts=FAST, granularity="channel",
                           tensor_bits=(("first", 8), ("last", 2)))
    _, rep = quantize_model(model, opts)
    bits = {r["tensor"]: r["bits"] for r in rep["tensors"]}
    assert sorted(set(bits.values())) == [2, 4, 8]
    assert all(r["levels_used"] <= 2 ** r["bits"] for r in rep["tensors"])


@pytest.mark.parametrize("opt,match", [
    ("lam=-1", "lam must be in"), ("steps=0", "steps must be in"), ("lam=1", "lam > 0 needs features"),
    ("init=kmeans", "codebook decoder"), ("init=nope", "init must be one of"), ("bn=always", "bn must be one of"),
])
def test_bad_options_fail_in_one_line(opt, match):
    with pytest.raises(GanqError, match=match):
        QuantizeOptions(bits=3, method="distill", method_opts=(tuple(opt.split("=")),))


def _ganq(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ganq", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_cli_refusals_write_nothing(tiny_onnx, tiny_classifier, tmp_path):
    out = tmp_path / "q.onnx"
    r = _ganq("quantize", tiny_onnx, "--bits", "3", "--method", "distill", "--method-opt", f"features={tiny_onnx}",
              "--method-opt", "lam=1", "--out", out)
    assert r.returncode == 1 and "not a ganq feature network" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a generator with an op the rebuild does not know: refused before any file is written
    m = load_model(tiny_onnx)
    last = m.graph.node[-1]
    last.op_type = "Softsign"  # Tanh -> Softsign: valid ONNX, not in the table
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    r = _ganq("quantize", bad, "--bits", "3", "--method", "distill", "--out", out)
    assert r.returncode == 1 and "Softsign" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    # without the train extra: one line naming it
    r = _ganq("quantize", tiny_onnx, "--bits", "3", "--method", "distill", "--out", out,
              env={"PYTHONPATH": str(ROOT / "tests" / "no_torch")})
    assert r.returncode == 1 and "ganq[train]" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_feature_loss_with_a_feature_network(tiny_onnx, tiny_classifier):
    _, rep = quantize_model(load_model(tiny_onnx), _opts(steps=10, lam=1, features=tiny_classifier[0]))
    assert "feature MSE" in rep["distill"]["loss"] and np.isfinite(rep["distill"]["heldout_best"])


def test_sweep_with_distill_keeps_the_other_methods_cache(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    from ganq.evaluate import EvalOptions
    from ganq.study import Execution, SweepSettings, sweep

    def run(methods):
        s = SweepSettings(bits=(32, 3), n=60, speed=False, eval=EvalOptions(n=60, kid_subset_size=30),
                          methods=methods)
        return sweep([str(tiny_onnx)], s, tmp_path / "o", dataset="mnist", features=str(tiny_classifier[0]),
                     data_root=toy_data_root, execution=Execution(1, None))

    run(("mse",))
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o" / "cache").glob("*.npz")}
    r = run(("mse", "distill[steps=10;batch=8;holdout=32;every=5]"))
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o" / "cache").glob("*.npz")}
    assert all(after[k] == v for k, v in before.items())  # mse's cells and the fp32 row: read, not recomputed
    assert len(after) == len(before) + 1
    rows = [row for row in r["rows"] if row.get("method", "").startswith("distill")]
    assert rows and np.isfinite(rows[0]["fid"])


def test_mixed_precision_with_distill(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    from ganq.study.mixed import MixedOptions, mixed_quantize

    opts = QuantizeOptions(bits=2, method="distill", method_opts=FAST, granularity="channel", format="packed")
    mixed = MixedOptions(bits_choices=(2, 4, 8), proxy_n=100, verify_n=100, target="fid=1.5", max_rounds=2)
    r = mixed_quantize(tiny_onnx, tmp_path / "m.onnx", opts, mixed, dataset="mnist",
                       features=str(tiny_classifier[0]), data_root=toy_data_root, compare_uniform=False)
    assert r["verified"]["fid"] <= 1.5 * r["fp32"]["fid"] and r["rounds"][-1]["meets"]
    # the metrics reported are the written file's, also after narrowing
    assert (r["verified"]["fid"], r["bytes_file"]) == (r["rounds"][-1]["fid"], r["rounds"][-1]["bytes_file"])
    assert r["bytes_file"] == (tmp_path / "m.onnx").stat().st_size
    from ganq.onnx_io import META_QUANT, read_metadata
    import json
    meta = json.loads(read_metadata(onnx.load(str(tmp_path / "m.onnx")))[META_QUANT])
    assert "distill" in meta and {t["method"] for t in meta["tensors"]} == {"distill"}


def test_activation_term(tiny_onnx):
    _, rep = quantize_model(load_model(tiny_onnx), _opts(steps=10, act=1))
    assert "activation MSE" in rep["distill"]["loss"] and np.isfinite(rep["distill"]["heldout_best"])


def test_group_granularity_trains_and_keeps_its_groups(tiny_onnx, tmp_path):
    """group:16: zero learning rate gives the mse init's file exactly; training lowers the held-out error and the
    int and packed files agree with the fake one."""
    model = load_model(tiny_onnx)
    init, _ = quantize_model(model, QuantizeOptions(bits=3, method="mse", granularity="group:16"))
    same, _ = quantize_model(model, _opts(gran="group:16", lr=0))
    a, b = _initializers(init), _initializers(same)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    spec = read_spec(model)
    feed = probe_inputs(spec, 8)
    outs = {}
    for fmt in ("fake", "packed"):
        rep = quantize_file(tiny_onnx, tmp_path / f"{fmt}.onnx", _opts(fmt=fmt, gran="group:16"))
        (outs[fmt],) = run(load_model(tmp_path / f"{fmt}.onnx"), feed, [spec.output_name])
        assert rep["distill"]["heldout_best"] < rep["distill"]["heldout_init"]
    assert np.abs(outs["packed"] - outs["fake"]).max() <= 1e-5


def _bn_stats(model):
    return {k: v for k, v in _initializers(model).items() if k.endswith((".mean", ".var"))}


@pytest.fixture(scope="module")
def population_bn(tiny_onnx):
    """The tiny generator with BatchNorm statistics that are its own population moments (a trained network's are
    close to them; the fixture's are random, which no re-estimation can approach)."""
    from onnx import numpy_helper

    from ganq.train.distill import _reestimate_if_lower, _Runner

    m = load_model(tiny_onnx)
    spec = read_spec(m)
    new, _ = _reestimate_if_lower(_Runner(m, spec, spec.output_name), spec, {}, 1.0, lambda r: 0.0, 7, None)
    for i in m.graph.initializer:
        if i.name in new:
            i.CopyFrom(numpy_helper.from_array(new[i.name], i.name))
    return m


@pytest.mark.parametrize("case,expect", [
    (dict(bits=4, steps=20), "kept"),  # the random statistics: re-estimation is far off the teacher
    (dict(bits=2, steps=10, lr=1e-6, init="minmax", gran="tensor", population=True), "re-estimated"),
])
def test_batchnorm_is_re_estimated_only_when_that_lowers_the_heldout_loss(tiny_onnx, population_bn, case, expect):
    from ganq.train.distill import HOLDOUT_SEED

    case = dict(case)
    model = population_bn if case.pop("population", False) else load_model(tiny_onnx)
    got, rep = quantize_model(model, _opts(**case))
    d = rep["distill"]
    lower = d["heldout_reestimated"] < d["heldout_kept"]
    assert d["batchnorm"].startswith(expect) and lower == (expect == "re-estimated")
    assert d["heldout_kept"] == d["heldout_best"] and d["batchnorm_layers"] == 3
    before, after = _bn_stats(model), _bn_stats(got)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == ({c["tensor"] for c in d["batchnorm_changed"]} if lower else set())
    assert (len(changed) == 6) == lower and ("batchnorm_changed" in d) == lower
    # the file holds the chosen state: its held-out loss in onnxruntime is the one the choice was made on
    spec = read_spec(model)
    hold = sample_inputs(spec, 64, HOLDOUT_SEED, calibration=True)
    (want,) = run(model, hold, [spec.output_name])
    (out,) = run(got, hold, [spec.output_name])
    loss = float(np.mean((out.astype(np.float64) - want) ** 2) / want.var())
    assert loss == pytest.approx(min(d["heldout_kept"], d["heldout_reestimated"]), rel=1e-3)


def test_bn_keep_never_tries_and_lr_zero_trains_nothing(tiny_onnx):
    model = load_model(tiny_onnx)
    for opts in (_opts(bits=2, steps=10, bn="keep"), _opts(bits=2, lr=0)):
        got, rep = quantize_model(model, opts)
        assert rep["distill"]["batchnorm"] == "kept as trained" and "heldout_reestimated" not in rep["distill"]
        assert all(np.array_equal(a, b) for a, b in zip(_bn_stats(model).values(), _bn_stats(got).values()))


def test_re_estimated_statistics_are_the_population_moments_in_graph_order(tiny_onnx):
    """Oracle: onnxruntime's pre-BatchNorm activations on the same stream; a doubled bias-free weight before a
    BatchNorm doubles its mean and quadruples its variance (closed form), and the later layers see the new stats."""
    from ganq.train.distill import BN_N, BN_SEED, _reestimate_if_lower, _Runner

    model = load_model(tiny_onnx)
    spec = read_spec(model)
    runner = _Runner(model, spec, spec.output_name)
    w = {"fc.weight": runner.net.tensors["fc.weight"].clone()}
    new, rec = _reestimate_if_lower(runner, spec, w, 1.0, lambda r: 0.0, 0, None)
    assert rec["batchnorm"].startswith("re-estimated") and set(new) == set(_bn_stats(model))
    feed = sample_inputs(spec, BN_N, BN_SEED, calibration=True)
    (h0,) = run(model, feed, ["h0"])
    np.testing.assert_allclose(new["bn1.mean"], h0.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["bn1.var"], h0.var(0), rtol=1e-4, atol=1e-5)
    doubled, _ = _reestimate_if_lower(runner, spec, {"fc.weight": 2 * w["fc.weight"]}, 1.0, lambda r: 0.0, 0, None)
    np.testing.assert_allclose(doubled["bn1.mean"], 2 * new["bn1.mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(doubled["bn1.var"], 4 * new["bn1.var"], rtol=1e-4, atol=1e-4)
    # after bn1 the doubled network's activations are those of the plain one (BatchNorm is scale-invariant up to eps)
    np.testing.assert_allclose(doubled["bn2.var"], new["bn2.var"], rtol=1e-3, atol=1e-5)
    kept, rec = _reestimate_if_lower(runner, spec, w, 0.5, lambda r: 0.7, 0, None)
    assert kept == {} and rec["batchnorm"].startswith("kept as trained") and rec["heldout_reestimated"] == 0.7
