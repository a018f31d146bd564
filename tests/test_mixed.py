"""Mixed precision: the allocation against brute force on synthetic sensitivity tables with known optima, option
checks, and the whole search on the tiny trained generator (toy data, toy classifier)."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ganq.errors import GanqError
from ganq.study.mixed import MixedOptions, choose, pareto, parse_size, parse_target

layer = st.lists(st.tuples(st.integers(1, 1000), st.floats(0, 50, allow_nan=False)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(layer, min_size=1, max_size=4), st.floats(0, 120), st.integers(1, 4000))
def test_pareto_choice_equals_brute_force(options, max_loss, max_size):
    front = pareto(options)
    combos = [(sum(options[i][j][0] for i, j in enumerate(c)), sum(options[i][j][1] for i, j in enumerate(c)), c)
              for c in itertools.product(*[range(len(o)) for o in options])]
    # every combination is dominated by (or on) the front; the front's points are real combinations
    for s, c, _ in combos:
        assert any(fs <= s and fc <= c + 1e-9 for fs, fc, _ in front)
    for fs, fc, idx in front:
        assert abs(sum(options[i][j][0] for i, j in enumerate(idx)) - fs) < 1e-9
    ok = [x for x in combos if x[1] <= max_loss + 1e-12]
    got = choose(front, max_loss=max_loss)
    assert (got is None) == (not ok)
    if ok:
        assert got[0] == min(x[0] for x in ok) and got[1] <= max_loss + 1e-12
    ok = [x for x in combos if x[0] <= max_size]
    got = choose(front, max_size=max_size)
    assert (got is None) == (not ok)
    if ok:
        assert got[0] <= max_size and abs(got[1] - min(x[1] for x in ok)) < 1e-9


def test_known_optimum():
    # layer 0 is sensitive (2 bits costs 10), layer 1 is not: the optimum keeps layer 0 wide, layer 1 narrow
    options = [[(200, 10.0), (300, 1.0), (400, 0.0)], [(2000, 0.5), (3000, 0.2), (4000, 0.0)]]
    assert choose(pareto(options), max_loss=1.6)[2] == (1, 0)
    assert choose(pareto(options), max_size=2350)[2] == (1, 0)
    assert choose(pareto(options), max_size=2250)[2] == (0, 0)
    assert choose(pareto(options), max_size=2100) is None


def test_options():
    assert parse_target("fid=1.10") == ("fid", 1.10) and parse_target("precision=0.95") == ("precision", 0.95)
    assert parse_size("350KiB") == 350 * 1024 and parse_size("1.5MiB") == int(1.5 * 2 ** 20)
    assert parse_size("400000") == 400000 and parse_size("350KB") == 350000
    for text, msg in (("fid", "METRIC=RATIO"), ("lpips=1.1", "unknown metric 'lpips'"), ("fid=0.9", "1.0..100.0"),
                      ("precision=1.2", "0.01..1.0"), ("fid=x", "must be a number")):
        with pytest.raises(GanqError, match=msg):
            parse_target(text)
    for text in ("", "12 parsecs", "-5KiB", "0"):
        with pytest.raises(GanqError):
            parse_size(text)
    with pytest.raises(GanqError, match="exactly one"):
        MixedOptions(target="fid=1.1", budget="1MiB")
    with pytest.raises(GanqError, match="exactly one"):
        MixedOptions()
    with pytest.raises(GanqError, match="--avg-bits"):
        MixedOptions(avg_bits=1.5, bits_choices=(2, 4))
    with pytest.raises(GanqError, match="--bits-choices"):
        MixedOptions(avg_bits=3, bits_choices=(2, 17))
    with pytest.raises(GanqError, match="--proxy-n"):
        MixedOptions(avg_bits=3, proxy_n=5)
    assert MixedOptions(avg_bits=3, bits_choices=(8, 2, 4)).bits_choices == (2, 4, 8)


def _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, **kw):
    from ganq.study.mixed import mixed_quantize
    from ganq.quantize import QuantizeOptions

    opts = QuantizeOptions(bits=2, granularity="channel", format="packed")
    mixed = MixedOptions(**{"bits_choices": (2, 4, 8), "proxy_n": 100, "verify_n": 100, **kw})
    return mixed_quantize(tiny_onnx, tmp_path / "m.onnx", opts, mixed, dataset="mnist",
                          features=str(tiny_classifier[0]), data_root=toy_data_root)


def test_mixed_on_the_tiny_generator(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, monkeypatch):
    import onnx

    from ganq.onnx_io import META_QUANT, read_metadata

    r = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, avg_bits=4.0)
    assert r["avg_bits"] <= 4.0 + 1e-9
    meta = json.loads(read_metadata(onnx.load(str(tmp_path / "m.onnx")))[META_QUANT])
    assert {t["tensor"]: t["bits"] for t in meta["tensors"]} == {x["tensor"]: x["chosen_bits"] for x in r["layers"]}
    assert json.loads((tmp_path / "m.onnx.plan.json").read_text())["tensors"].keys() == {
        x["tensor"] for x in r["layers"]}
    # an impossible budget is refused before any evaluation, and nothing is written
    with pytest.raises(GanqError, match="below the smallest plan"):
        _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "none", budget="1KiB")
    assert not (tmp_path / "none").exists()
    # a target: verified against the full metric, and met
    r3 = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, target="fid=1.5")
    assert r3["verified"]["fid"] <= 1.5 * r3["fp32"]["fid"] and r3["rounds"][-1]["meets"]
    assert (r3["verified"]["fid"], r3["bytes_file"]) == (r3["rounds"][-1]["fid"], r3["rounds"][-1]["bytes_file"])
    assert np.all([u["bits"] in (2, 4, 8) for u in r3["uniform"]])
    # a target out of reach (every quantized tensor costs 50 FID here): one line with the best reachable, nothing
    # written
    import importlib
    ev = importlib.import_module("ganq.evaluate.run")
    real_evaluate = ev.evaluate

    def costly(model, *a, **k):
        out = real_evaluate(model, *a, **k)
        if out["quantization"] and out["quantization"]["bits"] != 32:
            out["fid"] += 50.0
        return out

    monkeypatch.setattr(ev, "evaluate", costly)
    (tmp_path / "far").mkdir()
    with pytest.raises(GanqError, match="out of reach .* the best reachable is about fid=") as e:
        _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path / "far", target="fid=1.1")
    assert "\n" not in str(e.value) and not list((tmp_path / "far").iterdir())


def test_a_smaller_uniform_plan_that_meets_is_the_one_written(tiny_onnx, tiny_classifier, toy_data_root, tmp_path,
                                                               monkeypatch):
    """The per-layer proxy says every narrow width is costly (so the allocation keeps every layer at 8 bits), the
    verification says every file meets: uniform 2 bits then meets with fewer bytes than the verified mixed plan, and
    it is what the search writes, with its own verified metrics (not the mixed plan's)."""
    import importlib

    import onnx

    from ganq.onnx_io import META_QUANT, read_metadata

    ev = importlib.import_module("ganq.evaluate.run")
    real_evaluate = ev.evaluate

    def proxy_fooled(model, dataset, features, opts, *a, **k):
        out = real_evaluate(model, dataset, features, opts, *a, **k)
        bits = {t["bits"] for t in (out["quantization"] or {}).get("tensors", [])}
        if opts.n == 100:  # the proxy
            out["fid"] += 50.0 if bits - {8, 32} else 0.0
        else:  # the verification: every file at fp32's FID, except a recognisable mark per width
            out["fid"] = 10.0 + 0.01 * min(bits or {32}) / 32
        return out

    monkeypatch.setattr(ev, "evaluate", proxy_fooled)
    r = _run(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, target="fid=1.10", verify_n=120)
    assert r["rounds"][0]["bits"] == {x["tensor"]: 8 for x in r["layers"]}  # the allocation's plan, verified
    assert r["uniform"][0]["bits"] == 2 and r["uniform"][0]["meets"] and len(r["uniform"]) == 1
    assert r["rounds"][-1]["uniform"] and {x["chosen_bits"] for x in r["layers"]} == {2}
    assert r["bytes_file"] == r["uniform"][0]["bytes_file"] < r["rounds"][0]["bytes_file"]
    assert r["bytes_file"] == (tmp_path / "m.onnx").stat().st_size
    assert r["verified"]["fid"] == pytest.approx(10.0 + 0.01 * 2 / 32)
    meta = json.loads(read_metadata(onnx.load(str(tmp_path / "m.onnx")))[META_QUANT])
    assert {t["bits"] for t in meta["tensors"]} == {2}
    assert {t["bits"] for t in json.loads((tmp_path / "m.onnx.plan.json").read_text())["tensors"].values()} == {2}


def test_cli_bad_mixed_input_is_one_line(tiny_onnx, tmp_path):
    import subprocess
    import sys

    for args, msg in ((["--target", "lpips=1.1"], "unknown metric 'lpips'"),
                      (["--target", "fid=1.1", "--bits", "3"], "drop --bits"),
                      (["--target", "fid=1.1", "--budget", "1MiB"], "exactly one"),
                      (["--budget", "1KiB", "--dataset", "mnist"], "below the smallest plan"),
                      (["--avg-bits", "3", "--bits-choices", "2,x"], "--bits-choices must be comma-separated"),
                      ([], "give --bits")):
        p = subprocess.run([sys.executable, "-m", "ganq", "quantize", str(tiny_onnx), "--out", str(tmp_path / "q.onnx"),
                            *args], capture_output=True, text=True)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and msg in lines[0], (args, p.stderr)
        assert not list(tmp_path.iterdir())
