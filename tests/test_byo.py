"""Bring your own generator (issue 22): the families people deploy, exported by torch.onnx.export, through every
command. The families are built in tests/fixtures/families.py (random weights, tiny, seeded).

The matrix in `make test` covers every family x method x format (int and packed equal to fake within 1e-5, at
least 95% of the weight parameters quantized), with the bit width alternating 4 / 3 by method; GANQ_BYO_FULL=1 (CI)
runs both widths for every cell. The variants (opset 13, a fixed batch of 1, the dynamo exporter, external data)
each go through a round-to-nearest and a calibrated method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the families are built in torch (ganq[train])")

from fixtures.families import FAMILIES, export, reference, spec_args  # noqa: E402

from ganq.errors import GanqError  # noqa: E402
from ganq.onnx_io import (describe, fixed_batch, load_model, probe_inputs, read_spec,  # noqa: E402
                          run)
from ganq.spec import parse_input_option  # noqa: E402

FULL = os.environ.get("GANQ_BYO_FULL") == "1"
METHODS = [("minmax", {}), ("mse", {}), ("kmeans", {}), ("gptq", {"recalibrate_bn": True}),
           ("adaround", {"recalibrate_bn": True})]
# what `ganq spec --write` must tell from each graph
KINDS = {"dcgan64": ["latent"], "dcgan64-4d": ["latent"], "cgan": ["latent", "label"],
         "stylegan2": ["latent", "noise", "noise", "noise"], "stylegan2-unfused": ["latent", "noise", "noise", "noise"],
         "pix2pix": ["image"], "cyclegan": ["image"], "esrgan": ["image"], "esrgan-ps": ["image"]}
# torch's TorchScript exporter cannot export the fused modulated convolution with a symbolic batch (its grouped
# conv's kernel then has an unknown shape): that family is exported, as users do, with a fixed batch
BASE = {"stylegan2": {"fixed_batch": 1}}
VARIANTS = {"o13": {"opset": 13}, "b1": {"fixed_batch": 1}, "dynamo": {"dynamo": True}, "ext": {"external": True}}
# symbolic output height and width (torch's dynamic_axes on the image): the size is measured by running once
SYMBOLIC = ("stylegan2-unfused", "cyclegan", "esrgan")
_CACHE: dict = {}


def _spec_kwargs(name: str) -> dict:
    args = spec_args(name)
    given = dict(parse_input_option(a) for a in args[1::2])
    return {"inputs": given}


def built(tmp_path_factory, name: str, variant: str = "base") -> Path:
    """The family's .onnx (exported once per test session) with a ganq spec written by describe()."""
    key = (name, variant)
    if key not in _CACHE:
        folder = tmp_path_factory.mktemp(f"{name}-{variant}")
        path = folder / f"{name}.onnx"
        extra = {"symbolic_size": True} if variant == "sym" else VARIANTS.get(variant, {})
        kw = dict(BASE.get(name, {})) if variant == "base" else {**BASE.get(name, {}), **extra}
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(name, path, **kw)
        describe(path, path, **_spec_kwargs(name))
        _CACHE[key] = path
    return _CACHE[key]


def _feed(path: Path, n: int = 3) -> tuple[dict, object]:
    m = load_model(path)
    spec = read_spec(m)
    return probe_inputs(spec, fixed_batch(m, spec) or n), spec


@pytest.mark.parametrize("name", list(FAMILIES))
def test_spec_tells_every_input_and_onnxruntime_equals_torch(tmp_path_factory, name):
    path = built(tmp_path_factory, name)
    feed, spec = _feed(path)
    assert [i.kind for i in spec.all_inputs] == KINDS[name]
    if name == "cgan":
        assert spec.inputs_of("label")[0].classes == 10  # read from the embedding table
    if name == "dcgan64-4d":
        assert spec.latent_input.shape == (16, 1, 1)
    (got,) = run(load_model(path), feed, [spec.output_name])
    want = reference(name, feed)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def _matrix():
    for name in FAMILIES:
        for k, (method, extra) in enumerate(METHODS):
            for bits in ((4, 3) if FULL else ((4, 3)[(k + len(name)) % 2],)):
                yield name, method, bits


@pytest.mark.parametrize("name,method,bits", list(_matrix()))
def test_every_method_and_format_on_every_family(tmp_path_factory, name, method, bits):
    from ganq.quantize import QuantizeOptions, quantize_model

    path = built(tmp_path_factory, name)
    model = load_model(path)
    feed, spec = _feed(path)
    extra = dict(METHODS)[method]
    outs, reports = {}, {}
    for fmt in ("fake", "int", "packed"):
        q, rep = quantize_model(model, QuantizeOptions(bits=bits, method=method, granularity="channel", format=fmt,
                                                       calibration=32, **extra))
        (outs[fmt],) = run(q, feed, [spec.output_name])
        reports[fmt] = rep
    for fmt in ("int", "packed"):
        assert np.abs(outs[fmt] - outs["fake"]).max() <= 1e-5, fmt
    rep = reports["fake"]
    assert rep["weight_share"] >= 0.95, rep["weights_left_float"]
    assert all(r["levels_used"] <= 2 ** bits for r in rep["tensors"])
    assert np.isfinite(outs["fake"]).all()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_integer_activations_on_every_family(tmp_path_factory, name):
    """--activations 8 on each family: the QDQ file equals onnx.reference (the fake-quantized graph) in onnxruntime
    without its fusions, and loads and runs with them (the integer kernels)."""
    from onnx.reference import ReferenceEvaluator

    from ganq.onnx_io import session
    from ganq.quantize import QuantizeOptions, quantize_model

    path = built(tmp_path_factory, name)
    feed, spec = _feed(path)
    q, rep = quantize_model(load_model(path), QuantizeOptions(bits=8, method="symmetric", granularity="channel",
                                                              format="int", activations=8, calibration=32))
    assert rep["activations"]["tensors"] >= 9 and rep["weight_share"] >= 0.95
    ref = ReferenceEvaluator(q).run([spec.output_name], feed)[0]
    plain = session(q, optimization="disable").run([spec.output_name], feed)[0]
    fused = session(q).run([spec.output_name], feed)[0]
    assert np.abs(plain - ref).max() <= 1e-5 and np.isfinite(fused).all()
    assert np.abs(fused - ref).mean() <= 1e-2


def _variants():
    for name in FAMILIES:
        yield from ((name, v) for v in VARIANTS)
        if name in SYMBOLIC:
            yield name, "sym"


@pytest.mark.parametrize("name,variant", list(_variants()))
def test_variants_through_quantize_bench_export_ort_and_app(tmp_path_factory, tmp_path, name, variant):
    """Each variant: onnxruntime equals torch; a round-to-nearest and a calibrated method; then (always for a fixed
    batch and external data, for every variant with GANQ_BYO_FULL=1) bench, export-ort and the app."""
    from ganq.app import build_app
    from ganq.app.mobile import export_ort
    from ganq.onnx_io import save_model
    from ganq.quantize import QuantizeOptions, quantize_model
    from ganq.runtime.bench import BenchJob, run_job

    if variant == "dynamo" and name == "stylegan2" and not FULL:
        pytest.skip("the fused StyleGAN2 through the dynamo exporter takes long; GANQ_BYO_FULL=1 runs it")
    path = built(tmp_path_factory, name, variant)
    model = load_model(path)
    feed, spec = _feed(path)
    if variant == "sym":
        dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        assert isinstance(dims[2], str) and (spec.height, spec.width) == (feed and _out_hw(model, feed, spec))
    (ref,) = run(model, feed, [spec.output_name])
    assert np.abs(ref - reference(name, feed)).max() <= 1e-4
    for method, fmt, bits, extra in (("minmax", "int", 4, {}), ("gptq", "packed", 3, {"recalibrate_bn": True})):
        q, rep = quantize_model(model, QuantizeOptions(bits=bits, method=method, granularity="channel", format=fmt,
                                                       calibration=16, **extra))
        (out,) = run(q, feed, [spec.output_name])
        assert rep["weight_share"] >= 0.95 and np.isfinite(out).all() and out.shape == ref.shape
    if FULL or variant in ("b1", "ext"):
        qpath = tmp_path / "q.onnx"
        save_model(q, qpath)
        assert run_job(BenchJob(str(qpath), batch=2, threads=1, warmup=1, repeat=1))["images_per_s"] > 0
        assert export_ort(qpath, tmp_path / "q.ort")["max_abs_diff"] <= 1e-5
        assert "model.onnx" in build_app(qpath, tmp_path / "app")["files"]


def _out_hw(model, feed, spec):
    (y,) = run(model, feed, [spec.output_name])
    return tuple(y.shape[2:]) if spec.output_layout == "NCHW" else tuple(y.shape[1:3])


def test_a_fixed_batch_is_made_symbolic_where_the_graph_allows_and_run_in_batches_where_not(tmp_path_factory,
                                                                                            capfd):
    from ganq.runtime import Generator

    plain = Generator(built(tmp_path_factory, "dcgan64", "b1"))
    baked = Generator(built(tmp_path_factory, "stylegan2"))  # its Reshapes hold the batch of 1
    err = capfd.readouterr().err
    assert plain.fixed is None and "runs it with a symbolic batch" in err
    assert baked.fixed == 1 and "runs it in batches of 1" in err
    for g in (plain, baked):
        a = g.generate(5, seed=3, batch=4)
        b = g.generate(5, seed=3, batch=1)
        assert a.shape == (5, g.spec.height, g.spec.width, g.spec.channels) and np.array_equal(a, b)


def test_stylegan_weights_scaled_on_their_way_are_quantized_at_the_initializer(tmp_path_factory):
    from ganq.quantize import QuantizeOptions, quantize_model

    for name in ("stylegan2", "stylegan2-unfused"):
        model = load_model(built(tmp_path_factory, name))
        _, rep = quantize_model(model, QuantizeOptions(bits=4, granularity="channel", format="int"))
        convs = [r for r in rep["tensors"] if r["op"] == "Conv"]
        assert len(convs) == 4 and rep["weight_share"] == 1.0  # 3 modulated convs + toRGB; the mapping's Gemms too
        for r in convs:  # per output channel: [1, O, I, k, k] along O (fused), [O, I, k, k] along 0 (unfused)
            assert r["shape"][r["axis"]] in (8, 3)


def test_commands_on_each_family(tmp_path_factory, tmp_path):
    """bench, export-ort, app and evaluate (fidelity to fp32; FID with resize on 64x64 RGB; intra-class FID)."""
    from ganq.app import build_app
    from ganq.app.mobile import export_ort
    from ganq.evaluate import EvalOptions, evaluate
    from ganq.quantize import QuantizeOptions, quantize_file
    from ganq.runtime.bench import BenchJob, run_job

    for name in FAMILIES:
        src = built(tmp_path_factory, name)
        q = tmp_path / f"{name}.q.onnx"
        quantize_file(src, q, QuantizeOptions(bits=4, granularity="channel", format="int"))
        r = run_job(BenchJob(str(q), batch=3, threads=1, warmup=1, repeat=2))
        assert r["images_per_s"] > 0
        o = export_ort(q, tmp_path / f"{name}.ort")
        assert o["max_abs_diff"] <= 1e-5
        a = build_app(q, tmp_path / f"app-{name}")
        assert "model.onnx" in a["files"]
        if read_spec(load_model(src)).family == "image-to-image":
            e = evaluate(q, opts=EvalOptions(n=20, k=3), reference=src)
            assert e["dataset"] is None and 20 < e["psnr_fp32"] <= 100 and 0.5 < e["ssim_fp32"] <= 1
    # FID of a 64x64 RGB generator through the 1x28x28 Fashion-MNIST classifier (the embedded test split)
    dc = tmp_path / "dc.onnx"
    quantize_file(built(tmp_path_factory, "dcgan64"), dc, QuantizeOptions(bits=4, granularity="channel"))
    e = evaluate(dc, "fashion-mnist", opts=EvalOptions(n=40, k=3), reference=built(tmp_path_factory, "dcgan64"))
    assert e["resize"] == {"from": "3x64x64", "to": "1x28x28", "filter": "PIL bicubic, antialiased"}
    assert np.isfinite(e["fid"]) and e["psnr_fp32"] > 20
    c = evaluate(built(tmp_path_factory, "cgan"), "fashion-mnist", opts=EvalOptions(n=200, k=3), per_class=True)
    assert len(c["fid_per_class"]) == 10 and abs(c["intra_fid"] - np.mean(c["fid_per_class"])) < 1e-9


def test_per_class_labels_reach_the_graph(tmp_path_factory):
    from ganq.runtime import Generator

    g = Generator(built(tmp_path_factory, "cgan"))
    a = g.generate(4, seed=1, labels=np.full(4, 2))
    b = g.generate(4, seed=1, labels=np.full(4, 7))
    assert not np.array_equal(a, b)
    feed = g.inputs(4, 1, labels=np.full(4, 2))
    assert feed["label"].dtype == np.int64 and (feed["label"] == 2).all()


def _ganq(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ganq", *map(str, args)], capture_output=True, text=True, timeout=300,
                          **kw)


def test_cli_tells_what_to_give_in_one_line(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = export("pix2pix", tmp_path / "p.onnx")
    r = _ganq("spec", p, "--write")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "image input image_in needs the images it is fed" in r.stderr and "source=" in r.stderr
    r = _ganq("spec", p, "--input", "image_in=picture")
    assert r.returncode == 1 and "kind must be one of" in r.stderr
    r = _ganq("spec", p, "--input", "image_in=image,source=random", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["inputs"][0]["kind"] == "image"
    r = _ganq("evaluate", p, "--n", "20")
    assert r.returncode == 1 and "--reference" in r.stderr and "Traceback" not in r.stderr


def test_label_input_without_an_embedding_table_needs_its_classes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Cast", ["label"], ["lf"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["lf", "ax"], ["l2"]),
         helper.make_node("Concat", ["z", "l2"], ["h"], axis=1),
         helper.make_node("MatMul", ["h", "w"], ["f"]),
         helper.make_node("Reshape", ["f", "shape"], ["image"])], "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
         onnx.numpy_helper.from_array(np.array([1], np.int64), "ax"),
         onnx.numpy_helper.from_array(np.array([-1, 1, 2, 2], np.int64), "shape")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "c.onnx")
    with pytest.raises(GanqError, match="give its classes with --input label=label,classes=N"):
        describe(tmp_path / "c.onnx", tmp_path / "c.onnx")
    spec = describe(tmp_path / "c.onnx", tmp_path / "c.onnx", inputs={"label": {"kind": "label", "classes": 5}})
    assert spec.inputs_of("label")[0].classes == 5 and spec.family == "conditional"


def test_external_data_is_kept_by_spec_and_carried_into_every_file_ganq_writes(tmp_path_factory, tmp_path):
    import onnx

    from ganq.app import build_app
    from ganq.app.mobile import export_ort
    from ganq.quantize import QuantizeOptions, quantize_file

    src = built(tmp_path_factory, "cgan", "ext")
    data = src.with_name(src.name + ".data")
    raw = onnx.load(str(src), load_external_data=False)
    assert data.stat().st_size > 100_000 and any(  # `ganq spec --write` left the weights where they were
        i.data_location == onnx.TensorProto.EXTERNAL for i in raw.graph.initializer)
    q = tmp_path / "q.onnx"
    quantize_file(src, q, QuantizeOptions(bits=4, format="int", granularity="channel"))
    page = build_app(src, tmp_path / "app")
    ort_file = export_ort(src, tmp_path / "g.ort")
    for f in (q, tmp_path / "app" / "model.onnx"):
        m = onnx.load(str(f), load_external_data=False)
        assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in m.graph.initializer), f
    assert page["bytes"] > data.stat().st_size and ort_file["bytes_ort"] > data.stat().st_size
    feed, spec = _feed(src)
    assert np.abs(run(load_model(tmp_path / "app" / "model.onnx"), feed, [spec.output_name])[0]
                  - run(load_model(src), feed, [spec.output_name])[0]).max() == 0


@pytest.mark.realdata
def test_fid_of_a_64x64_rgb_generator_against_cifar10_resized(tmp_path_factory):
    from conftest import need_real

    from ganq.evaluate import EvalOptions, evaluate

    root = need_real("cifar10-jpeg")
    e = evaluate(built(tmp_path_factory, "dcgan64"), "cifar10-jpeg", opts=EvalOptions(n=200, k=3), data_root=root)
    assert e["resize"] == {"from": "3x64x64", "to": "3x32x32", "filter": "PIL bicubic, antialiased"}
    assert np.isfinite(e["fid"]) and e["fid"] > 0


def test_two_latent_like_inputs_ask_which_is_the_latent(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Concat", ["z", "c"], ["h"], axis=1),
                           helper.make_node("Reshape", ["h", "shape"], ["image"])], "g",
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2]),
                           helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 2, 2])],
                          [onnx.numpy_helper.from_array(np.array([-1, 1, 2, 2], np.int64), "shape")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "t.onnx")
    for kw in ({}, {"input_name": "z"}):
        with pytest.raises(GanqError, match="several latent-like inputs .*--input NAME=KIND"):
            describe(tmp_path / "t.onnx", tmp_path / "t.onnx", **kw)
    spec = describe(tmp_path / "t.onnx", tmp_path / "t.onnx", input_name="z",
                    inputs={"c": {"kind": "noise", "shape": [2]}})
    assert [i.kind for i in spec.all_inputs] == ["latent", "noise"]
