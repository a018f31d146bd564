"""Spec input kinds, the one sampler, fixed batches and fidelity metrics (issue 22), torch-free: models built with
onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from ganq.errors import GanqError
from ganq.onnx_io import (META_SPEC, batch_mode, describe, fixed_batch, read_metadata, run_batched, sample_inputs,
                          sample_latents, session)
from ganq.spec import GeneratorSpec, InputSpec, parse_input_option


def spec_with(*inputs, **kw) -> GeneratorSpec:
    return GeneratorSpec(latent_dim=1, channels=1, height=2, width=2, inputs=inputs, **kw)


def test_one_latent_specs_keep_their_json():
    from ganq.zoo import path

    for name in ("fashion-mnist-cnn3", "mnist-fc4"):
        text = read_metadata(onnx.load(str(path(name))))[META_SPEC]
        spec = GeneratorSpec.from_json(text)
        assert spec.to_json() == json.dumps(json.loads(text), sort_keys=True) and not spec.inputs
        assert [i.kind for i in spec.all_inputs] == ["latent"] and spec.family == "unconditional"


@pytest.mark.parametrize("fields,msg", [
    ({"kind": "label"}, "needs classes"),
    ({"kind": "image", "shape": [3, 4, 4]}, "needs its source"),
    ({"kind": "image", "shape": [2, 4, 4], "source": "random"}, "C 1 or 3"),
    ({"kind": "latent", "shape": [4, 2]}, r"\[d\] or \[d, 1, 1\]"),
    ({"kind": "const", "shape": [2], "value": [1.0]}, "needs 2 values"),
    ({"kind": "label", "classes": 3, "weights": [1, 1]}, "3 non-negative"),
    ({"kind": "noise"}, "needs its shape"),
    ({"kind": "latent", "shape": [4], "prior": "cauchy"}, "prior must be one of"),
    ({"kind": "label", "classes": 3, "dtype": "float32"}, "int64 or int32"),
    ({"kind": "wave"}, "kind must be one of"),
])
def test_bad_input_specs_are_one_line(fields, msg):
    with pytest.raises(GanqError, match=msg):
        InputSpec.from_dict({"name": "x", **fields})


def test_spec_json_round_trips_with_every_kind():
    s = spec_with(InputSpec("z", "latent", (8, 1, 1), prior="truncated", truncation=1.5),
                  InputSpec("y", "label", classes=4, weights=(1, 0, 1, 2)), InputSpec("n", "noise", (1, 2, 2)),
                  InputSpec("img", "image", (2, 2, 3), layout="NHWC", source="random", range=(0, 1)),
                  InputSpec("psi", "const", (), value=(0.7,)), output_layout="NHWC")
    assert GeneratorSpec.from_json(s.to_json()) == s
    assert s.latent_dim == 8 and s.input_name == "z" and s.family == "image-to-image"
    with pytest.raises(GanqError, match="repeat"):
        spec_with(InputSpec("z", "noise", (1,)), InputSpec("z", "noise", (2,)))


def test_parse_input_option():
    assert parse_input_option("label=label,classes=10,weights=1:2") == ("label", {"kind": "label", "classes": 10,
                                                                                   "weights": [1.0, 2.0]})
    assert parse_input_option("n=noise,shape=1x8x8")[1]["shape"] == [1, 8, 8]
    assert parse_input_option("img=image,source=folder:/x,range=0:1")[1]["range"] == [0.0, 1.0]
    for bad, msg in (("x", "NAME=KIND"), ("x=wave", "kind must be"), ("x=label,classes=ten", "bad classes"),
                     ("x=label,colour=red", "unknown key")):
        with pytest.raises(GanqError, match=msg):
            parse_input_option(bad)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.integers(1, 40))
def test_sampler_properties(seed, n):
    s = spec_with(InputSpec("z", "latent", (6,)), InputSpec("y", "label", classes=5, weights=(1, 0, 1, 1, 1)),
                  InputSpec("t", "latent", (3,), prior="truncated", truncation=0.5),
                  InputSpec("n", "noise", (1, 2, 2)), InputSpec("psi", "const", (2,), value=(0.5, 2.0)))
    feed = sample_inputs(s, n, seed)
    one = GeneratorSpec(latent_dim=6, channels=1, height=2, width=2)
    # the first latent is the one-latent spec's latent, whatever else the generator takes
    assert np.array_equal(feed["z"], sample_latents(one, n, seed))
    assert feed["y"].dtype == np.int64 and set(feed["y"]) <= {0, 2, 3, 4}  # class 1 has weight 0
    assert np.abs(feed["t"]).max() <= 0.5 and feed["n"].shape == (n, 1, 2, 2)
    assert feed["psi"].tolist() == [0.5, 2.0]
    again = sample_inputs(s, n, seed)
    assert all(np.array_equal(feed[k], again[k]) for k in feed)
    cal = sample_inputs(s, n, seed, calibration=True)
    assert not np.array_equal(cal["z"], feed["z"]) and not np.array_equal(cal["n"], feed["n"])


def test_image_inputs_come_from_a_folder_resized_into_their_range(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * k + (100 if c == "b" else 0), np.uint8)).save(
                tmp_path / "imgs" / c / f"{k}.png")
    inp = InputSpec("img", "image", (4, 4, 1), layout="NHWC", range=(0.0, 1.0), source=f"folder:{tmp_path / 'imgs'}")
    x = sample_inputs(spec_with(inp), 10, 0)["img"]
    assert x.shape == (10, 4, 4, 1) and x.min() >= 0 and x.max() <= 1
    levels = {round(v * 255) for v in np.unique(x)}  # flat grey images keep their value through the resize
    assert levels <= {0, 40, 80, 100, 140, 180}


def _fixed_model(bake: bool) -> onnx.ModelProto:
    """z [2, 3] -> image [2, 1, 2, 2]; bake: a Reshape whose target holds the batch of 2."""
    shape = [2, 1, 2, 2] if bake else [-1, 1, 2, 2]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node("Reshape", ["h", "s"], ["image"])], "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 1, 2, 2])],
        [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w"),
         numpy_helper.from_array(np.array(shape, np.int64), "s")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bake", [False, True])
def test_fixed_batch_symbolic_or_in_batches_gives_the_same_images(tmp_path, bake, capfd):
    m = _fixed_model(bake)
    onnx.save(m, tmp_path / "f.onnx")
    spec = describe(tmp_path / "f.onnx", tmp_path / "f.onnx")
    m = onnx.load(str(tmp_path / "f.onnx"))
    assert fixed_batch(m, spec) == 2
    model, fixed = batch_mode(m, spec, "f.onnx")
    assert (fixed == 2) == bake
    assert ("in batches of 2" if bake else "symbolic batch") in capfd.readouterr().err
    z = sample_latents(spec, 5, 0)
    got = np.concatenate([o for (o,) in run_batched(session(model), ["image"], spec, {"z": z}, 4, fixed)])
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.allclose(got, (z @ w).reshape(5, 1, 2, 2), atol=1e-5)


def test_psnr_closed_form_and_ssim_against_scikit_image():
    from ganq.evaluate.fidelity import PSNR_CAP, psnr, ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    mse = ((a.astype(float) - b) ** 2).reshape(3, -1).mean(1)
    assert psnr(a, b) == pytest.approx(np.mean(10 * np.log10(255 ** 2 / mse)))
    assert psnr(a, a) == PSNR_CAP and ssim(a, a) == pytest.approx(1.0)
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image is the SSIM oracle (the dev extra)")
    want = np.mean([skm.structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=255) for x, y in zip(a, b)])
    assert ssim(a, b) == pytest.approx(want, abs=1e-6)
