"""Deployment: `ganq app`, `export-ort`, `bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ganq.cli.base import app, emit, err_console, handles_errors, need_torch, out_console, providers_help, size, table

from ganq.entry import Interrupted


@app.command("app")
@handles_errors
def app_cmd(model: Annotated[str, typer.Argument(help="A ganq generator .onnx (fp32 or quantized), or zoo:NAME")],
            out: Annotated[Path, typer.Option(help="App folder to write (index.html, app.js, model.onnx, app.json)")],
            ort_web: Annotated[Optional[Path], typer.Option(
                help="onnxruntime-web package folder (npm) to copy the runtime from; default: load it from the CDN")
            ] = None,
            title: Annotated[Optional[str], typer.Option(help="Page title")] = None,
            decode: Annotated[str, typer.Option(help="once (weights decoded when the page's session is made: as "
                                                     "fast as fp32) or per-call (less memory)")] = "once",
            serve: Annotated[Optional[int], typer.Option(
                help="Then serve the folder on 127.0.0.1:PORT (0: any free port) with cross-origin isolation, "
                     "until Ctrl-C")] = None,
            as_json: Annotated[bool, typer.Option("--json")] = False):
    """A static web page that generates with the model in the browser (onnxruntime-web, WebAssembly)."""
    from ganq.app import build_app, check_port, serve as serve_folder
    from ganq.onnx_io import resolve_model

    check_port(serve)
    r = build_app(resolve_model(model), out, ort_web, title, decode)
    emit(r, as_json, lambda r: out_console.print(
        f"wrote {r['out']}/: {', '.join(r['files'])}; onnxruntime-web {r['ort']['version']} "
        f"{'copied' if r['ort']['local'] else 'from ' + r['ort']['module'].rsplit('/', 1)[0]}", highlight=False))
    if serve is not None:
        httpd, url = serve_folder(out, serve)
        err_console.print(f"serving {out} at {url} (cross-origin isolated); Ctrl-C stops", highlight=False)
        try:
            httpd.serve_forever()
        except (KeyboardInterrupt, Interrupted):  # Ctrl-C stops serving
            pass
        finally:
            httpd.server_close()


@app.command("export-ort")
@handles_errors
def export_ort_cmd(model: Annotated[str, typer.Argument(help="A ganq generator .onnx (fp32 or quantized), or zoo:NAME")],
                   out: Annotated[Path, typer.Option(help="Output .ort (the operator config is written beside it)")],
                   optimization: Annotated[Optional[str], typer.Option(
                       help="disable, basic, extended or all (default: disable for packed, basic otherwise)")] = None,
                   weights: Annotated[str, typer.Option(help="coded (small: the codes stay, decoded per run) or "
                                                             "decoded (float32 weights: fp32 size and speed)")]
                   = "coded",
                   force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
                   as_json: Annotated[bool, typer.Option("--json")] = False):
    """onnxruntime's mobile format (.ort) with onnxruntime's converter, keeping the k-bit size; checked on load."""
    from ganq.app.mobile import export_ort
    from ganq.onnx_io import resolve_model

    r = export_ort(resolve_model(model), out, optimization, force=force, weights=weights)
    for note in r["notes"]:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    emit(r, as_json, lambda r: out_console.print(
        f"wrote {r['out']} ({r['bytes_ort']:,} bytes; the .onnx has {r['bytes_onnx']:,}), optimisation "
        f"{r['optimization']}, outputs equal within {r['max_abs_diff']:.1e}; reduced build: {r['config']} "
        f"({', '.join(r['operators'])})", highlight=False))


@app.command()
@handles_errors
def bench(models: Annotated[list[str], typer.Argument(help="Generator .onnx files (or zoo:NAME)")],
          batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated")] = "1,64",
          threads: Annotated[str, typer.Option(help="Thread counts, comma-separated")] = "1,2",
          warmup: int = 10, repeat: int = 50,
          provider: Annotated[str, typer.Option(help=providers_help())] = "cpu",
          qdq: Annotated[str, typer.Option(help="keep (weights decoded on every call), fold (decoded once, when "
                                                "the session is made: ganq's runtime default) or both")] = "both",
          vs_torch: Annotated[Optional[Path], typer.Option("--vs-torch", help="Also time this run folder's "
                                                            "PyTorch generator")] = None,
          as_json: Annotated[bool, typer.Option("--json")] = False):
    """Time generators in onnxruntime like a device would: load, latency p50/p95, images/s, peak memory."""
    from ganq.runtime.bench import BenchSettings, busy, machine, parse_ints, run_isolated

    if vs_torch is not None:
        need_torch("--vs-torch")
    settings = BenchSettings(tuple(models), tuple(parse_ints(batch, "--batch")), tuple(parse_ints(threads, "--threads")),
                             warmup, repeat, provider, qdq,
                             ("torch", "ganq.train.engine:bench_loader", str(vs_torch)) if vs_torch else ())
    jobs = settings.jobs()
    before = machine()
    if busy(before):
        err_console.print(f"warning: load average {before['load1']:.2f} on {before['cpus']} cores: other work "
                          "competes for the CPU and the timings will be slower and noisier", highlight=False)
    results = []
    with err_console.status("bench") as status:
        for i, job in enumerate(jobs, 1):
            status.update(f"bench {i}/{len(jobs)}: {Path(job.model).name} batch {job.batch} threads {job.threads}")
            results.append(run_isolated(job))
    report = {"machine_before": before, "machine_after": machine(), "results": results}

    def render(r):
        rows = [[Path(x["model"]).name + (" (torch)" if x["engine"] == "torch" else ""), x["qdq"] if x["engine"] !=
                 "torch" else "-", x["batch"], x["threads"], f"{x['load_ms']:.1f}", f"{x['p50_ms']:.3f}",
                 f"{x['p95_ms']:.3f}", f"{x['images_per_s']:,.0f}", f"{x['peak_rss_mb']:.0f}",
                 size(x["file_bytes"])] for x in r["results"]]
        out_console.print(table("bench", ["model", "qdq", "batch", "threads", "load ms", "p50 ms", "p95 ms",
                                           "images/s", "peak MB", "size"], rows))
        out_console.print(f"load average before {r['machine_before']['load1']:.2f}, after "
                          f"{r['machine_after']['load1']:.2f} ({r['machine_before']['cpus']} cores)", highlight=False)
    emit(report, as_json, render)
