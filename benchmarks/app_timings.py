"""`ganq app` in headless chromium (onnxruntime-web 1.30, wasm, cross-origin isolated): page load, first image and
time per image at batch 1 and 16, for the fp32, 4-bit int, 3-bit packed and 4-bit nbits (MatMulNBits, group:32)
Fashion-MNIST generator, the k-bit ones decoded once (the default: onnxruntime-web folds the int file's
DequantizeLinear; a packed file ships its page form, whose bit planes the page unpacks once, ganq.app.page) and per
call; the page loads interleaved (every case once, then again) so that drift of the machine spreads over all of them;
saves a screenshot of the 3-bit page. Needs chromium and web/node_modules (cd web && npm ci).

    .venv/bin/python benchmarks/app_timings.py --screenshot docs/app.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main():
    from ganq.app import build_app, serve
    from ganq.quantize import QuantizeOptions, quantize_file
    from ganq.onnx_io import resolve_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--out", default="benchmarks/results/app_timings.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ganq-app-bench."))
    src = resolve_model("zoo:fashion-mnist-cnn3")
    models = {"fp32": src, "int 4-bit": work / "int4.onnx", "packed 3-bit": work / "packed3.onnx",
              "nbits 4-bit group:32": work / "nbits4.onnx"}
    quantize_file(src, models["int 4-bit"], QuantizeOptions(bits=4, format="int"))
    quantize_file(src, models["packed 3-bit"], QuantizeOptions(bits=3, format="packed"))
    quantize_file(src, models["nbits 4-bit group:32"], QuantizeOptions(bits=4, format="nbits", granularity="group:32"))
    z = np.random.default_rng(0).standard_normal((1, 100)).astype(np.float32)
    (work / "z.json").write_text(json.dumps({"n": 1, "z": z.ravel().tolist()}))
    rows = []
    cases = [(f"{name}, decode {d}" if name != "fp32" else name, model, d) for name, model in models.items()
             for d in (("once",) if name == "fp32" else ("once", "per-call"))]
    served = []
    for name, model, decode in cases:
        folder = work / name.replace(" ", "-").replace(",", "")
        build_app(model, folder, ort_web=REPO / "web" / "node_modules" / "onnxruntime-web", decode=decode)
        httpd, url = serve(folder)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        served.append((name, model, folder, httpd, url, []))
    for i in range(args.repeat):
        for name, model, folder, httpd, url, runs in served:
            shot = args.screenshot if (name == "packed 3-bit, decode once" and i == 0 and args.screenshot) else None
            cmd = ["node", str(REPO / "web" / "app-check.mjs"), url, str(work / "z.json"), str(work / "o.json")]
            subprocess.run(cmd + ([str(Path(shot).resolve())] if shot else []), check=True, capture_output=True)
            o = json.loads((work / "o.json").read_text())
            runs.append({**o["timings"], "page_to_ready_ms": o["page_to_ready_ms"]})
        print(f"round {i + 1} of {args.repeat}: done", flush=True)
    for name, model, folder, httpd, url, runs in served:
        httpd.shutdown()
        httpd.server_close()
        med = {k: float(np.median([r[k] for r in runs])) for k in ("load_ms", "first_image_ms", "per_image_ms_batch1",
                                                                  "per_image_ms_batch16", "page_to_ready_ms")}
        shipped = json.loads((folder / "app.json").read_text())["bytes"]
        rows.append({"model": name, "bytes": model.stat().st_size, "bytes_shipped": shipped,
                     "threads": runs[0]["threads"], **med, "runs": runs})
    print("\n| model | file (shipped) | runtime + model load | page ready (incl. timing runs) | first image | per image, batch 1 "
          "| of fp32 | per image, batch 16 | of fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = rows[0]
    for r in rows:
        r["of_fp32_batch1"] = r["per_image_ms_batch1"] / base["per_image_ms_batch1"]
        r["of_fp32_batch16"] = r["per_image_ms_batch16"] / base["per_image_ms_batch16"]
        print(f"| {r['model']} | {r['bytes'] / 1024:,.0f} KiB ({r['bytes_shipped'] / 1024:,.0f}) | {r['load_ms']:.0f} ms | {r['page_to_ready_ms']:.0f} ms "
              f"| {r['first_image_ms']:.1f} ms | {r['per_image_ms_batch1']:.2f} ms | {r['of_fp32_batch1']:.2f} "
              f"| {r['per_image_ms_batch16']:.2f} ms | {r['of_fp32_batch16']:.2f} |")
    print(f"(median of {args.repeat} page loads each, {rows[0]['threads']} wasm threads, headless chromium)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
