"""The study: several methods, repeats (mean ± std, the paired noise test), mixed-precision rows, the Pareto front,
the smallest file within 10%, the claims table, local worker processes and a Dask LocalCluster."""

from __future__ import annotations

import importlib
import json
import math
import socket

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from typer.testing import CliRunner

from ganq.cli import app
from ganq.errors import GanqError
from ganq.evaluate import EvalOptions
from ganq.report import analysis
from ganq.study import Execution, SweepSettings, sweep
from ganq.study import aggregate, parse_method_spec, split_methods

ev = importlib.import_module("ganq.evaluate.run")
TIMING = ("seconds", "quantize_seconds", "images_per_s", "file")


def _settings(**kw):
    base = dict(bits=(32, 4, 2), n=60, speed=False, eval=EvalOptions(n=60, kid_subset_size=30))
    return SweepSettings(**{**base, **kw})


def _run(tiny_onnx, tiny_classifier, toy_data_root, out, **kw):
    execution = Execution(kw.pop("workers", 1), kw.pop("scheduler", None))
    return sweep([str(tiny_onnx)], _settings(**kw), out, dataset="mnist", features=str(tiny_classifier[0]),
                 data_root=toy_data_root, execution=execution)


def _content(path):
    """results.json without what depends on the clock or the folder."""
    d = json.loads(path.read_text())
    for r in d["rows"]:
        for k in TIMING:
            r.pop(k, None)
    return d


# --- options --------------------------------------------------------------------------------------------------

def test_method_specs():
    assert split_methods("minmax, mse,gptq[grid=mse;act_order=true]") == (
        "minmax", "mse", "gptq[grid=mse;act_order=true]")
    assert parse_method_spec("gptq[grid=mse;act_order=true]") == ("gptq", (("grid", "mse"), ("act_order", "true")))
    assert parse_method_spec("mse") == ("mse", ())
    with pytest.raises(GanqError, match="NAME\\[KEY=VALUE"):
        parse_method_spec("gptq[grid=mse")
    s = SweepSettings(methods=("minmax", "gptq[damp=0.1]"))
    assert s.method_list() == [("minmax", ()), ("gptq", (("damp", "0.1"),))]
    assert s.cell_key("gptq", (("damp", "0.1"),)) != s.cell_key("gptq")


@pytest.mark.parametrize("kw,msg", [
    (dict(repeats=0), "--repeats"), (dict(repeats=21), "--repeats"),
    (dict(methods=("minmax", "minmax")), "twice"), (dict(methods=("nope",)), "nope"),
    (dict(methods=("mse",), method="gptq"), "not both"), (dict(mixed="fid=0.5"), "--mixed fid"),
    (dict(mixed="psnr=1.1"), "unknown metric"), (dict(mixed="fid=1.1", proxy_n=5), "--proxy-n"),
    (dict(mixed="fid=1.1", mixed_choices=(3, 3)), "distinct"),
])
def test_bad_settings(kw, msg):
    with pytest.raises(GanqError, match=msg):
        SweepSettings(**kw)


def test_cli_bad_inputs_one_line(tiny_onnx, tmp_path):
    runner = CliRunner()
    for args, msg in ((["--repeats", "0"], "--repeats"), (["--workers", "0"], "--workers"),
                      (["--methods", "minmax,bogus"], "bogus"), (["--mixed", "fid"], "METRIC=RATIO"),
                      (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
                      (["--scheduler", "127.0.0.1:8786"], "tcp://HOST")):
        res = runner.invoke(app, ["sweep", f"{tiny_onnx}@mnist", "--out", str(tmp_path / "o"), *args])
        assert res.exit_code == 1, (args, res.output)
        assert msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "o").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_one_line_nothing_written(tiny_onnx, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["sweep", f"{tiny_onnx}@mnist", "--out", str(out), "--scheduler",
                                   f"tcp://127.0.0.1:{_free_port()}"])
    assert res.exit_code == 1 and "cannot reach the Dask scheduler" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


# --- repeats ----------------------------------------------------------------------------------------------------

def test_aggregate_mean_and_std_closed_form():
    per = [{"fid": v, "precision": p, "seed": s, "seconds": 1.0}
           for s, (v, p) in enumerate([(10.0, 0.5), (12.0, 0.6), (14.0, 0.7)])]
    r = aggregate(per)
    assert r["fid"] == pytest.approx(12.0) and r["spread"]["fid"] == pytest.approx(2.0)
    assert r["precision"] == pytest.approx(0.6) and r["spread"]["precision"] == pytest.approx(0.1)
    assert r["repeats"] == 3 and r["seeds"] == [0, 1, 2] and r["seconds"] == 3.0
    assert r["spread"]["kid"] is None  # a metric absent from the rows stays absent
    one = aggregate(per[:1])
    assert one["fid"] == 10.0 and one["spread"]["fid"] is None


def test_repeats_through_a_fake_evaluator_with_known_variance(tiny_onnx, tiny_classifier, toy_data_root, tmp_path,
                                                              monkeypatch):
    """score() replaced by one whose FID is mu(bits) + N(0, sigma) from the seed: the rows give back mu and sigma."""
    sigma, repeats = 0.5, 12
    real_measure = ev.measure

    def fake_measure(g, net, real, opts, real_sq_radii=None, progress=None):
        out, images = real_measure(g, net, real, opts)
        bits = json.loads(g.metadata.get("ganq.quant", '{"bits": 32}')).get("bits", 32)
        rng = np.random.default_rng(opts.seed)
        out["fid"] = 10.0 + (32 - bits) + sigma * rng.standard_normal()
        return out, images

    monkeypatch.setattr(ev, "measure", fake_measure)
    r = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "o", repeats=repeats, bits=(32, 4))
    fp32, q = r["rows"]
    draws = [10.0 + sigma * np.random.default_rng(s).standard_normal() for s in range(repeats)]
    assert fp32["fid"] == pytest.approx(np.mean(draws)) and fp32["spread"]["fid"] == pytest.approx(
        np.std(draws, ddof=1))
    assert [p["fid"] for p in q["per_seed"]] == pytest.approx([d + 28 for d in draws])
    # the same seeds: the paired difference is exactly 28 with no spread, far beyond the noise
    assert analysis.diff(q, fp32, "fid") == pytest.approx((28.0, 0.0))
    assert analysis.within_noise(q, fp32, "fid") is False
    assert 0.2 < fp32["spread"]["fid"] < 0.9  # sigma estimated from 12 draws
    # every repeat is cached on its own: asking for fewer repeats recomputes nothing
    cached = sorted((tmp_path / "o" / "cache").glob("*.npz"))
    assert len(cached) == 2 * repeats
    mtimes = [p.stat().st_mtime_ns for p in cached]
    r3 = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "o", repeats=3, bits=(32, 4))
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert r3["rows"][0]["per_seed"] == fp32["per_seed"][:3]


def test_rows_cached_without_a_seed_still_pair(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    """Cells cached before repeats existed carry no seed: the row still knows it, so the noise test still pairs."""
    out = tmp_path / "o"
    _run(tiny_onnx, tiny_classifier, toy_data_root, out, repeats=2, bits=(32, 4))
    for cell in (out / "cache").glob("*-32.npz"):
        with np.load(cell) as z:
            row, grid = json.loads(str(z["row"])), z["grid"]
        row.pop("seed")
        np.savez(cell.with_suffix(""), row=np.array(json.dumps(row)), grid=grid)
    (out / "results.json").unlink()
    f, q = _run(tiny_onnx, tiny_classifier, toy_data_root, out, repeats=2, bits=(32, 4))["rows"]
    assert f["seeds"] == q["seeds"] == [0, 1] and analysis.diff(q, f, "fid")[1] is not None


def test_repeat_r_equals_evaluate_at_seed_r(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    r = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "o", repeats=2, bits=(32,))
    for seed in (0, 1):
        direct = ev.evaluate(tiny_onnx, "mnist", tiny_classifier[0], EvalOptions(n=60, seed=seed,
                                                                                 kid_subset_size=30),
                             data_root=toy_data_root, cache=tmp_path / "c")
        assert r["rows"][0]["per_seed"][seed]["fid"] == pytest.approx(direct["fid"], rel=1e-9)
        assert r["rows"][0]["per_seed"][seed]["precision"] == direct["precision"]


def _row(model, bits, per_fid, method="minmax", nbytes=None, kind="uniform", **extra):
    per = [{"fid": v, **{k: (vals[i] if isinstance(vals, list) else vals) for k, vals in extra.items()}}
           for i, v in enumerate(per_fid)]
    r = aggregate([{**p, "seed": i, "model": model, "bits": bits, "method": method, "kind": kind,
                    "dataset": "d", "bytes_file": nbytes or bits * 100, "bytes_fp32": 3200} for i, p in
                   enumerate(per)])
    return r


def test_within_noise_is_a_paired_t_test():
    f = _row("m", 32, [10.0, 11.0, 12.0])
    same_shift = _row("m", 4, [10.5, 11.5, 12.5])    # +0.5 at every seed: signal, however noisy the rows are
    noisy = _row("m", 4, [10.0, 12.5, 11.5])          # d = 0, 1.5, -0.5: mean 0.33, half-width 4.30*1.04/1.73
    assert analysis.within_noise(same_shift, f, "fid") is False
    assert analysis.within_noise(noisy, f, "fid") is True
    d, half = analysis.diff(noisy, f, "fid")
    assert d == pytest.approx(1 / 3) and half == pytest.approx(4.302652729911275 * np.std([0, 1.5, -0.5], ddof=1)
                                                               / math.sqrt(3))
    assert analysis.within_noise(_row("m", 4, [11.0]), _row("m", 32, [10.0]), "fid") is None  # no repeats


# --- Pareto front, smallest file, claims -------------------------------------------------------------------------

@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), st.floats(0, 100)), min_size=1, max_size=25))
def test_pareto_front_is_the_set_of_undominated_points(points):
    rows = [{"bytes_file": b, "fid": q, "i": i} for i, (b, q) in enumerate(points)]
    front = analysis.pareto_front(rows)
    ids = {r["i"] for r in front}
    for r in rows:
        dominated = any(o["bytes_file"] <= r["bytes_file"] and o["fid"] <= r["fid"] and
                        (o["bytes_file"], o["fid"]) != (r["bytes_file"], r["fid"]) for o in rows)
        if dominated:
            assert r["i"] not in ids
    # every undominated (bytes, fid) value appears once; the front falls strictly
    undominated = {(r["bytes_file"], r["fid"]) for r in rows if not any(
        o["bytes_file"] <= r["bytes_file"] and o["fid"] <= r["fid"] and (o["bytes_file"], o["fid"]) !=
        (r["bytes_file"], r["fid"]) for o in rows)}
    assert {(r["bytes_file"], r["fid"]) for r in front} == undominated
    assert all(a["fid"] > b["fid"] and a["bytes_file"] < b["bytes_file"] for a, b in zip(front, front[1:]))


def test_smallest_within_ten_percent():
    rows = [_row("m", 32, [10.0]), _row("m", 8, [10.5]), _row("m", 4, [10.9]), _row("m", 3, [11.2]),
            _row("m", 3, [10.2], method="gptq"), _row("m", 2, [30.0], method="gptq"),
            _row("m", 3.5, [10.8], kind="mixed", nbytes=340)]
    uniform = [r for r in rows if r["kind"] == "uniform"]
    assert analysis.smallest_within(uniform, "m", method="minmax")["bits"] == 4  # 10.9 <= 11.0 < 11.2
    assert analysis.smallest_within(rows, "m", method="minmax")["bits"] == 3.5  # the mixed file is smaller
    assert analysis.smallest_within(rows, "m", method="gptq")["bits"] == 3
    assert analysis.smallest_within(rows, "m")["bytes_file"] == 300  # gptq 3-bit beats the mixed 340 bytes
    table = {(e["method"], e["kind"]): e["row"] for e in analysis.smallest_table(rows)}
    assert table[("minmax", "uniform")]["bits"] == 4 and table[("minmax", "mixed")]["bytes_file"] == 340
    assert ("gptq", "mixed") not in table and table[("any", "any")]["bytes_file"] == 300
    assert analysis.smallest_within([_row("m", 32, [10.0]), _row("m", 2, [30.0])], "m") is None


def _model(name, fid, prec, rec, is_):
    """Rows of one model at 32, 8, 6, 5, 4, 3 from per-width lists of 3 seeds each (values + seed offsets)."""
    out = []
    for i, b in enumerate((32, 8, 6, 5, 4, 3)):
        jit = [0.0, 0.001, -0.001]
        out.append(_row(name, b, [fid[i] * (1 + j) for j in jit], precision=[prec[i] + j for j in jit],
                        recall=[rec[i] + j for j in jit], inception_score=[is_[i] + j for j in jit]))
    return out


def test_claims_table_verdicts():
    fc = _model("fc", [10, 10, 10.5, 11, 12, 40], [.8, .8, .8, .79, .78, .5], [.8, .8, .8, .8, .79, .3],
                [8, 8, 8, 7.9, 7.5, 5])
    cnn = _model("cnn", [10, 10.2, 12, 15, 30, 90], [.8, .8, .7, .6, .5, .3], [.8, .8, .74, .6, .5, .2],
                 [8, 8, 7, 6, 5, 3])
    got = {(c["claim"], c["model"]): c for c in analysis.claims(fc + cnn, {"fc": "fc4", "cnn": "cnn5"})}
    assert got[("IS holds to 5 bits", "fc")]["verdict"] == "confirmed"
    assert got[("IS holds to 5 bits", "cnn")]["verdict"] == "refuted"  # 6 bits: 7.0 < 0.95 x 8
    assert got[("precision falls sharply at 6–5 bits", "cnn")]["verdict"] == "confirmed"
    assert got[("precision falls sharply at 6–5 bits", "fc")]["verdict"] == "refuted"
    assert got[("precision and recall fall together", "cnn")]["verdict"] == "confirmed"  # both first at 6 bits
    assert got[("precision and recall fall together", "fc")]["verdict"] == "confirmed"  # both first at 3 bits
    fc_cnn = got[("FC more robust than CNN at 4 bits", "fc vs cnn")]
    assert fc_cnn["verdict"] == "confirmed" and "1.200" in fc_cnn["evidence"] and "3.000" in fc_cnn["evidence"]
    # precision that falls at 5 bits and recall only at 3: not together
    apart = _model("a", [10] * 6, [.8, .8, .8, .7, .6, .5], [.8, .8, .8, .8, .8, .5], [8] * 6)
    got = {(c["claim"], c["model"]): c for c in analysis.claims(apart, {})}
    assert got[("precision and recall fall together", "a")]["verdict"] == "refuted"
    # nothing moves beyond the noise
    flat = _model("f", [10] * 6, [.8] * 6, [.8] * 6, [8] * 6)
    got = {(c["claim"], c["model"]): c for c in analysis.claims(flat, {})}
    assert got[("precision falls sharply at 6–5 bits", "f")]["verdict"] == "within noise"
    assert got[("precision and recall fall together", "f")]["verdict"] == "within noise"
    assert got[("IS holds to 5 bits", "f")]["verdict"] == "confirmed (within noise)"


# --- sweeps with methods, mixed rows, workers, Dask ----------------------------------------------------------------

def test_methods_and_mixed_rows(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    out = tmp_path / "o"
    r = _run(tiny_onnx, tiny_classifier, toy_data_root, out, methods=("minmax", "mse"), bits=(32, 4, 2),
             mixed="fid=3.0", mixed_choices=(2, 4, 8), proxy_n=100, repeats=2)
    labels = [(x["method"], x.get("kind"), x["bits"]) for x in r["rows"] if x.get("kind") != "mixed"]
    assert labels == [("fp32", "uniform", 32), ("minmax", "uniform", 4), ("minmax", "uniform", 2),
                      ("mse", "uniform", 4), ("mse", "uniform", 2)]
    mixed = [x for x in r["rows"] if x.get("kind") == "mixed"] + r["failed"]
    assert len(mixed) == 2  # one per method: a row, or the reason it is missing
    for x in (x for x in r["rows"] if x.get("kind") == "mixed"):
        assert 2 <= x["bits"] <= 8 and set(x["plan"].values()) <= {2, 4, 8} and x["repeats"] == 2
    md = (out / "report.md").read_text()
    assert "Smallest file within 10% of the fp32 FID" in md and "The study's claims, checked" in md
    assert (out / "index.html").read_text().count("data:image/png;base64,") == 5
    # rerun from the cache: the mixed search is not run again
    again = _run(tiny_onnx, tiny_classifier, toy_data_root, out, methods=("minmax", "mse"), bits=(32, 4, 2),
                 mixed="fid=3.0", mixed_choices=(2, 4, 8), proxy_n=100, repeats=2)
    assert [x["fid"] for x in again["rows"]] == [x["fid"] for x in r["rows"]]


def test_local_workers_equal_serial(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "serial", repeats=2)
    _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "par", repeats=2, workers=2)
    assert _content(tmp_path / "par" / "results.json") == _content(tmp_path / "serial" / "results.json")


def test_dask_local_cluster_equals_serial(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    distributed = pytest.importorskip("distributed")
    _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "serial", repeats=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        r = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "dask", repeats=2,
                 scheduler=cluster.scheduler_address)
    assert len(r["rows"]) == 3
    assert _content(tmp_path / "dask" / "results.json") == _content(tmp_path / "serial" / "results.json")


def test_mixed_target_out_of_reach_is_a_line_not_a_failed_sweep(tiny_onnx, tiny_classifier, toy_data_root, tmp_path,
                                                                monkeypatch):
    real_evaluate = ev.evaluate

    def costly(model, *a, **k):  # every quantized tensor costs 50 FID: no plan reaches fid=1.1
        out = real_evaluate(model, *a, **k)
        if out["quantization"] and out["quantization"]["bits"] != 32:
            out["fid"] += 50.0
        return out

    monkeypatch.setattr(ev, "evaluate", costly)
    r = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "o", bits=(32, 4), mixed="fid=1.1",
             mixed_choices=(2, 4), proxy_n=100)
    assert [x["bits"] for x in r["rows"]] == [32, 4]
    assert len(r["failed"]) == 1 and "out of reach" in r["failed"][0]["error"]
    assert "## Mixed-precision rows out of reach" in (tmp_path / "o" / "report.md").read_text()
    assert "out of reach" in (tmp_path / "o" / "index.html").read_text()
    assert json.loads((tmp_path / "o" / "results.json").read_text())["failed"] == r["failed"]


def test_quantized_rows_report_their_fidelity_to_fp32_as_evaluate_does(tiny_onnx, tiny_classifier, toy_data_root,
                                                                       tmp_path):
    r = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "o", repeats=1, bits=(32, 3))
    fp32, q = r["rows"]
    assert fp32.get("psnr_fp32") is None
    direct = ev.evaluate(q["file"], "mnist", tiny_classifier[0], EvalOptions(n=60, seed=0, kid_subset_size=30),
                         data_root=toy_data_root, cache=tmp_path / "c", reference=tiny_onnx)
    assert q["psnr_fp32"] == pytest.approx(direct["psnr_fp32"], rel=1e-12)
    assert q["ssim_fp32"] == pytest.approx(direct["ssim_fp32"], rel=1e-12)


def test_granularity_axis(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    """--granularity channel,group:16: the first granularity's rows are the sweep with that one alone (labels and
    cache), the second adds rows labelled 'METHOD @group:16' with their own files, bytes and FID."""
    out = tmp_path / "o"
    r = _run(tiny_onnx, tiny_classifier, toy_data_root, out, granularity="channel,group:16", bits=(32, 2),
             format="packed")
    got = [(x["method"], x["granularity"], x["bits"]) for x in r["rows"]]
    assert got == [("fp32", "channel", 32), ("minmax", "channel", 2), ("minmax @group:16", "group:16", 2)]
    assert "minmax @group:16" in (out / "report.md").read_text()
    ch, grp = r["rows"][1], r["rows"][2]
    assert grp["bytes_file"] > ch["bytes_file"] and grp["file"] != ch["file"]
    alone = _run(tiny_onnx, tiny_classifier, toy_data_root, out, granularity="channel", bits=(32, 2),
                 format="packed")
    assert [x["fid"] for x in alone["rows"]] == [x["fid"] for x in r["rows"][:2]]
    with pytest.raises(GanqError, match="lists one twice"):
        _settings(granularity="channel,channel")
    with pytest.raises(GanqError, match="granularity must be"):
        _settings(granularity="channel,group:10")
