"""Reliability: an interrupted or failed first sweep resumes (or leaves nothing), corrupt caches heal with one
warning, numeric options have ranges checked before any work, quantize never writes over its input, training that
diverges saves nothing."""

import numpy as np
import pytest
from typer.testing import CliRunner

from ganq.cli import app
from ganq.errors import GanqError, check_range
from ganq.evaluate import EvalOptions
from ganq.study import SweepSettings, sweep


def _settings(bits=(32, 4)):
    return SweepSettings(bits=bits, n=60, speed=False, eval=EvalOptions(n=60, kid_subset_size=30))


def test_failed_first_sweep_leaves_nothing(tiny_onnx, tiny_classifier, tmp_path):
    out = tmp_path / "first"
    with pytest.raises(GanqError, match="not found"):  # no data set anywhere: fails before any cell is cached
        sweep([str(tiny_onnx)], _settings(), out, dataset="mnist", features=str(tiny_classifier[0]),
              data_root=tmp_path / "nodata")
    assert not out.exists()


def test_interrupted_first_sweep_resumes(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, monkeypatch):
    import importlib

    sw = importlib.import_module("ganq.study.executors")

    ev = importlib.import_module("ganq.evaluate.run")  # the sweep measures through evaluate's own function
    out = tmp_path / "first"
    calls = {"n": 0}
    real_score = ev.score

    def interrupted(*a, **k):  # Ctrl-C while the second bit width is scored
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_score(*a, **k)

    monkeypatch.setattr(ev, "score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep([str(tiny_onnx)], _settings(), out, dataset="mnist", features=str(tiny_classifier[0]),
              data_root=toy_data_root)
    assert len(list((out / "cache").glob("*.npz"))) == 1 and sw.is_sweep(out)
    monkeypatch.setattr(ev, "score", real_score)
    r = sweep([str(tiny_onnx)], _settings(), out, dataset="mnist", features=str(tiny_classifier[0]),
              data_root=toy_data_root)
    assert [x["bits"] for x in r["rows"]] == [32, 4]
    assert not list(out.glob("**/*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "random", "wrong-row"])
def test_corrupt_sweep_cache_heals(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, damage, capfd):
    out = tmp_path / "s"
    first = sweep([str(tiny_onnx)], _settings(), out, dataset="mnist", features=str(tiny_classifier[0]),
                  data_root=toy_data_root)
    cell = sorted((out / "cache").glob("*-4.npz"))[0]
    if damage == "truncate":
        cell.write_bytes(cell.read_bytes()[:100])
    elif damage == "random":
        cell.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        import io
        import json
        buf = io.BytesIO()
        np.savez(buf, row=np.array(json.dumps({"bits": 7, "model": "other"})), grid=np.zeros((1, 2, 2, 1), np.uint8))
        cell.write_bytes(buf.getvalue())
    capfd.readouterr()
    again = sweep([str(tiny_onnx)], _settings(), out, dataset="mnist", features=str(tiny_classifier[0]),
                  data_root=toy_data_root)
    err = capfd.readouterr().err
    assert err.count("warning:") == 1 and "discarded and recomputed" in err
    assert [x["fid"] for x in again["rows"]] == [x["fid"] for x in first["rows"]]


def test_corrupt_real_feature_cache_heals(tiny_onnx, tiny_classifier, toy_data_root, tmp_path, capfd):
    from ganq.evaluate import evaluate

    opts = EvalOptions(n=60, kid_subset_size=30)
    a = evaluate(tiny_onnx, "mnist", tiny_classifier[0], opts, data_root=toy_data_root, cache=tmp_path / "c")
    (entry,) = (tmp_path / "c").glob("*.npz")
    np.savez(entry.open("wb"), features=np.zeros((3, 2), np.float32))  # the wrong shape for its key
    capfd.readouterr()
    b = evaluate(tiny_onnx, "mnist", tiny_classifier[0], opts, data_root=toy_data_root, cache=tmp_path / "c")
    assert "discarded and recomputed" in capfd.readouterr().err and a["fid"] == b["fid"]


def test_numeric_option_ranges():
    for value in (0, -3, 2.5, float("inf"), float("nan"), True):
        with pytest.raises(GanqError, match="must be an integer in 1..8"):
            check_range("--x", value, 1, 8)
    assert check_range("--x", 8, 1, 8) == 8
    from ganq.onnx_io import session_options
    from ganq.runtime.bench import BenchJob

    for t in (0, 10000):
        with pytest.raises(GanqError, match="--threads must be an integer in 1.."):
            session_options(t)
        with pytest.raises(GanqError, match="--threads"):
            BenchJob("m.onnx", 1, t)
    with pytest.raises(GanqError, match="--n must be"):
        EvalOptions(n=5)


def test_train_config_ranges():
    pytest.importorskip("torch")
    from ganq.train.loop import TrainConfig

    for kw, msg in (({"lr": float("inf")}, "--lr must be in"), ({"lr": 0.0}, "--lr must be in"),
                    ({"batch_size": 0}, "--batch-size"), ({"image_size": 100000}, "--image-size"),
                    ({"image_size": -3}, "--image-size"), ({"channels": 2}, "--channels must be 1 or 3"),
                    ({"epochs": 0}, "--epochs"), ({"latent_dim": 0}, "--latent-dim")):
        with pytest.raises(GanqError, match=msg):
            TrainConfig(dataset="mnist", arch="fc4", **kw)


def test_cli_ranges_before_work(tiny_onnx, tmp_path):
    import importlib.util

    torch = importlib.util.find_spec("torch") is not None
    needs = "needs PyTorch: pip install 'ganq[train]'"  # the one line of a torch-side command without the extra
    for args, msg in ((["export", str(tmp_path), "--out", str(tmp_path / "x.onnx"), "--n", "0"],
                       "--n must be an integer in 1..100000"),
                      (["train", "--dataset", "mnist", "--arch", "fc4", "--out", str(tmp_path / "r"), "--lr", "inf"],
                       "--lr must be in" if torch else needs),
                      (["train", "--dataset", "mnist", "--arch", "fc4", "--out", str(tmp_path / "r"),
                        "--keep-every", "-1"], "--keep-every" if torch else needs),
                      (["evaluate", str(tiny_onnx), "--threads", "10000"], "--threads must be"),
                      (["quantize", str(tiny_onnx), "--bits", "4", "--out", str(tiny_onnx)], "is the input model")):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == []  # cache: $XDG_CACHE_HOME, where importing onnxruntime writes its device id


def test_diverging_training_saves_nothing(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from conftest import make_idx_root
    from ganq.train.loop import TrainConfig, train

    root = make_idx_root(tmp_path / "data", n_train=64)
    train(TrainConfig(dataset="mnist", arch="fc4", batch_size=32, latent_dim=16), tmp_path / "r", data_root=root)
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    step = torch.optim.Adam.step

    def poisoned(self, *a, **k):  # what an exploding step does: a weight becomes NaN
        out = step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    with pytest.raises(GanqError, match="diverged in epoch 2"):
        train(TrainConfig(dataset="mnist", arch="fc4", batch_size=32, latent_dim=16, epochs=2), tmp_path / "r",
              data_root=root, resume=True)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == good  # epoch 1 stays the last checkpoint


def test_overwrite_policy(tiny_onnx, tmp_path):
    """An existing --out is refused without --force (and never touched); with --force it is replaced."""
    out = tmp_path / "q.onnx"
    out.write_bytes(b"precious")
    base = ["quantize", str(tiny_onnx), "--bits", "4", "--out", str(out)]
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 1 and "exists; add --force" in r.output and out.read_bytes() == b"precious"
    r = CliRunner().invoke(app, base + ["--force"])
    assert r.exit_code == 0 and out.read_bytes()[:8] != b"precious"
    for cmd in (["export-ort", str(tiny_onnx), "--out", str(tmp_path / "m.ort")],
                ["spec", str(tiny_onnx), "--latent-dim", "16", "--out", str(tmp_path / "s.onnx")]):
        target = tmp_path / cmd[cmd.index("--out") + 1]
        target.write_bytes(b"mine")
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 1 and "--force" in r.output and target.read_bytes() == b"mine", r.output


def test_stale_temp_files_of_dead_writers_are_cleaned(tmp_path):
    import os
    import subprocess
    import sys

    from ganq._io import write_text_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".x.json.{dead}.abcd.tmp"
    stale.write_text("half")
    mine = tmp_path / f".x.json.{os.getpid()}.efgh.tmp"  # a live writer's (this process): kept
    mine.write_text("busy")
    write_text_atomic(tmp_path / "x.json", "{}")
    assert not stale.exists() and mine.exists() and (tmp_path / "x.json").read_text() == "{}"


def test_zoo_names_are_names(tmp_path):
    from ganq.onnx_io import resolve_model

    with pytest.raises(GanqError, match="not shipped"):
        resolve_model("zoo:../../../../etc/passwd")
    with pytest.raises(GanqError, match="is a folder"):
        from ganq.onnx_io import load_model
        load_model(tmp_path)


# --- signals: SIGINT and SIGKILL in the middle of the work ----------------------------------------------------

def _default_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ganq(*args, **kw):
    import subprocess
    import sys

    # SIGINT as a terminal gives it: a suite started in the background of a non-interactive shell inherits SIGINT
    # ignored, and so would ganq, which would then never see the Ctrl-C these tests send
    return subprocess.Popen([sys.executable, "-m", "ganq", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


def _wait_for(cond, timeout=60.0):
    import time

    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


INTERRUPTED = ["error: interrupted; files already written are complete"]


@pytest.mark.parametrize("point", ["start", "import", "parse", "work"])
def test_ctrl_c_at_any_point_is_one_line(tiny_onnx, tmp_path, point):
    """SIGINT at each stage of a command (ganq sends it to itself at a fixed place: no timing): the one line, 130,
    nothing written."""
    import os
    import subprocess
    import sys

    out = tmp_path / "q.onnx"
    r = subprocess.run([sys.executable, "-m", "ganq", "quantize", str(tiny_onnx), "--bits", "3", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, preexec_fn=_default_sigint,
                       env={**os.environ, "GANQ_TEST_SIGNAL_AT": point})
    assert r.returncode == 130 and r.stderr.strip().splitlines() == INTERRUPTED, (point, r.stderr[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_signal_during_quantize_leaves_nothing(tiny_onnx, tmp_path, sig):
    """A quantize stopped by a signal from outside while it solves (it waits at the first weight until the signal
    comes: no timing): no output, no temp file; the rerun works."""
    import os
    import signal

    out = tmp_path / "q.onnx"
    p = _ganq("quantize", tiny_onnx, "--bits", "3", "--method", "adaround", "--method-opt", "steps=20",
              "--calibration", "64", "--out", out, cwd=tmp_path, env={**os.environ, "GANQ_TEST_PAUSE_AT": "work"})
    assert p.stderr.readline().strip() == "ganq-test: paused at work"
    p.send_signal(getattr(signal, sig))
    try:
        _, err = p.communicate(timeout=60)
    finally:  # a ganq that did not stop must not outlive the test
        p.kill()
    if sig == "SIGINT":
        assert p.returncode == 130 and err.strip().splitlines() == ["error: interrupted; files already written are "
                                                                    "complete"], err
    else:
        assert p.returncode == -signal.SIGKILL
    assert not out.exists() and not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob("*.tmp"))
    p = _ganq("quantize", tiny_onnx, "--bits", "3", "--method", "adaround", "--method-opt", "steps=20",
              "--calibration", "64", "--out", out, cwd=tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert out.exists()


def test_sigkill_during_sweep_then_rerun_resumes(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    import signal

    out = tmp_path / "sweep"
    args = ("sweep", f"{tiny_onnx}@mnist", "--out", out, "--bits", "32,8,6,5,4,3,2", "--n", "60", "--no-speed",
            "--features", tiny_classifier[0], "--data-root", toy_data_root)
    p = _ganq(*args, cwd=tmp_path)
    assert _wait_for(lambda: len(list((out / "cache").glob("*.npz"))) >= 2 or p.poll() is not None, 300)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the sweep finished before it could be killed")
    done = {c.name for c in (out / "cache").glob("*.npz")}
    assert 2 <= len(done) < 7
    p = _ganq(*args, cwd=tmp_path)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    cells = {c.name for c in (out / "cache").glob("*.npz")}
    assert len(cells) == 7 and done <= cells
    assert (out / "report.html").exists() or (out / "sweep.json").exists()
    assert not list(out.glob("**/*.tmp")) and not list(out.glob("**/.*.tmp"))


def test_initializer_claiming_more_values_than_its_data(tmp_path):
    """dims say 6x5 floats, raw_data holds 3: quantize refuses in one line, onnxruntime's load too."""
    import onnx
    from onnx import TensorProto, helper

    from ganq.quantize import QuantizeOptions, quantize_file
    from ganq.runtime import session

    w = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[6, 5], raw_data=np.zeros(3, np.float32).tobytes())
    g = helper.make_graph([helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1)], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 5])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 6])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(m, tmp_path / "bad.onnx")
    with pytest.raises(GanqError, match="does not match its dims"):
        quantize_file(tmp_path / "bad.onnx", tmp_path / "q.onnx", QuantizeOptions(bits=4))
    assert not (tmp_path / "q.onnx").exists()
    with pytest.raises(GanqError, match="onnxruntime cannot load it"):
        session(tmp_path / "bad.onnx")


def test_real_feature_cache_is_keyed_by_the_data_it_came_from(tiny_onnx, tiny_classifier, tmp_path):
    """Two copies of 'mnist' that differ (two data roots) share one cache folder: each evaluation scores against
    its own data, as without a cache (it once scored against whichever copy filled the cache first)."""
    from conftest import make_idx_root
    from ganq.evaluate import evaluate

    a = make_idx_root(tmp_path / "a", n_test=64)
    b = tmp_path / "b"
    from conftest import toy_digits, write_idx

    for split in ("train", "t10k"):  # another copy, inverted
        images, labels = toy_digits(64, seed=5)
        write_idx(b / f"MNIST/raw/{split}-images-idx3-ubyte", 255 - images)
        write_idx(b / f"MNIST/raw/{split}-labels-idx1-ubyte", labels)
    opts = EvalOptions(n=60, kid_subset_size=30)
    net = str(tiny_classifier[0])
    fid = {}
    for name, root in (("a", a), ("b", b), ("a2", a)):
        shared = evaluate(tiny_onnx, "mnist", net, opts, data_root=root, cache=tmp_path / "shared")["fid"]
        alone = evaluate(tiny_onnx, "mnist", net, opts, data_root=root, cache=tmp_path / f"own-{name}")["fid"]
        assert shared == alone, name
        fid[name] = shared
    assert fid["a"] == fid["a2"] and abs(fid["a"] - fid["b"]) > 1e-3
    assert len(list((tmp_path / "shared").glob("real-*.npz"))) == 2


def test_sidecar_files_follow_the_output_policy(tiny_onnx, tmp_path):
    """The plan file of a mixed quantize and the operator config of export-ort are refused like the main output
    when they exist (before any work), and replaced with --force."""
    plan = tmp_path / "m.onnx.plan.json"
    plan.write_text("mine")
    r = CliRunner().invoke(app, ["quantize", str(tiny_onnx), "--target", "fid=1.5", "--out", str(tmp_path / "m.onnx"),
                                 "--features", str(tmp_path / "none.onnx")])
    assert r.exit_code == 1 and "m.onnx.plan.json: exists; add --force" in r.output, r.output
    assert plan.read_text() == "mine" and not (tmp_path / "m.onnx").exists()
    cfg = tmp_path / "g.required_operators.config"
    cfg.write_text("mine")
    r = CliRunner().invoke(app, ["export-ort", str(tiny_onnx), "--out", str(tmp_path / "g.ort")])
    assert r.exit_code == 1 and "g.required_operators.config: exists; add --force" in r.output, r.output
    assert cfg.read_text() == "mine" and not (tmp_path / "g.ort").exists()
    cfg.unlink()
    cfg.mkdir()  # a folder where the config goes: refused before the .ort is written
    r = CliRunner().invoke(app, ["export-ort", str(tiny_onnx), "--out", str(tmp_path / "g.ort"), "--force"])
    assert r.exit_code == 1 and "is a folder" in r.output and not (tmp_path / "g.ort").exists(), r.output
    cfg.rmdir()
    r = CliRunner().invoke(app, ["export-ort", str(tiny_onnx), "--out", str(tmp_path / "g.ort")])
    assert r.exit_code == 0 and cfg.read_text() != "mine", r.output


def test_sweep_mixed_errors_name_the_sweeps_own_options(tiny_onnx, tmp_path):
    for args, msg in ((["--mixed", "fid"], "--mixed must be METRIC=RATIO"),
                      (["--mixed", "fid=nan"], "--mixed fid must be a number in"),
                      (["--mixed", "fid=0.5"], "--mixed fid must be a number in 1.0..100.0"),
                      (["--mixed", "fid=1.1", "--mixed-choices", "2,x"], "--mixed-choices must be comma-separated")):
        r = CliRunner().invoke(app, ["sweep", str(tiny_onnx), "--out", str(tmp_path / "s"), *args])
        assert r.exit_code == 1 and msg in r.output and "--target" not in r.output, (args, r.output)
    assert not (tmp_path / "s").exists()


def test_of_two_writers_of_one_new_name_the_second_is_told_it_exists(tmp_path):
    """Without --force a final name is claimed without replacing: a writer that finds the name taken when it
    finishes (another run wrote it meanwhile) fails in one line and leaves the other's file and no temp file."""
    from ganq._io import atomic_path

    target = tmp_path / "q.onnx"
    with pytest.raises(GanqError, match="q.onnx: exists .*add --force"):
        with atomic_path(target, replace=False) as first:
            first.write_bytes(b"first")
            with atomic_path(target, replace=False) as second:
                second.write_bytes(b"second")
    assert target.read_bytes() == b"second" and sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]
    with atomic_path(target) as again:  # --force: replaced
        again.write_bytes(b"forced")
    assert target.read_bytes() == b"forced"


def test_outputs_under_a_file_or_in_an_unwritable_place_fail_before_work(tiny_onnx, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    under = blocker / "x"
    for args in (["quantize", str(tiny_onnx), "--bits", "4", "--out", str(under / "q.onnx")],
                 ["evaluate", str(tiny_onnx), "--n", "20", "--out", str(under / "e.json")],
                 ["sweep", str(tiny_onnx), "--out", str(under)],
                 ["app", str(tiny_onnx), "--out", str(under)],
                 ["export-ort", str(tiny_onnx), "--out", str(under / "g.ort")]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1 and f"{blocker} is a file, not a folder" in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert blocker.read_text() == "x"


def test_a_weight_shared_along_different_axes_quantizes_per_tensor(tmp_path):
    """One initializer read by a MatMul (x @ W, channels on axis 1) and a Gemm(transB=1) (channels on axis 0):
    refused per channel with the reason, quantized per tensor."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ganq.quantize import QuantizeOptions, quantize_model

    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["a"]),
                           helper.make_node("Gemm", ["x", "W"], ["b"], transB=1),
                           helper.make_node("Add", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(GanqError, match="different channel axes; use --granularity tensor"):
        quantize_model(m, QuantizeOptions(bits=4, granularity="channel"))
    q, rep = quantize_model(m, QuantizeOptions(bits=4))
    assert rep["params_quantized"] == 16
    assert len(np.unique(numpy_helper.to_array(q.graph.initializer[0]))) <= 16
    onnx.checker.check_model(q)


def test_a_plan_that_keeps_every_weight_float_gives_a_float_copy(tiny_onnx, tmp_path):
    import json

    from ganq.onnx_io import load_model
    from ganq.quantize.ops import find_targets

    names = [t.name for t in find_targets(load_model(tiny_onnx))]
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"tensors": {n: {"bits": 32} for n in names}}))
    r = CliRunner().invoke(app, ["quantize", str(tiny_onnx), "--bits", "4", "--plan", str(plan), "--out",
                                 str(tmp_path / "f.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["params_quantized"] == 0 and any("every weight at 32 bits" in n for n in rep["notes"])


@pytest.mark.parametrize("entry,msg", [
    ({"bits": 3, "method": "mse", "method_opts": {"steps": 10.5}}, "steps must be an integer"),
    ({"bits": 3, "method": "tanh", "method_opts": {"c": [1]}}, "c must be a finite number"),
    ({"bits": 3, "method": "gptq", "method_opts": {"act_order": 5}}, "act_order must be true or false"),
    ({"bits": "4"}, "must be an integer from 1 to 16"),
])
def test_plan_file_values_are_type_checked(tiny_onnx, tmp_path, entry, msg):
    import json

    from ganq.onnx_io import load_model
    from ganq.quantize.ops import find_targets

    name = find_targets(load_model(tiny_onnx))[0].name
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"tensors": {name: entry}}))
    r = CliRunner().invoke(app, ["quantize", str(tiny_onnx), "--bits", "4", "--plan", str(plan), "--out",
                                 str(tmp_path / "q.onnx")])
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "q.onnx").exists()


def test_a_deeply_nested_plan_file_is_one_line(tiny_onnx, tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text("[" * 100_000 + "]" * 100_000)
    r = CliRunner().invoke(app, ["quantize", str(tiny_onnx), "--bits", "4", "--plan", str(plan), "--out",
                                 str(tmp_path / "q.onnx")])
    assert r.exit_code == 1 and "not a JSON plan" in r.output, r.output[-500:]


@pytest.mark.parametrize("flags", [["--method", "gptq"], ["--recalibrate-bn"]])
def test_calibration_on_a_spec_that_disagrees_with_its_graph_is_one_line(tiny_onnx, tmp_path, flags):
    import json

    import onnx

    from ganq.onnx_io import META_SPEC, read_metadata, write_metadata

    m = onnx.load(str(tiny_onnx))
    spec = json.loads(read_metadata(m)[META_SPEC])
    write_metadata(m, META_SPEC, json.dumps(dict(spec, latent_dim=7)))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    r = CliRunner().invoke(app, ["quantize", str(bad), "--bits", "4", "--calibration", "16", *flags, "--out",
                                 str(tmp_path / "q.onnx")])
    assert r.exit_code == 1 and "spec says latent size 7" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("command", [["app"], ["export-ort"]])
@pytest.mark.parametrize("change", [{"latent_dim": 7}, {"input_name": "noise"}])
def test_app_and_export_ort_refuse_a_spec_that_disagrees_with_its_graph(tiny_onnx, tmp_path, command, change):
    import json

    import onnx

    from ganq.onnx_io import META_SPEC, read_metadata, write_metadata

    m = onnx.load(str(tiny_onnx))
    write_metadata(m, META_SPEC, json.dumps(dict(json.loads(read_metadata(m)[META_SPEC]), **change)))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    out = tmp_path / ("page" if command == ["app"] else "g.ort")
    r = CliRunner().invoke(app, [*command, str(bad), "--out", str(out)])
    assert r.exit_code == 1 and f"{bad}: spec" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


# --- issue 27, third round: bounded metrics, signals reaching workers, stale temps, data roots, full disks ---------

def test_fid_with_more_dimensions_than_samples_is_exact_without_the_d_by_d_matrices():
    from ganq.evaluate import metrics

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((25, 90)), rng.standard_normal((30, 90)) * 1.2 + 0.3
    full = metrics.fid_from_stats(metrics.gaussian_stats(a), metrics.gaussian_stats(b))
    assert metrics.fid(a, b) == pytest.approx(full, rel=1e-6)
    wide = rng.standard_normal((20, 30_000)).astype(np.float32)  # 30,000-D: a D x D matrix would be 6.7 GiB
    assert metrics.fid(wide, wide) == pytest.approx(0.0, abs=1e-6)


def test_metrics_beyond_the_memory_bound_refuse_in_one_line(monkeypatch):
    from ganq.evaluate import metrics

    monkeypatch.setattr(metrics, "MATRIX_BOUND", 8 * 100 * 100)
    x = np.random.default_rng(1).standard_normal((200, 150))
    with pytest.raises(GanqError, match="more than the 0 GiB bound|GiB matrix, more than"):
        metrics.fid(x, x)


def test_sigterm_stops_every_sweep_worker(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    """SIGTERM to `ganq sweep --workers 2` while both workers solve (each waits at its first weight: no timing):
    ganq exits 143 with the one line, and no worker outlives it."""
    import os
    import signal
    import subprocess

    out = tmp_path / "sweep"
    p = _ganq("sweep", f"{tiny_onnx}@mnist", "--out", out, "--bits", "4,3", "--n", "60", "--no-speed", "--workers",
              "2", "--features", tiny_classifier[0], "--data-root", toy_data_root, cwd=tmp_path,
              env={**os.environ, "GANQ_TEST_PAUSE_AT": "work"})
    try:
        assert _wait_for(lambda: p.poll() is not None or len(subprocess.run(
            ["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()) >= 2, 120)
        assert _wait_for(lambda: "paused at work" in "".join(_read_ready(p)), 120)
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 143
    assert _wait_for(lambda: not any(os.path.exists(f"/proc/{c}") and
                                     "zombie" not in open(f"/proc/{c}/status").read().lower() for c in children), 20)


_BUFFERS: dict = {}


def _read_ready(p):
    """What p has written to stderr so far, without blocking."""
    import os
    import select

    buf = _BUFFERS.setdefault(p.pid, [])
    while select.select([p.stderr], [], [], 0)[0]:
        chunk = os.read(p.stderr.fileno(), 4096).decode(errors="replace")
        if not chunk:
            break
        buf.append(chunk)
    return buf


def test_the_temporary_folder_of_an_interrupted_app_is_removed_by_the_next_run(tiny_onnx, tmp_path):
    from ganq.app import build_app

    stale = tmp_path / ".page.999999999.abcd.tmp"  # a pid that cannot be alive
    (stale / "ort").mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"partial")
    live = tmp_path / f".page.{__import__('os').getpid()}.efgh.tmp"  # a running writer's: left alone
    live.mkdir()
    build_app(tiny_onnx, tmp_path / "page")
    assert not stale.exists() and live.exists() and (tmp_path / "page" / "model.onnx").exists()


def test_a_data_root_with_one_split_serves_that_split_and_names_the_missing_one(tmp_path):
    import shutil

    from ganq import data

    root = tmp_path / "root" / "FashionMNIST" / "raw"
    root.mkdir(parents=True)
    for f in (data.EMBEDDED_ROOT / "fashion-mnist").glob("t10k-*"):
        shutil.copy(f, root / f.name)
    ds = data.load("fashion-mnist", "test", data_root=tmp_path / "root")
    assert ds.source == str(root) and len(ds.images) == 10_000
    with pytest.raises(GanqError, match=r"holds only its test split .*put its train split there too"):
        data.load("fashion-mnist", "train", data_root=tmp_path / "root")


def test_a_full_disk_is_one_line(capfd):
    import errno

    import typer

    from ganq.cli.base import handles_errors

    @handles_errors
    def write():
        raise OSError(errno.ENOSPC, "No space left on device", "/full/m.onnx")

    with pytest.raises(typer.Exit) as e:
        write()
    assert e.value.exit_code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: /full/m.onnx: no space left on the device")


def test_a_scheduler_that_accepts_and_never_answers_fails_in_one_line(monkeypatch):
    import socket

    pytest.importorskip("distributed")
    from ganq.study import executors

    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 3.0)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        with pytest.raises(GanqError, match="accepts connections but does not answer|cannot reach"):
            executors.connect(f"tcp://127.0.0.1:{srv.getsockname()[1]}")
    finally:
        srv.close()


def test_mixed_search_errors_name_the_given_model(tiny_onnx, tmp_path):
    import json

    import onnx

    from ganq.onnx_io import META_SPEC, read_metadata, write_metadata

    m = onnx.load(str(tiny_onnx))
    spec = json.loads(read_metadata(m)[META_SPEC])
    write_metadata(m, META_SPEC, json.dumps({**spec, "latent_dim": 7}))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    r = CliRunner().invoke(app, ["quantize", str(bad), "--target", "fid=1.5", "--out", str(tmp_path / "o.onnx")])
    assert r.exit_code == 1 and str(bad) in r.output and "ganq-mixed" not in r.output
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.onnx.plan.json").exists()
