"""The ganq command line. The only module that imports typer/rich; torch is imported lazily (train/export)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ganq.errors import GanqError, check_range

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Post-training quantization of GANs, deployed through ONNX.")
# Piped output gets wide tables rather than rich's 80-column default.
out_console = Console(soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, emoji=False, width=None if sys.stderr.isatty() else 200)


def _fail(message: str, code: int = 1):
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(fn):
    """GanqError -> one line on stderr, exit 1; no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GanqError as e:
            _fail(str(e).replace("\n", " "))
        except KeyboardInterrupt:
            _fail("interrupted; files already written are complete", 130)
    return wrapper


def _need_torch(what: str):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise GanqError(f"{what} needs PyTorch: pip install 'ganq[train]'") from None


def _table(title: str, columns: list[str], rows: list[list]) -> Table:
    """A rich table; columns whose cells all look like numbers are right-aligned."""
    import re
    numeric = re.compile(r"^[-+]?[\d,.]+( ?(KiB|MiB|%|± [\d.]+))?$|^-$|^fp32$")
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        right = bool(rows) and all(numeric.match(str(r[i])) for r in rows)
        t.add_column(c, justify="right" if right else "left")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help="Folder to look in first for data sets "
                                                   "(then $GANQ_DATA, ~/.cache/ganq/datasets, /usr/share/datasets).")]


@app.command()
@handles_errors
def datasets(data_root: DataRoot = None,
             as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False):
    """List the data sets ganq knows and where each was found."""
    from ganq import data

    rows = []
    for name in data.names():
        entry = data.get_entry(name)
        found, looked = data.locate(name, data_root)
        if found is None:
            test_only, _ = data.locate(name, data_root, "test")
            found = f"{test_only} (test split only)" if test_only else None
        rows.append({"name": name, "shape": "x".join(map(str, entry.shape)), "found": str(found) if found else None,
                     "description": entry.description, "how_to_get": None if found else entry.how_to_get})
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    out_console.print(_table("data sets", ["name", "shape", "found in", "description"],
                             [[r["name"], r["shape"], r["found"] or "not found", r["description"]] for r in rows]))
    err_console.print("own images: --dataset folder:PATH (class subfolders, or a .zip of them)", highlight=False)


class _TrainBar:
    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn(), console=err_console, transient=False)
        self.task = None

    def start(self, total_steps, done_steps, images_per_step):
        import time
        self.ips, self.t0, self.n = images_per_step, time.perf_counter(), 0
        self.bar.start()
        self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, info="")

    def step(self, d_loss, g_loss):
        import time
        self.n += 1
        rate = self.n * self.ips / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, advance=1, info=f"D {d_loss:.3f} G {g_loss:.3f} {rate:,.0f} img/s")

    def epoch(self, row):
        self.bar.console.print(f"epoch {row['epoch']}: D {row['d_loss']:.3f} G {row['g_loss']:.3f} "
                               f"D(x) {row['d_real']:.2f} D(G(z)) {row['d_fake']:.2f} "
                               f"{row['images_per_s']:,.0f} img/s", highlight=False)

    def stop(self):
        self.bar.stop()


@app.command()
@handles_errors
def train(dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, cifar10, cifar10-jpeg or folder:PATH")],
          arch: Annotated[str, typer.Option(help="fc4, cnn5, cnn3 or dcgan")],
          out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, samples/, losses.csv, run.json")],
          epochs: int = 1, batch_size: int = 64, lr: float = 2e-4,
          latent_dim: int = 100, seed: int = 0,
          limit: Annotated[Optional[int], typer.Option(help="Train on the first N images only")] = None,
          label_smoothing: Annotated[float, typer.Option(help="Real label 1-s for the discriminator")] = 0.0,
          dropout: Annotated[Optional[float], typer.Option(help="Dropout in the discriminator "
                                                            "(default 0.3 for fc4, else 0)")] = None,
          image_size: Annotated[Optional[int], typer.Option(help="Resize folder images to SxS")] = None,
          channels: Annotated[Optional[int], typer.Option(help="1 or 3, for folder:PATH data")] = None,
          device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
          resume: Annotated[bool, typer.Option("--resume", help="Continue from the last complete epoch")] = False,
          force: Annotated[bool, typer.Option("--force", help="Start over in an existing folder")] = False,
          keep_every: Annotated[int, typer.Option(help="Also keep checkpoints/epoch-NNN.pt every N epochs")] = 0,
          ema: Annotated[float, typer.Option(help="Keep an EMA of the generator's weights with this decay, "
                                                  "in (0, 1), e.g. 0.999; 0 = off")] = 0.0,
          nproc: Annotated[int, typer.Option(help="Processes (torchrun + DistributedDataParallel; gloo on CPU, "
                                                  "nccl on CUDA), 1..64; --batch-size is the global batch")] = 1,
          data_root: DataRoot = None,
          download: Annotated[bool, typer.Option("--download", help="Download with torchvision if missing")] = False):
    """Train a GAN; a checkpoint and a sample grid per epoch."""
    _need_torch("train")
    import os

    from ganq.train import distributed
    from ganq.train.loop import TrainConfig, train as run_train

    if not 1 <= nproc <= 64:
        raise GanqError(f"--nproc must be in 1..64, got {nproc}")
    torchrun = distributed.under_torchrun()
    if torchrun and nproc not in (1, int(os.environ["WORLD_SIZE"])):
        raise GanqError(f"--nproc {nproc} under torchrun with {os.environ['WORLD_SIZE']} processes; drop --nproc")
    cfg = TrainConfig(dataset=dataset, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, latent_dim=latent_dim,
                      seed=seed, limit=limit, label_smoothing=label_smoothing, dropout=dropout,
                      image_size=image_size, channels=channels, ema=ema)
    if nproc > 1 and not torchrun:
        distributed.per_process_batch(batch_size, nproc)
        if "train" not in sys.argv:
            raise GanqError("--nproc relaunches the command line under torchrun; run it from a shell")
        raise typer.Exit(distributed.launch(nproc, sys.argv[sys.argv.index("train") + 1:]))
    bar = _TrainBar()
    try:
        row = run_train(cfg, out, resume=resume, force=force, device=device, data_root=data_root,
                        download=download, progress=bar, keep_every=keep_every)
    finally:
        if bar.task is not None:
            bar.stop()
    if os.environ.get("RANK", "0") == "0":
        out_console.print(f"{out}/checkpoint.pt  epoch {row.get('epoch')}  samples in {out}/samples/",
                          highlight=False)


def _emit(report: dict, as_json: bool, render) -> None:
    if as_json:
        out_console.print_json(json.dumps(report))
    else:
        render(report)


@app.command()
@handles_errors
def export(source: Annotated[Path, typer.Argument(help="Run folder or checkpoint.pt")],
           out: Annotated[Path, typer.Option(help="Output .onnx")],
           n: Annotated[int, typer.Option(help="Latents for the parity check, 1..100000")] = 256,
           ema: Annotated[bool, typer.Option("--ema", help="Export the generator's weight EMA (train --ema)")] = False,
           force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
           as_json: Annotated[bool, typer.Option("--json")] = False):
    """Export a trained generator to ONNX (opset 21, dynamic batch), checked against PyTorch."""
    from ganq._io import check_out

    check_range("--n", n, 1, 100_000)
    check_out(out, force, [source])
    _need_torch("export")
    from ganq.export import PARITY_TOL, export as run_export

    r = run_export(source, out, n=n, ema=ema)
    _emit(r, as_json, lambda r: out_console.print(
        f"{r['out']}  {r['spec']['arch']} on {r['spec']['dataset']}, epoch {r['epoch']}"
        f"{' (EMA weights)' if r['weights'] == 'ema' else ''}, opset {r['opset']}, "
        f"{r['bytes']:,} bytes; parity with PyTorch on {r['n']} latents: max |diff| {r['max_abs_diff']:.2e} "
        f"(limit {PARITY_TOL:g})", highlight=False))


def _size(b: int) -> str:
    return f"{b / 1024:,.1f} KiB" if b < 1024 ** 2 else f"{b / 1024 ** 2:,.2f} MiB"


def _render_quant(r: dict) -> None:
    rows = [[t["tensor"], t["op"], "x".join(map(str, t.get("shape_stored", t["shape"]))), t["bits"], t["method"],
             t["decoder"], f"{t.get('params_stored', t['params']):,}", _size(t["bytes_fp32"]),
             _size(t["bytes_ideal"]), _size(t["bytes_stored"]), t["levels_used"]] for t in r["tensors"]]
    width = f"{r['avg_bits']:.2f}-bit average" if r.get("mixed") else f"{r['bits']}-bit"
    title = (f"{width} {r['method']} per {r['granularity']}, format {r['format']}"
             + (f", {r['bn_folded']} BatchNorm folded" if r["fold_bn"] else ""))
    out_console.print(_table(title, ["tensor", "op", "shape", "bits", "method", "decoder", "params", "fp32", "ideal",
                                     "stored", "levels"], rows))
    ideal = f"ideal {r['avg_bits']:.2f}-bit" if r.get("mixed") else f"ideal {r['bits']}-bit"
    out_console.print(_table("model size", ["params quantized", "params float", "fp32", ideal,
                                            "file", "gzip", "file / fp32"],
                             [[f"{r['params_quantized']:,}", f"{r['params_float']:,}", _size(r["bytes_fp32"]),
                               _size(r["bytes_ideal"]), _size(r["bytes_file"]), _size(r["bytes_gzip"]),
                               f"{r['ratio_to_fp32']:.3f}"]]))
    cal = r.get("calibration")
    if cal:
        kinds = [c["kind"] for t in r["tensors"] for c in t.get("corrected", [])]
        fixed = (f"; {kinds.count('bn_mean')} BatchNorm re-estimated, "
                 f"{kinds.count('bias') + kinds.count('bias_added')} biases corrected") if cal["recalibrate_bn"] else ""
        sec = r.get("seconds", {})
        out_console.print(f"calibration: {cal['latents']:,} latents (seed {cal['seed']}), {cal['forward_passes']} "
                          f"forward passes, {sec.get('calibrate', 0):.1f} s calibrating + {sec.get('solve', 0):.1f} s "
                          f"solving{fixed}", highlight=False)
    out_console.print(f"wrote {r['out']} ({r['bytes_file'] / r['bytes_fp32']:.3f} of fp32)", highlight=False)


def _methods_help() -> str:
    from rich.markup import escape

    from ganq.quantize.methods import METHODS

    return "\n\n".join(f"[bold]{n}[/bold]: {escape(cls.summary)}" for n, cls in METHODS.items())


def _method_options(method_opt: list[str] | None) -> tuple:
    from ganq.quantize.methods import parse_method_opts

    return parse_method_opts(method_opt or [])


@app.command(epilog="Methods (--method):\n\n" + _methods_help(), rich_help_panel=None)
@handles_errors
def quantize(model: Annotated[str, typer.Argument(help="fp32 generator .onnx (or zoo:NAME)")],
             out: Annotated[Path, typer.Option(help="Output .onnx")],
             bits: Annotated[Optional[int], typer.Option(
                 help="1..16; 32 leaves the weights float (or let --target/--budget/--avg-bits choose per layer)")
             ] = None,
             method: Annotated[str, typer.Option(help="Quantization method (listed below)")] = "minmax",
             method_opt: Annotated[Optional[list[str]], typer.Option(
                 help="KEY=VALUE option of the method, repeatable (e.g. prior=gaussian for aciq)")] = None,
             granularity: Annotated[str, typer.Option(help="tensor or channel")] = "tensor",
             format: Annotated[str, typer.Option("--format", help="fake, int or packed")] = "fake",
             tensor_bits: Annotated[Optional[list[str]], typer.Option(
                 help="NAME=BITS for one weight (NAME may be first or last), repeatable: a mixed plan")] = None,
             plan: Annotated[Optional[Path], typer.Option(help="JSON plan with per-tensor bits/method")] = None,
             fold_bn: Annotated[bool, typer.Option("--fold-bn", help="Fold BatchNorm into the weights first")] = False,
             include_bias: Annotated[bool, typer.Option("--include-bias", help="Quantize biases too")] = False,
             keep_overridable: Annotated[bool, typer.Option(
                 "--keep-overridable", help="Initializers listed as graph inputs stay inputs (not quantized)")] = False,
             no_upgrade_opset: Annotated[bool, typer.Option(
                 "--no-upgrade-opset", help="Keep an opset below 21 (int/packed then use what it has)")] = False,
             calibration: Annotated[int, typer.Option(
                 help="Calibration latents from the generator's prior (gptq, adaround, --recalibrate-bn), "
                      "1..1000000")] = 1024,
             calibration_seed: Annotated[int, typer.Option(
                 help="Seed of the calibration latents (a stream of their own, never evaluate's)")] = 0,
             recalibrate_bn: Annotated[bool, typer.Option(
                 "--recalibrate-bn", help="After each layer: re-estimate the BatchNorm after it through the "
                                          "quantized graph, or correct its bias (any method)")] = False,
             target: Annotated[Optional[str], typer.Option(
                 help="Mixed precision: METRIC=RATIO of fp32, e.g. fid=1.10 (FID at most +10%) or precision=0.95")
             ] = None,
             budget: Annotated[Optional[str], typer.Option(
                 help="Mixed precision: the best quality within a file size, e.g. 350KiB")] = None,
             avg_bits: Annotated[Optional[float], typer.Option(
                 help="Mixed precision: the best quality within an average width")] = None,
             bits_choices: Annotated[str, typer.Option(help="Widths mixed precision chooses from")] = "2,3,4,5,6,8",
             proxy_n: Annotated[int, typer.Option(
                 help="Images per per-layer sensitivity score (mixed precision), 100..100000")] = 2000,
             verify_n: Annotated[int, typer.Option(
                 help="Images (generated and real) verifying the mixed plan, 10..1000000")] = 10000,
             max_rounds: Annotated[int, typer.Option(
                 help="Re-verifications after widening the most sensitive layer, 0..20")] = 3,
             dataset: Annotated[Optional[str], typer.Option(
                 help="Real data for mixed precision (default: the model's spec)")] = None,
             features: Annotated[str, typer.Option(
                 help="Feature network for mixed precision (as ganq evaluate)")] = "classifier",
             data_root: DataRoot = None,
             force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
             as_json: Annotated[bool, typer.Option("--json")] = False):
    """Quantize a generator's weights to k bits with a method (or per layer by a GAN metric); print the report."""
    from ganq.quantize import QuantizeOptions, quantize_file
    from ganq.quantize.plan import parse_tensor_bits
    from ganq.onnx_io import resolve_model

    mixed = None
    if target is not None or budget is not None or avg_bits is not None:
        from ganq.study.mixed import MixedOptions
        from ganq.study import parse_bits

        if bits is not None or tensor_bits or plan:
            raise GanqError("--target/--budget/--avg-bits choose the bits themselves: drop --bits, --tensor-bits "
                            "and --plan")
        try:
            choices = parse_bits(bits_choices)
        except GanqError:
            raise GanqError(f"--bits-choices must be comma-separated widths like 2,3,4,8, got {bits_choices!r}"
                            ) from None
        mixed = MixedOptions(target=target, budget=budget, avg_bits=avg_bits, bits_choices=choices,
                             proxy_n=proxy_n, verify_n=verify_n, max_rounds=max_rounds)
        bits = mixed.bits_choices[0]
    elif bits is None:
        raise GanqError("give --bits (or --target, --budget or --avg-bits for per-layer widths)")
    opts = QuantizeOptions(bits=bits, method=method, method_opts=_method_options(method_opt),
                           granularity=granularity, format=format, fold_bn=fold_bn, include_bias=include_bias,
                           tensor_bits=parse_tensor_bits(tensor_bits or []),
                           plan_file=str(plan) if plan else None, keep_overridable=keep_overridable,
                           upgrade_opset=not no_upgrade_opset, calibration=calibration,
                           calibration_seed=calibration_seed, recalibrate_bn=recalibrate_bn)
    from ganq._io import check_out

    src = resolve_model(model)
    if Path(out).resolve() == Path(src).resolve():
        raise GanqError(f"{out}: is the input model; write the quantized model elsewhere")
    check_out(out, force, [src])
    if mixed is not None:
        _mixed(src, out, opts, mixed, dataset, features, data_root, as_json)
        return
    report = quantize_file(src, out, opts)
    for note in report.get("notes", []):
        err_console.print(f"note: {note}", markup=False, highlight=False)
    _emit(report, as_json, _render_quant)


def _mixed(src, out, opts, mixed, dataset, features, data_root, as_json) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ganq.study.mixed import mixed_quantize

    n_layers = _count_weights(src)
    total = 1 + n_layers * len(mixed.bits_choices) + 2 + mixed.max_rounds + len(mixed.bits_choices)
    with Progress(TextColumn("mixed precision: {task.fields[now]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("mixed", total=total, now="sensitivity")
        r = mixed_quantize(src, out, opts, mixed, dataset=dataset, features=features, data_root=data_root,
                           progress=lambda what, done=1: bar.update(task, advance=done, now=what))

    _emit(r, as_json, _render_mixed)


def _render_mixed(r: dict) -> None:
    widths = r["bits_choices"]
    per = [{int(k): v for k, v in x["by_bits"].items()} for x in r["layers"]]  # int keys, also from --json output
    rows = [[x["tensor"], x["op"], f"{x['params']:,}"] + [f"{p[b]['loss']:.2f}" for b in widths]
            + [x["chosen_bits"], _size(p[x["chosen_bits"]]["bytes"])] for x, p in zip(r["layers"], per)]
    out_console.print(_table(f"per-layer {r['metric']} loss against fp32 on {r['proxy_n']:,} images (each layer "
                             "alone at each width), and the chosen widths",
                             ["tensor", "op", "params"] + [f"{b} bits" for b in widths] + ["chosen", "bytes"],
                             rows))
    f = r["fp32"]
    urows = [["fp32 (weights)", _size(4 * sum(x["params"] for x in r["layers"])), f"{f['fid']:.2f}",
              f"{f['precision']:.3f}", f"{f['recall']:.3f}", "-"],
             [f"mixed ({r['avg_bits']:.2f} bits avg)", _size(r["bytes_file"]), f"{r['verified']['fid']:.2f}",
              f"{r['verified']['precision']:.3f}", f"{r['verified']['recall']:.3f}", "yes"]]
    urows += [[f"uniform {u['bits']}-bit", _size(u["bytes_file"]), f"{u['fid']:.2f}",
               f"{u['precision']:.3f}", f"{u['recall']:.3f}", "yes" if u["meets"] else "no"] for u in r["uniform"]]
    goal = r["target"] or (f"budget {r['budget_bytes']:,} B" if r["budget_bytes"] else f"{r['avg_bits_limit']} bits")
    out_console.print(_table(f"verified on {r['verify_n']:,} + {r['verify_n']:,} images ({goal})",
                             ["plan", "file", "FID", "precision", "recall", "meets"], urows))
    out_console.print(f"wrote {r['out']} and {r['plan_file']} ({len(r['rounds'])} verification(s))",
                      highlight=False)


def _count_weights(src) -> int:
    from ganq.onnx_io import load_model
    from ganq.quantize.select import find_targets

    return sum(1 for t in find_targets(load_model(src, external_data=False)) if t.role == "weight")


@app.command("app")
@handles_errors
def app_cmd(model: Annotated[str, typer.Argument(help="A ganq generator .onnx (fp32 or quantized), or zoo:NAME")],
            out: Annotated[Path, typer.Option(help="App folder to write (index.html, app.js, model.onnx, app.json)")],
            ort_web: Annotated[Optional[Path], typer.Option(
                help="onnxruntime-web package folder (npm) to copy the runtime from; default: load it from the CDN")
            ] = None,
            title: Annotated[Optional[str], typer.Option(help="Page title")] = None,
            serve: Annotated[Optional[int], typer.Option(
                help="Then serve the folder on 127.0.0.1:PORT (0: any free port) with cross-origin isolation, "
                     "until Ctrl-C")] = None,
            as_json: Annotated[bool, typer.Option("--json")] = False):
    """A static web page that generates with the model in the browser (onnxruntime-web, WebAssembly)."""
    from ganq.app import build_app, serve as serve_folder
    from ganq.onnx_io import resolve_model

    if serve is not None and not 0 <= serve <= 65535:
        raise GanqError(f"--serve must be a port in 0..65535, got {serve}")
    r = build_app(resolve_model(model), out, ort_web, title)
    _emit(r, as_json, lambda r: out_console.print(
        f"wrote {r['out']}/: {', '.join(r['files'])}; onnxruntime-web {r['ort']['version']} "
        f"{'copied' if r['ort']['local'] else 'from ' + r['ort']['module'].rsplit('/', 1)[0]}", highlight=False))
    if serve is not None:
        httpd, url = serve_folder(out, serve)
        err_console.print(f"serving {out} at {url} (cross-origin isolated); Ctrl-C stops", highlight=False)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()


@app.command("export-ort")
@handles_errors
def export_ort_cmd(model: Annotated[str, typer.Argument(help="A ganq generator .onnx (fp32 or quantized), or zoo:NAME")],
                   out: Annotated[Path, typer.Option(help="Output .ort (the operator config is written beside it)")],
                   optimization: Annotated[Optional[str], typer.Option(
                       help="disable, basic, extended or all (default: disable for packed, basic otherwise)")] = None,
                   force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
                   as_json: Annotated[bool, typer.Option("--json")] = False):
    """onnxruntime's mobile format (.ort) with onnxruntime's converter, keeping the k-bit size; checked on load."""
    from ganq._io import check_out
    from ganq.app.mobile import export_ort
    from ganq.onnx_io import resolve_model

    src = resolve_model(model)
    check_out(out, force, [src])
    r = export_ort(src, out, optimization)
    for note in r["notes"]:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    _emit(r, as_json, lambda r: out_console.print(
        f"wrote {r['out']} ({r['bytes_ort']:,} bytes; the .onnx has {r['bytes_onnx']:,}), optimisation "
        f"{r['optimization']}, outputs equal within {r['max_abs_diff']:.1e}; reduced build: {r['config']} "
        f"({', '.join(r['operators'])})", highlight=False))


@app.command("spec")
@handles_errors
def spec_cmd(model: Annotated[str, typer.Argument(help="A generator .onnx (or zoo:NAME)")],
             latent_dim: Annotated[Optional[int], typer.Option(help="Latent size")] = None,
             latent: Annotated[str, typer.Option(help="normal or uniform")] = "normal",
             output_range: Annotated[str, typer.Option(help="LOW,HIGH of the images")] = "-1,1",
             input_name: Annotated[Optional[str], typer.Option(help="Latent input (default: the only input)")] = None,
             output_name: Annotated[Optional[str], typer.Option(help="Image output (default: the only output)")] = None,
             dataset: Annotated[str, typer.Option(help="Data set it was trained on")] = "",
             arch: Annotated[str, typer.Option(help="Architecture name")] = "",
             out: Annotated[Optional[Path], typer.Option(help="Write here instead of in place")] = None,
             force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
             as_json: Annotated[bool, typer.Option("--json")] = False):
    """Show a generator's spec; with --latent-dim, write one into a model exported elsewhere."""
    from ganq.onnx_io import load_model
    from ganq.onnx_io import resolve_model
    from ganq.onnx_io import describe, read_spec

    model = resolve_model(model)
    if latent_dim is None:
        spec = read_spec(load_model(model), str(model))
        _emit(spec.to_dict(), as_json, lambda d: out_console.print_json(json.dumps(d)))
        return
    try:
        lo, hi = (float(v) for v in output_range.split(","))
    except ValueError:
        raise GanqError(f"--output-range must be LOW,HIGH, got {output_range!r}") from None
    check_range("--latent-dim", latent_dim, 1, 4096)
    if out is not None:
        from ganq._io import check_out
        check_out(out, force, [model])
    spec = describe(model, out or model, latent_dim=latent_dim, latent=latent, output_range=(lo, hi),
                    input_name=input_name, output_name=output_name, dataset=dataset, arch=arch)
    _emit(spec.to_dict(), as_json, lambda d: out_console.print(f"wrote ganq.spec into {out or model}: "
                                                                 f"{json.dumps(d)}", highlight=False))


@app.command("train-classifier")
@handles_errors
def train_classifier_cmd(dataset: Annotated[str, typer.Option(help="Data set to classify")],
                         out: Annotated[Path, typer.Option(help="Output .onnx (logits + features)")],
                         epochs: int = 5, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                         width: Annotated[int, typer.Option(help="Channels of the first block")] = 32,
                         limit: Annotated[Optional[int], typer.Option(help="Train on the first N images")] = None,
                         data_root: DataRoot = None,
                         download: Annotated[bool, typer.Option("--download")] = False,
                         as_json: Annotated[bool, typer.Option("--json")] = False):
    """Train the metrics' feature network for a data set and export it to ONNX."""
    _need_torch("train-classifier")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ganq.train.classifier import train_classifier

    with Progress(TextColumn("classifier epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=err_console) as bar:
        task = bar.add_task("train", total=None, epoch=1, loss=0.0)

        def progress(epoch, step, steps, loss):
            bar.update(task, total=steps * epochs, completed=(epoch - 1) * steps + step, epoch=epoch, loss=loss)

        r = train_classifier(dataset, out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, limit=limit,
                             data_root=data_root, download=download, width=width, progress=progress)
    _emit(r, as_json, lambda r: out_console.print(
        f"{r['out']}  {dataset} classifier, {r['feature_dim']}-d features, test accuracy "
        f"{r['test_accuracy']:.4f} after {epochs} epochs ({r['train_seconds']:.0f} s)", highlight=False))


@app.command("convert-features")
@handles_errors
def convert_features(kind: Annotated[str, typer.Argument(help="inception, vgg16 (NVIDIA's) or vgg16-tv")],
                     weights: Annotated[Path, typer.Option(help="The weights file you have (see --help)")],
                     out: Annotated[Optional[Path], typer.Option(help="Output .onnx (default: where `evaluate "
                                                                 "--features KIND` looks)")] = None,
                     dataset: Annotated[Optional[str], typer.Option(help="Make it for this data set's images")] = None,
                     image_shape: Annotated[Optional[str], typer.Option(help="C,H,W instead of --dataset")] = None,
                     no_check: Annotated[bool, typer.Option("--no-check", help="Skip the sha256 check (for vgg16 "
                                                            "this runs the TorchScript code in the file)")] = False,
                     as_json: Annotated[bool, typer.Option("--json")] = False):
    """Convert a pretrained feature network (from your weights file) into an ONNX feature network.

    inception: torch-fidelity's Inception-v3, pt_inception-2015-12-05-6726825d.pth (its release); vgg16: NVIDIA's
    VGG16 of Kynkaanniemi et al. / StyleGAN2-ADA, vgg16.pt (a TorchScript archive, loaded only when its sha256 is
    NVIDIA's); vgg16-tv: torch-fidelity's torchvision VGG16, vgg16-397923af.pth. Nothing is downloaded."""
    _need_torch("convert-features")
    from ganq.export.features import convert

    if (dataset is None) == (image_shape is None):
        raise GanqError("give exactly one of --dataset and --image-shape")
    if dataset is not None:
        from ganq import data
        shape = data.get_entry(dataset).shape
    else:
        try:
            shape = tuple(int(v) for v in image_shape.split(","))
            assert len(shape) == 3
        except (ValueError, AssertionError):
            raise GanqError(f"--image-shape must be C,H,W, got {image_shape!r}") from None
    if out is None:
        from ganq.evaluate import converted_path
        out = converted_path(kind, shape)
    with err_console.status(f"converting {kind}"):
        r = convert(kind, weights, out, shape, check=not no_check)
    _emit(r, as_json, lambda r: out_console.print(
        f"{r['out']}  {kind} for {'x'.join(map(str, r['image_shape']))} images, {r['feature_dim']}-d features; "
        f"parity with torch-fidelity: relative max |diff| {r['parity_rel_diff']:.2e}", highlight=False))


def _metric_rows():
    from ganq.evaluate.catalogue import METRICS

    return [(m.name, m.label) for m in METRICS.values()]


@app.command()
@handles_errors
def evaluate(model: Annotated[str, typer.Argument(help="Generator .onnx (or zoo:NAME)")],
             dataset: Annotated[Optional[str], typer.Option(help="Real data (default: the model's spec)")] = None,
             features: Annotated[str, typer.Option(help="classifier (the data set's zoo classifier), inception, "
                                                   "vgg16, vgg16-tv (see convert-features), zoo:NAME or a .onnx")] = "classifier",
             n: Annotated[int, typer.Option(help="Generated and real samples each")] = 10000,
             seed: int = 0,
             k: Annotated[int, typer.Option(help="Neighbourhood size of precision/recall")] = 3,
             strict: Annotated[bool, typer.Option("--strict", help="prdc's strict < membership")] = False,
             realism: Annotated[str, typer.Option(help="paper or official")] = "paper",
             no_shuffle: Annotated[bool, typer.Option("--no-shuffle", help="IS on unshuffled samples")] = False,
             real_split: Annotated[str, typer.Option(help="train or test")] = "test",
             cache: Annotated[Optional[Path], typer.Option(help="Real-feature cache folder")] = None,
             provider: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
             threads: Annotated[Optional[int], typer.Option(help="onnxruntime threads")] = None,
             data_root: DataRoot = None,
             out: Annotated[Optional[Path], typer.Option(help="Also write the JSON here")] = None,
             force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
             as_json: Annotated[bool, typer.Option("--json")] = False):
    """Generate images in onnxruntime and score them against real ones."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ganq.evaluate import EvalOptions, evaluate as run_eval

    opts = EvalOptions(n=n, seed=seed, k=k, strict=strict, realism=realism, shuffle=not no_shuffle,
                       real_split=real_split)
    if out is not None:
        from ganq._io import check_out
        from ganq.onnx_io import resolve_model
        check_out(out, force, [resolve_model(model)])
    if threads is not None:
        from ganq.onnx_io import session_options
        session_options(threads)  # its range, before any work
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as bar:
        def stage(name, total):  # one bar per stage, left on screen with its time
            task = bar.add_task(name, total=total)
            return lambda m: bar.advance(task, m)

        r = run_eval(model, dataset, features, opts, data_root=data_root, cache=cache, provider=provider,
                     threads=threads, progress=stage)
    if out is not None:
        from ganq._io import write_text_atomic
        write_text_atomic(out, json.dumps(r, indent=1) + "\n")

    def render(r):
        rows = [[label, "-" if r[key] is None else f"{r[key]:.4f}" + (
                    f" ± {r['inception_score_std']:.4f}" if key == "inception_score" else "")]
                for key, label in _metric_rows()]
        if r["inception_score_real"] is not None:
            rows.append(["IS of the real images", f"{r['inception_score_real']:.4f}"])
        out_console.print(_table(f"{r['model']} vs {r['dataset']} ({n} + {n}, {Path(r['features']).name})",
                                 ["metric", "value"], rows))
    _emit(r, as_json, render)


@app.command("metrics")
@handles_errors
def metrics_cmd(fake: Annotated[Path, typer.Argument(help="Generated features, .npy [N, D]")],
                real: Annotated[Path, typer.Argument(help="Real features, .npy [M, D]")],
                logits_fake: Annotated[Optional[Path], typer.Option(help="Logits of the generated images, for "
                                                                    "the Inception Score")] = None,
                logits_real: Annotated[Optional[Path], typer.Option(help="Logits of the real images")] = None,
                k: int = 3,
                strict: Annotated[bool, typer.Option("--strict", help="prdc's strict < membership")] = False,
                realism: Annotated[str, typer.Option(help="paper or official")] = "paper",
                no_shuffle: Annotated[bool, typer.Option("--no-shuffle")] = False,
                as_json: Annotated[bool, typer.Option("--json")] = False):
    """Every metric from feature arrays you extracted elsewhere (generated first, then real)."""
    from ganq.evaluate import EvalOptions, load_features, metrics_from_arrays

    f, r = load_features(fake, "fake features"), load_features(real, "real features")
    lf = load_features(logits_fake, "fake logits") if logits_fake else None
    lr = load_features(logits_real, "real logits") if logits_real else None
    opts = EvalOptions(n=max(10, min(len(f), len(r))), k=k, strict=strict, realism=realism, shuffle=not no_shuffle)
    res = metrics_from_arrays(f, r, lf, lr, opts)

    def render(x):
        rows = [[label, "-" if x[key] is None else f"{x[key]:.4f}"] for key, label in _metric_rows()]
        out_console.print(_table(f"{fake.name} vs {real.name} ({x['n_fake']} + {x['n_real']}, k={k})",
                                 ["metric", "value"], rows))
    _emit(res, as_json, render)


@app.command()
@handles_errors
def bench(models: Annotated[list[str], typer.Argument(help="Generator .onnx files (or zoo:NAME)")],
          batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated")] = "1,64",
          threads: Annotated[str, typer.Option(help="Thread counts, comma-separated")] = "1,2",
          warmup: int = 10, repeat: int = 50,
          provider: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
          qdq: Annotated[str, typer.Option(help="keep, fold or both: onnxruntime's handling of "
                                                "DequantizeLinear (fold = session.disable_quant_qdq=1)")] = "keep",
          vs_torch: Annotated[Optional[Path], typer.Option("--vs-torch", help="Also time this run folder's "
                                                            "PyTorch generator")] = None,
          as_json: Annotated[bool, typer.Option("--json")] = False):
    """Time generators in onnxruntime like a device would: load, latency p50/p95, images/s, peak memory."""
    from ganq.runtime.bench import BenchSettings, busy, machine, parse_ints, run_isolated

    if vs_torch is not None:
        _need_torch("--vs-torch")
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
                 _size(x["file_bytes"])] for x in r["results"]]
        out_console.print(_table("bench", ["model", "qdq", "batch", "threads", "load ms", "p50 ms", "p95 ms",
                                           "images/s", "peak MB", "size"], rows))
        out_console.print(f"load average before {r['machine_before']['load1']:.2f}, after "
                          f"{r['machine_after']['load1']:.2f} ({r['machine_before']['cpus']} cores)", highlight=False)
    _emit(report, as_json, render)


@app.command()
@handles_errors
def sweep(models: Annotated[list[str], typer.Argument(help="Generators: MODEL.onnx, zoo:NAME, or MODEL@DATASET")],
          out: Annotated[Path, typer.Option(help="Report folder")],
          dataset: Annotated[Optional[str], typer.Option(help="Data set for models without @DATASET "
                                                         "(default: each model's spec)")] = None,
          bits: Annotated[str, typer.Option(help="Bit widths; 32 is the float model")] = "32,8,7,6,5,4,3",
          format: Annotated[str, typer.Option("--format", help="fake, int or packed")] = "packed",
          granularity: Annotated[str, typer.Option(help="tensor or channel")] = "tensor",
          method: Annotated[str, typer.Option(help="Quantization method (see ganq quantize --help)")] = "minmax",
          method_opt: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE option of the method")] = None,
          methods: Annotated[Optional[str], typer.Option(
              help="Several methods, one row set each: minmax,mse,gptq[grid=mse;act_order=true]")] = None,
          fold_bn: Annotated[bool, typer.Option("--fold-bn")] = False,
          recalibrate_bn: Annotated[bool, typer.Option(
              "--recalibrate-bn", help="Re-estimate BatchNorm / correct biases (see ganq quantize --help)")] = False,
          calibration: Annotated[int, typer.Option(help="Calibration latents, 1..1000000")] = 1024,
          n: Annotated[int, typer.Option(help="Generated and real samples per row")] = 10000,
          seed: int = 0,
          repeats: Annotated[int, typer.Option(help="Evaluation seeds per row (seed, seed+1, ...), 1..20: every "
                                               "metric as mean ± std")] = 1,
          mixed: Annotated[Optional[str], typer.Option(
              help="Add a mixed-precision row per model and method for this target, e.g. fid=1.10")] = None,
          mixed_choices: Annotated[str, typer.Option(help="Candidate widths of the mixed rows")] = "2,3,4,5,6,8",
          proxy_n: Annotated[int, typer.Option(help="Mixed rows: proxy samples per sensitivity score, "
                                               "100..100000")] = 2000,
          workers: Annotated[int, typer.Option(help="Local worker processes, 1..256")] = 1,
          scheduler: Annotated[Optional[str], typer.Option(
              help="Run the jobs on a Dask cluster: tcp://HOST:PORT (pip install 'ganq[cluster]')")] = None,
          features: Annotated[str, typer.Option(help="classifier (each data set's zoo classifier), inception, "
                                                "vgg16, vgg16-tv, zoo:NAME or a .onnx")] = "classifier",
          speed: Annotated[bool, typer.Option(help="Measure images/s at batch 64")] = True,
          data_root: DataRoot = None,
          as_json: Annotated[bool, typer.Option("--json")] = False):
    """The study as one command: quantize to each bit width (per method, and mixed precision), evaluate over
    repeats, and write figures and a report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ganq.evaluate import EvalOptions
    from ganq.study import Execution, SweepSettings, parse_bits, sweep as run_sweep
    from ganq.study import split_methods

    execution = Execution(workers, scheduler)

    settings = SweepSettings(bits=parse_bits(bits), format=format, granularity=granularity, method=method,
                             method_opts=_method_options(method_opt), fold_bn=fold_bn,
                             methods=split_methods(methods) if methods is not None else (),
                             recalibrate_bn=recalibrate_bn, calibration=calibration, n=n, seed=seed, speed=speed,
                             repeats=repeats, mixed=mixed, mixed_choices=parse_bits(mixed_choices),
                             proxy_n=proxy_n, eval=EvalOptions(n=n, seed=seed))
    with Progress(TextColumn("sweep {task.fields[now]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("sweep", total=None, now="")

        def progress(done, total, label):
            bar.update(task, completed=done, total=total, now=label)
        r = run_sweep(models, settings, out, dataset, features, data_root, progress, execution)

    def render(r):
        from ganq.evaluate.catalogue import METRICS
        from ganq.report.analysis import float_row
        from ganq.report.pages import bits_label, stat

        keys = ("inception_score", "fid", "precision", "recall")
        show_method = any(x["method"] not in ("minmax", "fp32") for x in r["rows"])
        rows = [[x["model"]] + ([x["method"]] if show_method else []) + [bits_label(x)]
                + [stat(x, k, float_row(r["rows"], x["model"])) for k in keys]
                + [_size(x["bytes_file"]), f"{x['images_per_s']:,.0f}" if x.get("images_per_s") else "-"]
                for x in r["rows"]]
        repeats = max(x.get("repeats", 1) for x in r["rows"])
        title = f"sweep (mean ± std over {repeats} seeds; ≈: within noise of fp32)" if repeats > 1 else "sweep"
        out_console.print(_table(title, ["model"] + (["method"] if show_method else []) + ["bits"]
                                 + [METRICS[k].short for k in keys] + ["file", "img/s"], rows))
        for f in r.get("failed", []):
            out_console.print(f"{f['model']} mixed {f['method']}: {f['error']}", highlight=False)
        out_console.print(f"report: {r['index']}", highlight=False)
    _emit(r, as_json, render)


def main():
    app()


if __name__ == "__main__":
    main()
