import csv
import json

import pytest
from typer.testing import CliRunner

from ganq.cli import app
from ganq.errors import GanqError
from ganq.evaluate import EvalOptions
from ganq.study import SweepSettings, parse_bits, sweep

FILES = ["results.json", "results.csv", "fig-samples.png", "fig-inception.png", "fig-precision-recall.png",
         "fig-realism.png", "fig-quality-vs-size.png", "report.md", "index.html"]


def _settings(bits=(32, 4, 2)):
    return SweepSettings(bits=bits, n=60, speed=False, eval=EvalOptions(n=60, kid_subset_size=30))


def test_sweep_writes_everything_and_resumes(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    out = tmp_path / "report"
    r = sweep([str(tiny_onnx)], _settings(), out, dataset="mnist", features=str(tiny_classifier[0]),
              data_root=toy_data_root)
    for f in FILES:
        assert (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [int(x["bits"]) for x in rows] == [32, 4, 2]
    sizes = [int(x["bytes_file"]) for x in rows]
    assert sizes[0] > sizes[1] > sizes[2]  # packed files shrink with the bits
    ideal = [int(x["bytes_ideal"]) for x in rows]
    assert ideal[1] < ideal[0] / 4
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table>" in html
    cached = sorted((out / "cache").glob("*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in cached]
    again = sweep([str(tiny_onnx)], _settings(), out, dataset="mnist", features=str(tiny_classifier[0]),
                  data_root=toy_data_root)
    assert [p.stat().st_mtime_ns for p in cached] == mtimes  # nothing recomputed
    assert [x["fid"] for x in again["rows"]] == [x["fid"] for x in r["rows"]]
    # the float row equals evaluating the model directly with the same latents and real set
    from ganq.evaluate import evaluate
    direct = evaluate(tiny_onnx, "mnist", tiny_classifier[0], EvalOptions(n=60, kid_subset_size=30),
                      data_root=toy_data_root, cache=tmp_path / "c")
    assert direct["fid"] == pytest.approx(r["rows"][0]["fid"], rel=1e-9)
    assert direct["precision"] == r["rows"][0]["precision"]


def test_same_latents_across_bits(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    r = sweep([str(tiny_onnx)], _settings((32, 16)), tmp_path / "o", dataset="mnist",
              features=str(tiny_classifier[0]), data_root=toy_data_root)
    # 16-bit weights are within 1e-4 relative of float: the samples from the same latents nearly coincide
    a, b = r["rows"]
    assert abs(a["fid"] - b["fid"]) < 0.05 * max(1.0, abs(a["fid"]))


def test_sweep_bad_inputs(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    with pytest.raises(GanqError, match="out of range"):
        SweepSettings(bits=(32, 0))
    with pytest.raises(GanqError, match="twice"):
        SweepSettings(bits=(4, 4))
    with pytest.raises(GanqError, match="comma-separated"):
        parse_bits("8,four")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(GanqError, match="holds no ganq sweep"):
        sweep([str(tiny_onnx)], _settings(), tmp_path / "taken", dataset="mnist", features=str(tiny_classifier[0]),
              data_root=toy_data_root)
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", str(tiny_onnx), "--out", str(tmp_path / "x"), "--bits", "9,99",
                              "--dataset", "mnist"])
    assert res.exit_code == 1 and "out of range" in res.stderr
    # a model whose images do not fit the data set's feature network
    import onnx
    net = onnx.load(str(tiny_classifier[0]))
    meta = next(p for p in net.metadata_props if p.key == "ganq.features")
    meta.value = json.dumps({**json.loads(meta.value), "image_shape": [3, 32, 32]})
    onnx.save(net, str(tmp_path / "rgb.onnx"))
    with pytest.raises(GanqError, match="3x32x32"):
        sweep([str(tiny_onnx)], _settings(), tmp_path / "y", dataset="mnist", features=str(tmp_path / "rgb.onnx"),
              data_root=toy_data_root)
