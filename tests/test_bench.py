import json

import pytest
from typer.testing import CliRunner

from ganq.cli import app
from ganq.errors import GanqError
from ganq.runtime.bench import parse_ints

runner = CliRunner()


def test_bench_json_shape(tiny_onnx, tmp_path):
    from ganq.quantize import QuantizeOptions, quantize_file

    quantize_file(tiny_onnx, tmp_path / "q.onnx", QuantizeOptions(bits=4, format="int"))
    r = runner.invoke(app, ["bench", str(tiny_onnx), str(tmp_path / "q.onnx"), "--batch", "1,3", "--threads", "1",
                            "--warmup", "1", "--repeat", "3", "--qdq", "both", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert set(rep) == {"machine_before", "machine_after", "results"}
    # the int file in both decode modes, the fp32 file (nothing to decode) once: x 2 batches
    assert len(rep["results"]) == (2 + 1) * 2
    for row in rep["results"]:
        assert row["p50_ms"] <= row["p95_ms"] and row["images_per_s"] > 0 and row["load_ms"] > 0
        assert row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0 and row["file_bytes"] > 0
    q = [x for x in rep["results"] if x["model"].endswith("q.onnx")]
    assert {(x["batch"], x["qdq"]) for x in q} == {(1, "keep"), (3, "keep"), (1, "fold"), (3, "fold")}
    assert {x["qdq"] for x in rep["results"] if x not in q} == {"fold"}


def test_bench_vs_torch(tiny_run, tiny_onnx):
    pytest.importorskip("torch")
    r = runner.invoke(app, ["bench", str(tiny_onnx), "--batch", "2", "--threads", "1", "--warmup", "0",
                            "--repeat", "2", "--vs-torch", str(tiny_run), "--json"])
    assert r.exit_code == 0, r.output
    assert [x["engine"] for x in json.loads(r.stdout)["results"]] == ["onnxruntime", "torch"]


@pytest.mark.parametrize("args,msg", [(["--batch", "0"], "positive"), (["--batch", "a"], "comma-separated"),
                                      (["--provider", "tpu"], "unknown provider"), (["--qdq", "maybe"], "--qdq")])
def test_bench_bad_inputs(tiny_onnx, args, msg):
    r = runner.invoke(app, ["bench", str(tiny_onnx), *args])
    assert r.exit_code == 1 and msg in r.stderr and r.stderr.strip().count("\n") == 0


def test_bench_refuses_missing_and_non_generators(tmp_path, tiny_classifier):
    r = runner.invoke(app, ["bench", str(tmp_path / "none.onnx")])
    assert r.exit_code == 1 and "no such file" in r.stderr
    r = runner.invoke(app, ["bench", str(tiny_classifier[0]), "--batch", "1", "--threads", "1", "--repeat", "1"])
    assert r.exit_code == 1 and "not a ganq generator" in r.stderr


def test_parse_ints():
    assert parse_ints("1, 64,512", "x") == [1, 64, 512]
    with pytest.raises(GanqError):
        parse_ints("", "x")


def test_a_provider_this_onnxruntime_lacks_is_one_line_before_any_work(tiny_onnx):
    import onnxruntime as ort

    from ganq.errors import GanqError
    from ganq.runtime.bench import BenchSettings

    if "XnnpackExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has XNNPACK")
    with pytest.raises(GanqError, match="provider xnnpack is not available in this onnxruntime .*--use_xnnpack"):
        BenchSettings(models=(str(tiny_onnx),), provider="xnnpack")
