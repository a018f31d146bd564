"""`ganq app`: the page runs the fp32, 4-bit int and 3-bit packed Fashion-MNIST generator in a real browser (Debian's
chromium, headless, driven by puppeteer-core), and its pixels equal Python onnxruntime's."""

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from ganq.app import ORT_FILES, build_app, is_app, serve
from ganq.cli import app as cli
from ganq.errors import GanqError
from ganq.quantize import QuantizeOptions, quantize_file
from ganq.runtime import resolve_model, session_options

REPO = Path(__file__).resolve().parents[1]
ORT_WEB = REPO / "web" / "node_modules" / "onnxruntime-web"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_missing() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (apt-get install chromium)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (REPO / "web" / "node_modules" / "puppeteer-core").is_dir() or not ORT_WEB.is_dir():
        return "web/node_modules is missing (cd web && npm ci)"
    return None


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("appmodels")
    src = resolve_model("zoo:fashion-mnist-cnn3")
    quantize_file(src, d / "int4.onnx", QuantizeOptions(bits=4, format="int", granularity="channel"))
    quantize_file(src, d / "packed3.onnx", QuantizeOptions(bits=3, format="packed"))
    quantize_file(src, d / "w8a8.onnx", QuantizeOptions(bits=8, method="symmetric", format="int", granularity="channel",
                                                        activations=8, calibration=256, keep_float=("last",)))
    # packed, decoded once by the page (its page form), and a codebook file that keeps the packed decoder
    quantize_file(src, d / "packed2-bn.onnx", QuantizeOptions(bits=2, format="packed", granularity="channel",
                                                              bn_into_decoder=True))
    quantize_file(src, d / "kmeans3.onnx", QuantizeOptions(bits=3, method="kmeans", format="packed",
                                                           granularity="channel"))
    return {"fp32": src, "int4": d / "int4.onnx", "packed3": d / "packed3.onnx", "w8a8": d / "w8a8.onnx",
            "packed2-bn": d / "packed2-bn.onnx", "kmeans3": d / "kmeans3.onnx"}


def test_app_folder_contents(models, tmp_path):
    r = build_app(models["packed3"], tmp_path / "app")
    assert sorted(r["files"]) == ["app.js", "app.json", "index.html", "model.onnx", "planes.bin"]
    info = json.loads((tmp_path / "app" / "app.json").read_text())
    assert info["ort"]["module"] == "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/ort.wasm.min.mjs"
    assert info["quant"]["bits"] == 3 and info["quant"]["format"] == "packed" and info["spec"]["latent_dim"] == 100
    # the page form: the bit planes beside a graph without them, no larger than the file in all
    shipped = sum((tmp_path / "app" / f).stat().st_size for f in ("model.onnx", "planes.bin"))
    assert info["bytes"] == shipped <= models["packed3"].stat().st_size and info["unpack"]["tensors"]
    per_call = build_app(models["packed3"], tmp_path / "per-call", decode="per-call")  # the file as it is
    assert "planes.bin" not in per_call["files"]
    assert (tmp_path / "per-call" / "model.onnx").read_bytes() == models["packed3"].read_bytes()
    if ORT_WEB.is_dir():
        r = build_app(models["packed3"], tmp_path / "app", ort_web=ORT_WEB)  # an app folder may be rewritten
        assert {f"ort/{f}" for f in ORT_FILES} <= set(r["files"]) and r["ort"]["module"] == "./ort/ort.wasm.min.mjs"
    assert is_app(tmp_path / "app") and not list(tmp_path.glob(".app.*"))


def test_app_bad_input(models, tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    import onnx
    onnx.save(helper.make_model(g), str(tmp_path / "relu.onnx"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "empty-ort").mkdir()
    for args, msg in (([str(tmp_path / "relu.onnx"), "--out", str(tmp_path / "a")], "not a ganq generator"),
                      ([str(models["fp32"]), "--out", str(tmp_path / "mine")], "not a ganq app folder"),
                      ([str(models["fp32"]), "--out", str(tmp_path / "b"), "--ort-web", str(tmp_path / "empty-ort")],
                       "ort.wasm.min.mjs"),
                      ([str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "c")], "no such file")):
        r = CliRunner().invoke(cli, ["app", *args])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-ort", "mine", "relu.onnx"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _in_browser(folder: Path, payload: dict, tmp_path: Path, shot: Path | None = None) -> dict:
    """Serve the page, run app-check.mjs on payload ({"n", "z"}: the first latent, or {"n", "feeds"}: every
    input) and return what it writes."""
    httpd, url = serve(folder)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        (tmp_path / "z.json").write_text(json.dumps(payload))
        cmd = ["node", str(REPO / "web" / "app-check.mjs"), url, str(tmp_path / "z.json"), str(tmp_path / "o.json")]
        r = subprocess.run(cmd + ([str(shot)] if shot else []), capture_output=True, text=True, timeout=180,
                           env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads((tmp_path / "o.json").read_text())
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("opts,unpacked", [
    (dict(bits=3, format="packed"), 4),                                          # per tensor
    (dict(bits=2, format="packed", granularity="channel", bn_into_decoder=True), 4),  # BatchNorm in the decoders
    (dict(bits=4, method="symmetric", format="packed", granularity="channel"), 4),    # no offset
    (dict(bits=3, method="kmeans", format="packed", granularity="channel"), 0),       # codebooks stay packed
    (dict(bits=3, format="packed", granularity="group:32"), 0),                       # so do groups
    (dict(bits=3, format="packed", granularity="channel", float_bits=16), 0)])        # and float16 decoders
def test_the_page_form_of_a_packed_file_computes_the_file(opts, unpacked, tmp_path):
    """ganq.app.page: DequantizeLinear on uint8 codes that the page unpacks (numpy's mirror of its loop here) from
    the file's own bit planes: onnxruntime gives the packed file's outputs (1e-5), the planes are the file's bytes,
    and what cannot take that form keeps its packed decoder with a note."""
    from ganq.app.page import page_form, unpack
    from ganq.onnx_io import load_model, session

    src = tmp_path / "q.onnx"
    quantize_file(resolve_model("zoo:fashion-mnist-cnn3"), src, QuantizeOptions(**opts))
    m = load_model(src)
    form = page_form(m)
    if not unpacked:
        assert form is None
        return
    assert len(form.manifest["tensors"]) == unpacked and not form.notes
    planes = {i.name: i.raw_data for i in m.graph.initializer if i.name.endswith("_planes")}
    assert form.planes == b"".join(planes[t["tensor"] + "_planes"] for t in form.manifest["tensors"])
    assert not [n for n in form.model.graph.node if n.op_type in ("BitShift", "BitwiseAnd", "ReduceSum")]
    onnx.save(form.model, str(tmp_path / "page.onnx"))
    (tmp_path / "codes.bin").write_bytes(unpack(form.planes, form.manifest))
    z = np.random.default_rng(3).standard_normal((6, 100)).astype(np.float32)
    # ganq's session recipe, as the page's (a plain session would fuse the 4-bit symmetric DequantizeLinear ->
    # MatMul into MatMulNBits with 8-bit activations: 0.2 off)
    a = session(src, decode="once").run(None, {"z": z})[0]
    b = session(tmp_path / "page.onnx", decode="once").run(None, {"z": z})[0]
    assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("kind", ["fp32", "int4", "packed3", "packed2-bn", "kmeans3", "w8a8"])
def test_page_matches_python_onnxruntime(models, kind, tmp_path):
    why = _browser_missing()
    if why:
        pytest.skip(why)
    folder = tmp_path / "app"
    build_app(models[kind], folder, ort_web=ORT_WEB)
    z = np.random.default_rng(7).standard_normal((5, 100)).astype(np.float32)
    got = _in_browser(folder, {"n": len(z), "z": z.ravel().tolist()}, tmp_path,
                      tmp_path / "shot.png" if kind == "packed3" else None)
    want = ort.InferenceSession(str(models[kind]), session_options(), providers=["CPUExecutionProvider"]).run(
        None, {"z": z})[0]
    image = np.asarray(got["image"], np.float32).reshape(want.shape)
    if kind == "w8a8":  # integer kernels on both sides (the page keeps the QDQ fusions on for this file)
        assert json.loads((folder / "app.json").read_text())["decode"] == "integer"
    assert np.abs(image - want).max() <= 1e-5, np.abs(image - want).max()
    t = got["timings"]
    assert t["cross_origin_isolated"] and t["threads"] >= 1 and t["per_image_ms_batch16"] > 0
    assert not [m for m in got["logs"] if "error" in m.lower()], got["logs"]
    if kind == "packed3":
        assert (tmp_path / "shot.png").stat().st_size > 10_000
    assert ("unpack" in json.loads((folder / "app.json").read_text())) == kind.startswith("packed")


@pytest.mark.parametrize("family", ["cgan", "esrgan-ps", "stylegan2"])
def test_page_runs_conditional_image_to_image_and_fixed_batch_generators(family, tmp_path):
    """A class picker for the conditional generator, an image upload for the super-resolution one, a fixed batch of
    1 run in batches (StyleGAN2's Reshapes bake it in); the page's pixels equal onnxruntime's on the same inputs."""
    why = _browser_missing()
    if why:
        pytest.skip(why)
    pytest.importorskip("torch", reason="the families are built in torch")
    import warnings

    from fixtures.families import export, spec_args

    from ganq.onnx_io import describe, fixed_batch, load_model, probe_inputs, read_spec, run
    from ganq.spec import parse_input_option

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = export(family, tmp_path / "g.onnx", fixed_batch=1 if family == "stylegan2" else None)
    describe(src, src, dataset="fashion-mnist" if family == "cgan" else "",
             inputs=dict(parse_input_option(a) for a in spec_args(family)[1::2]))
    q = tmp_path / "q.onnx"
    quantize_file(src, q, QuantizeOptions(bits=4, format="int", granularity="channel"))
    build_app(q, tmp_path / "app", ort_web=ORT_WEB)
    m = load_model(q)
    spec = read_spec(m)
    fb = fixed_batch(m, spec)
    feed = probe_inputs(spec, 3)
    want = np.concatenate([run(m, {k: v[i:i + 1] for k, v in feed.items()}, [spec.output_name])[0]
                           for i in range(3)]) if fb else run(m, feed, [spec.output_name])[0]
    enc = {k: {"type": str(v.dtype), "dims": list(v.shape), "data": v.ravel().tolist()} for k, v in feed.items()}
    got = _in_browser(tmp_path / "app", {"n": 3, "feeds": enc}, tmp_path)
    image = np.asarray(got["image"], np.float32).reshape(want.shape)
    assert np.abs(image - want).max() <= 1e-5
    c = got["controls"]
    if family == "cgan":
        assert c["classes"][0] == "random" and c["classes"][1] == "0: T-shirt/top" and len(c["classes"]) == 11
    assert c["upload"] == (family == "esrgan-ps") and c["interpolation"] == (family != "esrgan-ps")
    assert not [x for x in got["logs"] if "error" in x.lower()], got["logs"]


@pytest.mark.parametrize("name, first_class", [("fashion-mnist-sr2x", None), ("fashion-mnist-cgan", "0: T-shirt/top"),
                                               ("cifar10-jpeg-cgan", "0: airplane")])
def test_page_runs_the_zoo_families(name, first_class, tmp_path):
    """The zoo's super-resolution generator gets the image upload (and its data set's samples as inputs), the
    conditional one the class picker; 4-bit int files; the page's pixels equal onnxruntime's on the same inputs."""
    why = _browser_missing()
    if why:
        pytest.skip(why)
    from ganq.onnx_io import load_model, read_spec, run, sample_inputs
    from ganq.zoo import names

    if name not in names():
        pytest.skip(f"zoo:{name} is not shipped in this checkout")
    q = tmp_path / "q.onnx"
    quantize_file(resolve_model(f"zoo:{name}"), q, QuantizeOptions(bits=4, format="int", granularity="channel"))
    build_app(q, tmp_path / "app", ort_web=ORT_WEB)
    m = load_model(q)
    spec = read_spec(m)
    feed = sample_inputs(spec, 3, seed=0)  # the sr2x inputs: Fashion-MNIST test images, downsized
    want = run(m, feed, [spec.output_name])[0]
    enc = {k: {"type": str(v.dtype), "dims": list(v.shape), "data": v.ravel().tolist()} for k, v in feed.items()}
    got = _in_browser(tmp_path / "app", {"n": 3, "feeds": enc}, tmp_path)
    assert np.abs(np.asarray(got["image"], np.float32).reshape(want.shape) - want).max() <= 1e-5
    c = got["controls"]
    if spec.inputs_of("label"):
        assert c["classes"][1] == first_class and len(c["classes"]) == 11 and not c["upload"]
    else:
        assert c["upload"] and not c["interpolation"]
    assert not [x for x in got["logs"] if "error" in x.lower()], got["logs"]


def test_ort_web_copies_are_checked_and_named_by_their_own_version(models, tmp_path, capfd):
    """Empty runtime files are refused; an older package is shipped under its own version, with one warning."""
    pkg = tmp_path / "onnxruntime-web"
    (pkg / "dist").mkdir(parents=True)
    for f in ORT_FILES:
        (pkg / "dist" / f).write_bytes(b"")
    with pytest.raises(GanqError, match="is empty"):
        build_app(models["fp32"], tmp_path / "a", ort_web=pkg)
    assert not (tmp_path / "a").exists()
    for f in ORT_FILES:
        (pkg / "dist" / f).write_bytes(b"// runtime")
    (pkg / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": "1.17.0"}))
    info = build_app(models["fp32"], tmp_path / "b", ort_web=pkg)
    assert info["ort"]["version"] == "1.17.0" and info["ort"]["local"]
    assert json.loads((tmp_path / "b" / "app.json").read_text())["ort"]["version"] == "1.17.0"
    assert "onnxruntime-web 1.17.0; the page is tested with" in capfd.readouterr().err
