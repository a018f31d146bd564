"""`ganq sweep`: the study as one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ganq.cli.base import (DataRoot, app, emit, err_console, formats_help, granularities_help, handles_errors,
                           method_options, out_console, size, table)


@app.command()
@handles_errors
def sweep(models: Annotated[list[str], typer.Argument(help="Generators: MODEL.onnx, zoo:NAME, or MODEL@DATASET")],
          out: Annotated[Path, typer.Option(help="Report folder")],
          dataset: Annotated[Optional[str], typer.Option(help="Data set for models without @DATASET "
                                                         "(default: each model's spec)")] = None,
          bits: Annotated[str, typer.Option(help="Bit widths; 32 is the float model")] = "32,8,7,6,5,4,3",
          format: Annotated[str, typer.Option("--format", help=formats_help())] = "packed",
          granularity: Annotated[str, typer.Option(help=granularities_help() + "; a comma list is an axis (rows of "
                                                   "the others labelled METHOD @G)")] = "tensor",
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
                             method_opts=method_options(method_opt), fold_bn=fold_bn,
                             methods=split_methods(methods) if methods is not None else (),
                             recalibrate_bn=recalibrate_bn, calibration=calibration, n=n, seed=seed, speed=speed,
                             repeats=repeats, mixed=mixed, mixed_choices=parse_bits(mixed_choices, "--mixed-choices"),
                             proxy_n=proxy_n, eval=EvalOptions(n=n, seed=seed))
    with Progress(TextColumn("sweep {task.fields[now]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task("sweep", total=None, now="")

        def progress(done, total, label):
            bar.update(task, completed=done, total=total, now=label)
        r = run_sweep(models, settings, out, dataset, features, data_root, progress, execution)

    def render(r):
        from ganq.evaluate.catalogue import metric
        from ganq.report.analysis import float_row
        from ganq.report.pages import bits_label, stat

        keys = ("inception_score", "fid", "precision", "recall") + tuple(
            k for k in ("intra_fid", "psnr_gt", "psnr_fp32") if any(x.get(k) is not None for x in r["rows"]))
        show_method = any(x["method"] not in ("minmax", "fp32") for x in r["rows"])
        rows = [[x["model"]] + ([x["method"]] if show_method else []) + [bits_label(x)]
                + [stat(x, k, float_row(r["rows"], x["model"]) if k not in ("psnr_fp32", "psnr_gt") else None)
                   for k in keys]
                + [size(x["bytes_file"]), f"{x['images_per_s']:,.0f}" if x.get("images_per_s") else "-"]
                for x in r["rows"]]
        repeats = max(x.get("repeats", 1) for x in r["rows"])
        title = f"sweep (mean ± std over {repeats} seeds; ≈: within noise of fp32)" if repeats > 1 else "sweep"
        out_console.print(table(title, ["model"] + (["method"] if show_method else []) + ["bits"]
                                 + [metric(k).short for k in keys] + ["file", "img/s"], rows))
        for f in r.get("failed", []):
            out_console.print(f"{f['model']} mixed {f['method']}: {f['error']}", highlight=False)
        out_console.print(f"report: {r['index']}", highlight=False)
    emit(r, as_json, render)
