"""The README's speed table: fp32 against fake, int and packed at k = 8, 4, 3 in onnxruntime (both ways of
handling DequantizeLinear), onnxruntime's own quantize_static (QDQ, int8 weights and activations) as the anchor,
and onnxruntime against PyTorch, side by side in one run. Prints a table, writes JSON.

    .venv/bin/python benchmarks/bench_formats.py zoo:fashion-mnist-cnn3 --torch-run runs/zoo/fashion-mnist-cnn3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ganq.quantize import QuantizeOptions, quantize_file
from ganq.onnx_io import resolve_model
from ganq.runtime import Generator
from ganq.runtime.bench import BenchJob, machine, run_isolated


def ort_qdq_int8(src: Path, out: Path) -> Path:
    """onnxruntime's static QDQ quantization (int8 weights per channel, int8 activations calibrated on 256
    latents), with ganq's spec carried over so that ganq's runtime can run it."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    g = Generator(src)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{g.spec.input_name: g.latents(256, 1)[i:i + 32]} for i in range(0, 256, 32)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    m = onnx.load(str(out))
    from ganq.onnx_io import copy_metadata, load_model
    copy_metadata(load_model(src, external_data=False), m)
    onnx.save(m, str(out))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="zoo:fashion-mnist-cnn3")
    ap.add_argument("--torch-run", help="run folder or checkpoint of the same generator, for the PyTorch rows")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--out", default="benchmarks/results/formats.json")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    src = resolve_model(args.model)
    rows = []
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("fp32", 32, src)]
        for bits in (8, 4, 3):
            for fmt in ("fake", "int", "packed"):
                path = Path(tmp) / f"{fmt}{bits}.onnx"
                quantize_file(src, path, QuantizeOptions(bits=bits, format=fmt))
                variants.append((fmt, bits, path))
        variants.append(("ort-qdq", 8, ort_qdq_int8(src, Path(tmp) / "ort-qdq-int8.onnx")))
        for fmt, bits, path in variants:
            for qdq in (("keep", "fold") if fmt == "int" else ("keep",)):
                for t in threads:
                    for b in batches:
                        r = run_isolated(BenchJob(str(path), b, t, 10, args.repeat, "cpu", qdq))
                        rows.append({"engine": "onnxruntime", "format": fmt, "bits": bits, **r})
        if args.torch_run:
            for t in threads:
                for b in batches:
                    r = run_isolated(BenchJob(args.torch_run, b, t, 10, args.repeat, "cpu", "keep", "torch"))
                    rows.append({"engine": "torch", "format": "fp32", "bits": 32, **r})
    after = machine()
    base = {(r["batch"], r["threads"]): r["images_per_s"] for r in rows
            if r["engine"] == "onnxruntime" and r["format"] == "fp32"}
    print(f"{'engine':12} {'format':7} {'bits':>4} {'qdq':>4} {'batch':>5} {'thr':>3} {'p50 ms':>9} {'p95 ms':>9} "
          f"{'img/s':>9} {'x fp32':>7} {'MB':>5} {'file KiB':>9}")
    for r in rows:
        rel = r["images_per_s"] / base[(r["batch"], r["threads"])]
        r["vs_fp32"] = rel
        print(f"{r['engine']:12} {r['format']:7} {r['bits']:>4} {r['qdq'] if r['engine'] != 'torch' else '-':>4} "
              f"{r['batch']:>5} {r['threads']:>3} {r['p50_ms']:>9.3f} {r['p95_ms']:>9.3f} {r['images_per_s']:>9.0f} "
              f"{rel:>7.2f} {r['peak_rss_mb']:>5.0f} {r['file_bytes'] / 1024:>9.1f}")
    print(f"load average before {before['load1']:.2f}, after {after['load1']:.2f} on {before['cpus']} cores")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(src), "machine_before": before, "machine_after": after, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
