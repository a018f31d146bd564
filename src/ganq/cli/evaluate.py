"""`ganq evaluate` and `ganq metrics`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ganq.cli.base import (DataRoot, app, emit, err_console, extra_metrics, handles_errors, metric_rows, out_console,
                           providers_help, table)


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
             provider: Annotated[str, typer.Option(help=providers_help())] = "cpu",
             threads: Annotated[Optional[int], typer.Option(help="onnxruntime threads")] = None,
             data_root: DataRoot = None,
             reference: Annotated[Optional[str], typer.Option(
                 help="The fp32 generator a quantized file came from: PSNR and SSIM to it on the same inputs")] = None,
             per_class: Annotated[bool, typer.Option("--per-class", help="Intra-class FID of a conditional "
                                                     "generator")] = False,
             ground_truth: Annotated[Optional[bool], typer.Option(
                 "--ground-truth/--no-ground-truth", help="Image-to-image: PSNR / SSIM to the images the inputs were "
                 "made from, and bicubic upsampling's (default: on for super-resolution specs)")] = None,
             out: Annotated[Optional[Path], typer.Option(help="Also write the JSON here")] = None,
             force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
             as_json: Annotated[bool, typer.Option("--json")] = False):
    """Generate images in onnxruntime and score them against real ones."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ganq.evaluate import EvalOptions, check_request, evaluate as run_eval

    opts = EvalOptions(n=n, seed=seed, k=k, strict=strict, realism=realism, shuffle=not no_shuffle,
                       real_split=real_split)
    check_request(model, out, force, threads)
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console) as bar:
        def stage(name, total):  # one bar per stage, left on screen with its time
            task = bar.add_task(name, total=total)
            return lambda m: bar.advance(task, m)

        r = run_eval(model, dataset, features, opts, data_root=data_root, cache=cache, provider=provider,
                     threads=threads, progress=stage, reference=reference, per_class=per_class,
                     ground_truth=ground_truth)
    if out is not None:
        from ganq._io import write_text_atomic
        write_text_atomic(out, json.dumps(r, indent=1) + "\n")

    def render(r):
        rows = [[label, "-" if r[key] is None else f"{r[key]:.4f}" + (
                    f" ± {r['inception_score_std']:.4f}" if key == "inception_score" else "")]
                for key, label in metric_rows()]
        if r["inception_score_real"] is not None:
            rows.append(["IS of the real images", f"{r['inception_score_real']:.4f}"])
        rows += [[m.label, m.fmt.format(r[key])] for key, m in extra_metrics() if r.get(key) is not None]
        resize = r.get("resize")
        how = f", resized {resize['from']} -> {resize['to']} ({resize['filter']})" if resize else ""
        against = (f"{r['dataset']} ({n} + {n}, {Path(r['features']).name}{how})" if r["dataset"] else
                   f"its fp32 reference {r['reference']} ({n} inputs)")
        out_console.print(table(f"{r['model']} vs {against}", ["metric", "value"],
                                [row for row in rows if row[1] != "-"] if not r["dataset"] else rows))
    emit(r, as_json, render)


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
    from ganq.evaluate import metrics_from_files

    res = metrics_from_files(fake, real, logits_fake, logits_real, k, strict, realism, not no_shuffle)

    def render(x):
        rows = [[label, "-" if x[key] is None else f"{x[key]:.4f}"] for key, label in metric_rows()]
        out_console.print(table(f"{fake.name} vs {real.name} ({x['n_fake']} + {x['n_real']}, k={k})",
                                 ["metric", "value"], rows))
    emit(res, as_json, render)
