"""The command line: exit codes, one-line errors, JSON output, nothing half-written."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import make_idx_root
from ganq.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in result.output
    for f in fragments:
        assert f in err, err


def test_datasets_json(tmp_path):
    root = make_idx_root(tmp_path, n_train=8, n_test=8)
    r = run("datasets", "--data-root", root, "--json")
    assert r.exit_code == 0
    rows = {d["name"]: d for d in json.loads(r.stdout)}
    assert rows["mnist"]["found"] == str(root / "MNIST/raw") and rows["mnist"]["shape"] == "1x28x28"
    assert rows["cifar10"]["found"] is None and rows["cifar10"]["how_to_get"]


def test_train_bad_inputs(tmp_path):
    pytest.importorskip("torch")
    root = make_idx_root(tmp_path / "d", n_train=64)
    _one_line_error(run("train", "--dataset", "imagenet", "--arch", "fc4", "--out", tmp_path / "r"),
                    "unknown data set", "mnist, fashion-mnist")
    _one_line_error(run("train", "--dataset", "mnist", "--arch", "vit", "--out", tmp_path / "r",
                        "--data-root", root), "unknown architecture", "fc4, cnn5, cnn3, dcgan")
    _one_line_error(run("train", "--dataset", "mnist", "--arch", "dcgan", "--out", tmp_path / "r",
                        "--data-root", root), "dcgan takes 32x32")
    _one_line_error(run("train", "--dataset", "mnist", "--arch", "fc4", "--out", tmp_path / "r",
                        "--data-root", tmp_path / "nothing"), "mnist not found")
    assert not (tmp_path / "r").exists()


def test_train_export_quantize_roundtrip(tmp_path):
    pytest.importorskip("torch")
    root = make_idx_root(tmp_path / "d", n_train=64)
    r = run("train", "--dataset", "mnist", "--arch", "fc4", "--out", tmp_path / "r", "--data-root", root,
            "--batch-size", "32", "--latent-dim", "8")
    assert r.exit_code == 0, r.output
    r = run("export", tmp_path / "r", "--out", tmp_path / "g.onnx", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_abs_diff"] <= 1e-5
    r = run("quantize", tmp_path / "g.onnx", "--bits", "3", "--format", "packed", "--out", tmp_path / "g3.onnx",
            "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["bits"] == 3 and len(rep["tensors"]) == 4 and rep["bytes_file"] < rep["bytes_source_file"] / 8
    r = run("quantize", tmp_path / "g.onnx", "--bits", "4", "--out", tmp_path / "g4.onnx")
    assert r.exit_code == 0 and "model size" in r.stdout
    r = run("spec", tmp_path / "g3.onnx", "--json")
    assert json.loads(r.stdout)["arch"] == "fc4"


def test_quantize_bad_inputs(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    _one_line_error(run("quantize", tmp_path / "missing.onnx", "--bits", "4", "--out", tmp_path / "o.onnx"),
                    "no such file")
    _one_line_error(run("quantize", tmp_path / "junk.onnx", "--bits", "4", "--out", tmp_path / "o.onnx"),
                    "not an ONNX model")
    _one_line_error(run("quantize", tmp_path / "junk.onnx", "--bits", "0", "--out", tmp_path / "o.onnx"),
                    "from 1 to 16")
    assert not (tmp_path / "o.onnx").exists()


def test_usage_error_exit_2():
    assert run("quantize").exit_code == 2


def test_console_script_one_line_error(tmp_path):
    """The installed entry point, in a real process: one stderr line, exit 1."""
    p = subprocess.run([sys.executable, "-m", "ganq.cli", "quantize", str(tmp_path / "none.onnx"), "--bits", "4",
                        "--out", str(tmp_path / "o.onnx")], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("error:")


def test_deploy_side_never_imports_torch():
    code = ("import sys, ganq.quantize, ganq.quantize.methods, ganq.runtime, ganq.evaluate, ganq.report, ganq.spec, "
            "ganq.data, ganq.app, ganq.app.mobile, ganq.registry, ganq.onnx_io, ganq.runtime.bench, ganq.study;"
            "print(any(m.split('.')[0] in ('torch', 'torchvision') or m.startswith(('ganq.train', 'ganq.export'))"
            " for m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
