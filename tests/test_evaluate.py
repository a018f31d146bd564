import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from ganq.cli import app
from ganq.errors import GanqError
from ganq.evaluate import EvalOptions, FeatureNet, evaluate, score
from ganq.runtime import Generator, session, to_float, to_uint8


def test_uint8_float_roundtrip():
    u = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 2)).astype(np.uint8)
    assert np.array_equal(to_uint8(to_float(u)), u)
    x = np.array([[[[-1.0, 0.0, 1.0, 2.0]]]], np.float32)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 128, 255, 255]


def test_generate_is_seeded_and_batch_independent(tiny_onnx):
    g = Generator(tiny_onnx)
    a = g.generate(23, seed=5, batch=7)
    assert a.shape == (23, 28, 28, 1) and a.dtype == np.uint8
    assert np.array_equal(a, g.generate(23, seed=5, batch=500))
    assert not np.array_equal(a, g.generate(23, seed=6))
    assert np.array_equal(g.latents(4, 1), g.latents(4, 1))


def test_runtime_bad_inputs(tiny_onnx, tmp_path):
    with pytest.raises(GanqError, match="unknown provider"):
        session(tiny_onnx, provider="tpu")
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(GanqError, match="onnxruntime-gpu"):
            session(tiny_onnx, provider="cuda")
    with pytest.raises(GanqError, match="no such file"):
        Generator(tmp_path / "none.onnx")
    m = onnx.load(str(tiny_onnx))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "bare.onnx"))
    with pytest.raises(GanqError, match="not a ganq generator"):
        Generator(tmp_path / "bare.onnx")
    with pytest.raises(GanqError, match="not a ganq feature network"):
        FeatureNet(tiny_onnx)
    with pytest.raises(GanqError, match="zoo:nope is not shipped"):
        Generator("zoo:nope")


def test_classifier_export(trained_classifier, toy_data_root):
    from ganq import data

    path, info = trained_classifier
    assert info["parity_max_abs_diff"] <= 1e-4 and info["feature_dim"] == 128
    net = FeatureNet(path)
    test = data.load("mnist", "test", data_root=toy_data_root)
    logits, feats = net(test.images, batch=64)
    assert logits.shape == (200, 10) and feats.shape == (200, 128) and feats.min() >= 0  # after a ReLU
    acc = (logits.argmax(1) == test.labels).mean()
    assert acc == pytest.approx(info["test_accuracy"], abs=1e-6)
    assert acc > 0.5  # the toy classes are a square's position: easy


def test_score_of_real_against_itself(tiny_classifier, toy_data_root):
    from ganq import data

    net = FeatureNet(tiny_classifier[0])
    logits, feats = net(data.load("mnist", "test", data_root=toy_data_root).images)
    r = score(logits, feats, logits, feats, EvalOptions(n=200, kid_subset_size=100))
    assert r["precision"] == r["recall"] == 1.0
    assert abs(r["fid"]) < 1e-6 and abs(r["kid"]) < 1e-2 and r["coverage"] == 1.0


def test_evaluate_end_to_end(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    opts = EvalOptions(n=100, kid_subset_size=50)
    r = evaluate(tiny_onnx, "mnist", tiny_classifier[0], opts, data_root=toy_data_root, cache=tmp_path / "c")
    for key in ("inception_score", "fid", "kid", "precision", "recall", "realism_precision", "density", "coverage"):
        assert np.isfinite(r[key]), key
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 1 <= r["inception_score"] <= 10
    assert sum(r["class_histogram"]) == 100
    assert len(list((tmp_path / "c").glob("real-*.npz"))) == 1
    again = evaluate(tiny_onnx, "mnist", tiny_classifier[0], opts, data_root=toy_data_root, cache=tmp_path / "c")
    assert {k: again[k] for k in ("fid", "precision", "recall")} == {k: r[k] for k in ("fid", "precision", "recall")}


def test_evaluate_cli_json_and_shape_mismatch(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tiny_onnx), "--features", str(tiny_classifier[0]), "--n", "60",
                              "--data-root", str(toy_data_root), "--cache", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)) >= {"inception_score", "fid", "precision", "recall", "realism_precision"}
    # a feature network for other images
    m = onnx.load(str(tiny_classifier[0]))
    meta = next(p for p in m.metadata_props if p.key == "ganq.features")
    meta.value = json.dumps({**json.loads(meta.value), "image_shape": [3, 32, 32]})
    onnx.save(m, str(tmp_path / "rgb.onnx"))
    res = runner.invoke(app, ["evaluate", str(tiny_onnx), "--features", str(tmp_path / "rgb.onnx"), "--n", "60",
                              "--data-root", str(toy_data_root)])
    # (refused as a network whose metadata contradicts its own input, before any generator meets it)
    assert res.exit_code == 1 and "3x32x32" in res.stderr and "\n" not in res.stderr.strip()


def test_metrics_command_and_bad_arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "f.npy", rng.standard_normal((50, 4)).astype(np.float32))
    np.save(tmp_path / "r.npy", rng.standard_normal((60, 4)).astype(np.float32))
    np.save(tmp_path / "wide.npy", rng.standard_normal((60, 5)).astype(np.float32))
    bad = rng.standard_normal((60, 4))
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    runner = CliRunner()
    r = runner.invoke(app, ["metrics", str(tmp_path / "f.npy"), str(tmp_path / "r.npy"), "--json", "--strict"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    from ganq.evaluate import metrics as M
    f, rr = np.load(tmp_path / "f.npy"), np.load(tmp_path / "r.npy")
    assert got["precision"] == M.precision_recall(f, rr, 3, strict=True)["precision"]
    assert got["fid"] == pytest.approx(M.fid(f, rr)) and got["inception_score"] is None
    assert got["n_fake"] == 50 and got["n_real"] == 60
    for other, msg in (("wide.npy", "widths differ"), ("nan.npy", "NaN"), ("obj.npy", "must be real numbers"),
                       ("none.npy", "no such file")):
        r = runner.invoke(app, ["metrics", str(tmp_path / "f.npy"), str(tmp_path / other)])
        assert r.exit_code == 1 and msg in r.stderr, (other, r.stderr)
    np.save(tmp_path / "tiny.npy", rng.standard_normal((3, 4)))
    r = runner.invoke(app, ["metrics", str(tmp_path / "f.npy"), str(tmp_path / "tiny.npy")])
    assert r.exit_code == 1 and "needs more samples" in r.stderr


def test_evaluate_json_keys_and_feature_names(tiny_onnx, tiny_classifier, toy_data_root, tmp_path):
    from ganq.evaluate import resolve_features

    opts = EvalOptions(n=60, kid_subset_size=30)
    r = evaluate(tiny_onnx, "mnist", str(tiny_classifier[0]), opts, data_root=toy_data_root, cache=tmp_path)
    for key in ("inception_score", "inception_score_std", "fid", "kid", "kid_std", "precision", "recall", "density",
                "coverage", "realism_precision", "realism_recall", "n_fake", "n_real", "k", "features"):
        assert key in r, key
    assert r["n_fake"] == r["n_real"] == 60 and r["quantization"] is None
    assert resolve_features("classifier", "fashion-mnist", (1, 28, 28)) == "zoo:fashion-mnist-classifier"
    with pytest.raises(GanqError, match="ganq convert-features inception --weights FILE --dataset mnist"):
        resolve_features("inception", "mnist", (1, 28, 28))
    with pytest.raises(GanqError, match="unknown feature network"):
        resolve_features("clip", "mnist", (1, 28, 28))
