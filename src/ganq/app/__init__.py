"""`ganq app`: a static web page that generates with a ganq .onnx file in the browser (onnxruntime-web, WebAssembly).

    build_app("g3.onnx", "app/", ort_web="web/node_modules/onnxruntime-web")

The folder holds index.html, app.js, model.onnx and app.json (what the page reads: the spec, the file's size and
quantization, where onnxruntime-web comes from); for a packed file decoded once, model.onnx is its page form and
planes.bin its bit planes, which the page unpacks once (ganq.app.page). Serve it with any static server; threads need cross-origin
isolation (COOP: same-origin, COEP: require-corp), without them onnxruntime-web runs on one thread.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ganq.errors import GanqError

ORT_WEB_VERSION = "1.30.0"  # the version the page loads from the CDN, and web/package.json pins for the tests
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CDN = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_WEB_VERSION}/dist/"
MARKER = "app.json"
STATIC = Path(__file__).resolve().parent / "static"


def is_app(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()).get("ganq") == "app"
    except (OSError, ValueError, AttributeError):
        return False


def _ort_source(ort_web: str | Path | None) -> tuple[Path | None, str]:
    """(the folder holding the three onnxruntime-web files: the npm package, its dist/, or a folder of them; the
    version they are, from the package's package.json, or "unknown"). Empty files are refused; a version other
    than the one the page is tested with is said once."""
    if ort_web is None:
        return None, ORT_WEB_VERSION
    base = Path(ort_web)
    for folder in (base, base / "dist", base / "node_modules" / "onnxruntime-web" / "dist"):
        if all((folder / f).is_file() for f in ORT_FILES):
            empty = [f for f in ORT_FILES if (folder / f).stat().st_size == 0]
            if empty:
                raise GanqError(f"--ort-web {base}: {', '.join(empty)} is empty; reinstall onnxruntime-web")
            version = "unknown"
            for pj in (folder / "package.json", folder.parent / "package.json"):
                try:
                    meta = json.loads(pj.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(meta, dict) and meta.get("name") == "onnxruntime-web":
                    version = str(meta.get("version", "unknown"))
                    break
            if version != ORT_WEB_VERSION:
                from ganq.errors import warn
                warn(f"--ort-web {base} is onnxruntime-web {version}; the page is tested with {ORT_WEB_VERSION}")
            return folder, version
    raise GanqError(f"--ort-web {base}: no {', '.join(ORT_FILES)} there (give the onnxruntime-web npm package folder "
                    "or its dist/)")


SAMPLES = 8  # sample input images an image-to-image page ships


def class_names(spec) -> list[str] | None:
    """The names of a conditional generator's classes, from its data set (None when ganq does not know them)."""
    if not spec.inputs_of("label") or not spec.dataset:
        return None
    from ganq import data

    try:
        names = list(data.get_entry(spec.dataset).classes or [])
    except GanqError:
        return None
    return names if len(names) == spec.inputs_of("label")[0].classes else None


def sample_strip(spec):
    """A PIL image of SAMPLES input images side by side (at the image input's size) from its source's test split,
    or None (no image input, a random source, or the data not here)."""
    inputs = spec.inputs_of("image")
    if not inputs or inputs[0].source == "random":
        return None
    from PIL import Image

    from ganq.data.resize import resize_images
    from ganq.onnx_io import source_images

    inp = inputs[0]
    try:
        pool = source_images(inp.source, "test")
    except GanqError:
        return None
    c, h, w = inp.image_hw
    u8 = resize_images(pool[:SAMPLES], h, w, 3)
    return Image.fromarray(np.concatenate(list(u8), axis=1), "RGB")


def build_app(model: str | Path, out: str | Path, ort_web: str | Path | None = None, title: str | None = None,
              decode: str = "once") -> dict:
    """Write the app folder `out` for generator `model`; returns what app.json holds. decode: "once" (the page
    folds the weights' decoders when its session is made) or "per-call" (decoded on every run: less memory); a file
    with quantized activations gets "integer" (onnxruntime-web's QDQ fusions on)."""
    import onnx

    from ganq.app.page import PLANES, page_form
    from ganq.onnx_io import META_QUANT, batch_mode, check_spec, default_decode, load_model, read_metadata, read_spec

    model, out = Path(model), Path(out)
    if decode not in ("once", "per-call"):
        raise GanqError(f"--decode must be once or per-call, got {decode!r}")
    proto = load_model(model)
    decode = default_decode(proto, decode)  # a file with quantized activations: the integer kernels, as in Python
    spec = read_spec(proto, str(model))
    check_spec(proto, spec, str(model))
    # weights in external data: load_model read them into proto, and the page's one file carries them inline
    external = any(i.data_location == onnx.TensorProto.EXTERNAL
                   for i in load_model(model, external_data=False).graph.initializer)
    run_model, fixed = batch_mode(proto, spec, str(model))
    if out.exists() and not out.is_dir():
        raise GanqError(f"{out}: exists and is not a folder")
    from ganq._io import check_writable_place
    check_writable_place(out)
    if out.is_dir() and any(out.iterdir()) and not is_app(out):
        raise GanqError(f"{out}: folder exists and is not a ganq app folder; choose another --out")
    src, ort_version = _ort_source(ort_web)
    quant = json.loads(read_metadata(proto).get(META_QUANT, "null"))
    info = {"ganq": "app", "model": "model.onnx", "source": model.name, "bytes": model.stat().st_size,
            "spec": spec.to_dict(),
            "quant": None if quant is None else {k: quant.get(k) for k in ("bits", "method", "granularity", "format",
                                                                           "avg_bits", "mixed")},
            "title": title or f"{spec.arch or 'generator'} on {spec.dataset or 'its data'}",
            "fixed_batch": fixed, "class_names": class_names(spec), "decode": decode,
            "ort": {"version": ort_version, "local": src is not None,
                    "module": "./ort/ort.wasm.min.mjs" if src else CDN + "ort.wasm.min.mjs",
                    "wasmPaths": "./ort/" if src else CDN}}
    out.parent.mkdir(parents=True, exist_ok=True)
    from ganq._io import clean_stale
    clean_stale(out)  # the temporary folder of an interrupted earlier run (its process gone)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        form = page_form(run_model) if decode == "once" else None
        if form is not None:  # a packed file: the page unpacks its bit planes once (ganq.app.page)
            (tmp / "model.onnx").write_bytes(form.model.SerializeToString())
            (tmp / PLANES).write_bytes(form.planes)
            info.update({"unpack": form.manifest, "notes": form.notes})
        elif run_model is proto and not external:
            shutil.copyfile(model, tmp / "model.onnx")
        else:  # external data inlined, or the batch made symbolic
            (tmp / "model.onnx").write_bytes(run_model.SerializeToString())
        strip = sample_strip(spec)
        if strip is not None:
            strip.save(tmp / "inputs.png")
            info.update({"samples": "inputs.png", "samples_n": strip.width // spec.inputs_of("image")[0].image_hw[2]})
        info["bytes"] = (tmp / "model.onnx").stat().st_size + (len(form.planes) if form is not None else 0)
        for f in ("index.html", "app.js"):
            shutil.copyfile(STATIC / f, tmp / f)
        if src is not None:
            (tmp / "ort").mkdir()
            for f in ORT_FILES:
                shutil.copyfile(src / f, tmp / "ort" / f)
        (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
        tmp.chmod(0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GanqError(f"{out}: cannot write the app folder ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**info, "out": str(out), "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())}


__all__ = ["build_app", "is_app", "ORT_FILES", "ORT_WEB_VERSION"]


def serve(folder: str | Path, port: int = 0, isolate: bool = True):
    """A static server for `folder` on 127.0.0.1 (port 0: any free one), with the cross-origin isolation headers
    that WebAssembly threads need; returns the server (serve_forever / shutdown) and its URL."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                          ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

        def end_headers(self):
            if isolate:
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_message(self, *args):
            pass

    if not 0 <= port <= 65535:
        raise GanqError(f"--serve port must be in 0..65535, got {port}")
    try:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                functools.partial(Handler, directory=str(folder)))
    except OSError as e:
        raise GanqError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e})") from None
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def check_port(port) -> None:
    if port is not None and not 0 <= port <= 65535:
        raise GanqError(f"--serve must be a port in 0..65535, got {port}")
