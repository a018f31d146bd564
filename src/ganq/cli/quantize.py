"""`ganq quantize` (uniform, planned or mixed precision) and `ganq spec`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ganq.cli.base import (DataRoot, app, emit, err_console, formats_help, granularities_help, handles_errors,
                           method_options, methods_help, out_console, size, table)


def _render_quant(r: dict) -> None:
    rows = [[t["tensor"], t["op"], "x".join(map(str, t.get("shape_stored", t["shape"]))), t["bits"], t["method"],
             t["decoder"], f"{t.get('params_stored', t['params']):,}", size(t["bytes_fp32"]),
             size(t["bytes_ideal"]), size(t["bytes_stored"]), t["levels_used"]] for t in r["tensors"]]
    width = f"{r['avg_bits']:.2f}-bit average" if r.get("mixed") else f"{r['bits']}-bit"
    title = (f"{width} {r['method']} per {r['granularity']}, format {r['format']}"
             + (f", {r['bn_folded']} BatchNorm folded" if r["fold_bn"] else ""))
    out_console.print(table(title, ["tensor", "op", "shape", "bits", "method", "decoder", "params", "fp32", "ideal",
                                     "stored", "levels"], rows))
    ideal = f"ideal {r['avg_bits']:.2f}-bit" if r.get("mixed") else f"ideal {r['bits']}-bit"
    out_console.print(table("model size", ["params quantized", "params float", "fp32", ideal,
                                            "file", "gzip", "file / fp32"],
                             [[f"{r['params_quantized']:,}", f"{r['params_float']:,}", size(r["bytes_fp32"]),
                               size(r["bytes_ideal"]), size(r["bytes_file"]), size(r["bytes_gzip"]),
                               f"{r['ratio_to_fp32']:.3f}"]]))
    if "bytes_codes" in r:
        out_console.print(table("file bytes", ["codes", "decoders", "other (floats, graph)", "codes' entropy bound",
                                               "xz -9e"],
                                [[size(r["bytes_codes"]), size(r["bytes_decoders"]), size(r["bytes_other"]),
                                  size(r["bytes_entropy_codes"]), size(r["bytes_xz"])]]))
    cal = r.get("calibration")
    if cal:
        kinds = [c["kind"] for t in r["tensors"] for c in t.get("corrected", [])]
        fixed = (f"; {kinds.count('bn_mean')} BatchNorm re-estimated, "
                 f"{kinds.count('bias') + kinds.count('bias_added')} biases corrected") if cal["recalibrate_bn"] else ""
        sec = r.get("seconds", {})
        out_console.print(f"calibration: {cal['latents']:,} latents (seed {cal['seed']}), {cal['forward_passes']} "
                          f"forward passes, {sec.get('calibrate', 0):.1f} s calibrating + {sec.get('solve', 0):.1f} s "
                          f"solving{fixed}", highlight=False)
    if r.get("bn_into_decoder"):
        out_console.print(f"BatchNorm folded into decoders: {r['bn_into_decoder']}", highlight=False)
    if r.get("float16"):
        f = r["float16"]
        per = f"; per tensor: {', '.join(f'{k}={v}' for k, v in f['per_tensor'].items())}" if f.get("per_tensor") else ""
        out_console.print(f"float{r.get('float_bits', 16)}: {f['tensors']} float tensors{per}; outputs moved by "
                          f"{f['rms']:.2g} RMS, at most {f['max_abs']:.2g}", highlight=False)
    if r.get("activations"):
        a = r["activations"]
        kept = f"; kept float: {', '.join(a['kept_float'])}" if a["kept_float"] else ""
        wide = a.get("at_16_bits", [])
        if wide and a["bits"] == 8:
            kept += f"; at 16 bits: {', '.join(wide)}"
        out_console.print(f"activations: {a['tensors']} tensors at {a['bits']} bits ({a['calibration']}, "
                          f"{'symmetric' if a['symmetric'] else 'asymmetric'}){kept}", highlight=False)
    if r.get("weight_share") is not None:
        left = r.get("weights_left_float") or []
        out_console.print(f"weights quantized: {100 * r['weight_share']:.1f}% of {r['weight_params']:,} weight "
                          f"parameters" + (f" (left float: {', '.join(left)})" if left else ""), highlight=False)
    out_console.print(f"wrote {r['out']} ({r['bytes_file'] / r['bytes_fp32']:.3f} of fp32)", highlight=False)


@app.command(epilog="Methods (--method):\n\n" + methods_help(), rich_help_panel=None)
@handles_errors
def quantize(model: Annotated[str, typer.Argument(help="fp32 generator .onnx (or zoo:NAME)")],
             out: Annotated[Path, typer.Option(help="Output .onnx")],
             bits: Annotated[Optional[int], typer.Option(
                 help="1..16; 32 leaves the weights float (or let --target/--budget/--avg-bits choose per layer)")
             ] = None,
             method: Annotated[str, typer.Option(help="Quantization method (listed below)")] = "minmax",
             method_opt: Annotated[Optional[list[str]], typer.Option(
                 help="KEY=VALUE option of the method, repeatable (e.g. prior=gaussian for aciq)")] = None,
             granularity: Annotated[str, typer.Option(help=granularities_help())] = "tensor",
             format: Annotated[str, typer.Option("--format", help=formats_help())] = "fake",
             tensor_bits: Annotated[Optional[list[str]], typer.Option(
                 help="NAME=BITS for one weight (NAME may be first or last), repeatable: a mixed plan")] = None,
             plan: Annotated[Optional[Path], typer.Option(help="JSON plan with per-tensor bits/method")] = None,
             fold_bn: Annotated[bool, typer.Option("--fold-bn", help="Fold BatchNorm into the weights first")] = False,
             float_bits: Annotated[int, typer.Option(
                 help="32, 16 or 8: the floats that are not quantized weights (biases, decoders, other "
                      "parameters) as float16; 8: biases and other parameters as int8 per tensor, decoders "
                      "float16")] = 32,
             float_tensor_bits: Annotated[Optional[list[str]], typer.Option(
                 help="NAME=32|16|8 for one float initializer, or NAME=32|16 for a quantized weight's decoder; "
                      "repeatable; a plan file's \"floats\" does the same")] = None,
             bn_into_decoder: Annotated[bool, typer.Option(
                 "--bn-into-decoder", help="Fold a BatchNorm after a per-channel layer into its decoder and bias, "
                 "after quantizing (exact; the codes do not change)")] = False,
             activations: Annotated[int, typer.Option(
                 help="8 or 16: quantize the activations too (QDQ pairs, per tensor; needs --format int and a "
                      "symmetric weight grid); 0: weights only. With --target: the activations' widths by the "
                      "metric, and without --bits the weights' widths over --bits-choices too")] = 0,
             act_calibration: Annotated[str, typer.Option(
                 help="Activation ranges from the calibration latents: minmax, percentile, mse or entropy")] = "minmax",
             act_percentile: Annotated[float, typer.Option(help="(0, 100]: --act-calibration percentile's p")] = 99.99,
             act_symmetric: Annotated[bool, typer.Option(
                 "--act-symmetric", help="Signed activations, zero point 0 (default: unsigned, asymmetric)")] = False,
             keep_float: Annotated[Optional[list[str]], typer.Option(
                 help="With --activations: an activation tensor that stays float, or first / last (that weight "
                      "layer's input and output); repeatable")] = None,
             act_tensor_bits: Annotated[Optional[list[str]], typer.Option(
                 help="With --activations: NAME=8|16|32 for one activation tensor (32: float; NAME may be first / "
                      "last); repeatable; a plan file's \"activations\" does the same")] = None,
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
    from ganq.onnx_io import resolve_model
    from ganq.quantize import QuantizeOptions, quantize_file
    from ganq.quantize.pipeline import check_output
    from ganq.quantize.plan import parse_act_bits, parse_float_bits, parse_tensor_bits
    from ganq.study.mixed import check_outputs, mixed_request

    act_search, joint = None, None
    if activations and (target or budget or avg_bits):  # the activations' widths by a GAN metric
        from ganq.study.act_search import ActSearchOptions, check_request

        joint_asked = bits is None and not tensor_bits  # no weight width given: the weights' widths searched too
        check_request(bits, act_tensor_bits, budget, avg_bits, plan, joint=joint_asked)
        act_search, mixed = ActSearchOptions(target=target, proxy_n=proxy_n, verify_n=verify_n,
                                             max_rounds=max_rounds), None
        if joint_asked:
            bits, joint = mixed_request(None, None, None, target, None, None, bits_choices, proxy_n, verify_n,
                                        max_rounds)
    else:
        bits, mixed = mixed_request(bits, tensor_bits, plan, target, budget, avg_bits, bits_choices, proxy_n,
                                    verify_n, max_rounds)
    opts = QuantizeOptions(bits=bits, method=method, method_opts=method_options(method_opt),
                           granularity=granularity, format=format, fold_bn=fold_bn, include_bias=include_bias,
                           tensor_bits=parse_tensor_bits(tensor_bits or []),
                           plan_file=str(plan) if plan else None, keep_overridable=keep_overridable,
                           upgrade_opset=not no_upgrade_opset, calibration=calibration,
                           calibration_seed=calibration_seed, recalibrate_bn=recalibrate_bn,
                           bn_into_decoder=bn_into_decoder, float_bits=float_bits, activations=activations,
                           act_calibration=act_calibration, act_percentile=act_percentile,
                           act_symmetric=act_symmetric, keep_float=tuple(keep_float or ()),
                           act_tensor_bits=parse_act_bits(act_tensor_bits or []),
                           float_tensor_bits=parse_float_bits(float_tensor_bits or []))
    src = resolve_model(model)
    (check_output if mixed is None and act_search is None else check_outputs)(src, out, force)
    if act_search is not None:
        _act_search(src, out, opts, act_search, dataset, features, data_root, as_json, joint)
        return
    if mixed is not None:
        _mixed(src, out, opts, mixed, dataset, features, data_root, as_json)
        return
    if getattr(opts.method_config, "end_to_end", False):
        report = _end_to_end(src, out, opts, force, data_root)
    else:
        report = quantize_file(src, out, opts, replace=force, sizes=True, data_root=data_root)
    for note in report.get("notes", []):
        err_console.print(f"note: {note}", markup=False, highlight=False)
    emit(report, as_json, _render_quant)


def _end_to_end(src, out, opts, force, data_root) -> dict:
    """quantize_file with a progress bar of the end-to-end training (steps, loss, best held-out loss), shown from
    the first step on: a model refused before training leaves the one error line alone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ganq.quantize import quantize_file

    bar = Progress(TextColumn("distill"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}  held-out best {task.fields[best]:.4f}"),
                   TimeElapsedColumn(), console=err_console)
    task = None

    def progress(step, steps, loss, best):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("distill", total=steps, loss=loss, best=best)
        bar.update(task, completed=step, loss=loss, best=best)
    try:
        return quantize_file(src, out, opts, replace=force, sizes=True, data_root=data_root, progress=progress)
    finally:
        bar.stop()


def _mixed(src, out, opts, mixed, dataset, features, data_root, as_json) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ganq.study.mixed import mixed_quantize, progress_total

    total = progress_total(src, mixed)
    with Progress(TextColumn("mixed precision: {task.fields[now]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("mixed", total=total, now="sensitivity")
        r = mixed_quantize(src, out, opts, mixed, dataset=dataset, features=features, data_root=data_root,
                           progress=lambda what, done=1: bar.update(task, advance=done, now=what))

    emit(r, as_json, _render_mixed)


def _act_search(src, out, opts, search, dataset, features, data_root, as_json, joint=None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ganq.onnx_io import load_model
    from ganq.quantize.activations import plan_activations
    from ganq.study.act_search import activation_search, joint_search, steps
    from ganq.study.mixed import progress_total

    n = len(plan_activations(load_model(src, external_data=False)).tensors)  # an estimate before BatchNorm folds
    total = steps(n, search) + (progress_total(src, joint) - len(joint.bits_choices) if joint else 0)
    with Progress(TextColumn("activation widths: {task.fields[now]}" if joint is None else
                             "weight and activation widths: {task.fields[now]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("act", total=total, now="activations" if joint is None else "sensitivity")
        tick = lambda what, done=1: bar.update(task, advance=done, now=what)  # noqa: E731
        if joint is None:
            r = activation_search(src, out, opts, search, dataset=dataset, features=features, data_root=data_root,
                                  progress=tick)
        else:
            r = joint_search(src, out, opts, search, joint, dataset=dataset, features=features, data_root=data_root,
                             progress=tick)
    emit(r, as_json, _render_act_search if joint is None else _render_joint)


def _render_joint(r: dict) -> None:
    w = r["weights"]
    rows = [[x["tensor"], x["op"], f"{x['params']:,}", x["chosen_bits"]] for x in w["layers"]]
    out_console.print(table(f"weights: widths within {r['weight_target']} (half the target's allowance; "
                             f"activations float), {w['avg_bits']:.2f} bits a weight on average, verified "
                             f"{w['metric']} {w['verified'][w['metric']]:.2f}",
                             ["tensor", "op", "params", "bits"], rows))
    _render_act_search(r["activations"])

def _render_act_search(r: dict) -> None:
    rows = [[x["tensor"], f"{x['proxy']:.2f}", f"{x['loss']:.2f}", "float" if x["chosen"] == 32 else x["chosen"]]
            for x in r["tensors"]]
    out_console.print(table(f"per-activation {r['metric']} loss on {r['proxy_n']:,} images (each tensor alone at "
                             f"{r['activations']} bits, the others float; weights-only {r['weights_only_proxy']:.2f}, "
                             f"fp32 {r['fp32_proxy']:.2f}) and the chosen widths",
                             ["tensor", r["metric"], "loss", "chosen"], rows))
    v = r["rounds"][-1]
    out_console.print(f"verified on {r['verify_n']:,} + {r['verify_n']:,} images: {r['metric']} {r['verified']:.2f} "
                      f"against fp32 {r['fp32']:.2f} x {r['ratio']} ({len(r['rounds'])} verification(s)); "
                      f"{len(r['widened'])} tensor(s) widened; {v['bytes_file']:,} bytes", highlight=False)
    out_console.print(f"wrote {r['out']} and {r['plan_file']}", highlight=False)


def _render_mixed(r: dict) -> None:
    widths = r["bits_choices"]
    per = [{int(k): v for k, v in x["by_bits"].items()} for x in r["layers"]]  # int keys, also from --json output
    rows = [[x["tensor"], x["op"], f"{x['params']:,}"] + [f"{p[b]['loss']:.2f}" for b in widths]
            + [x["chosen_bits"], size(p[x["chosen_bits"]]["bytes"])] for x, p in zip(r["layers"], per)]
    out_console.print(table(f"per-layer {r['metric']} loss against fp32 on {r['proxy_n']:,} images (each layer "
                             "alone at each width), and the chosen widths",
                             ["tensor", "op", "params"] + [f"{b} bits" for b in widths] + ["chosen", "bytes"],
                             rows))
    f = r["fp32"]
    one = {x["chosen_bits"] for x in r["layers"]}
    written = (f"mixed ({r['avg_bits']:.2f} bits avg)" if len(one) > 1
               else f"written: uniform {one.pop()}-bit (no mixed plan verified smaller)")
    urows = [["fp32 (weights)", size(4 * sum(x["params"] for x in r["layers"])), f"{f['fid']:.2f}",
              f"{f['precision']:.3f}", f"{f['recall']:.3f}", "-"],
             [written, size(r["bytes_file"]), f"{r['verified']['fid']:.2f}",
              f"{r['verified']['precision']:.3f}", f"{r['verified']['recall']:.3f}", "yes"]]
    urows += [[f"uniform {u['bits']}-bit", size(u["bytes_file"]), f"{u['fid']:.2f}",
               f"{u['precision']:.3f}", f"{u['recall']:.3f}", "yes" if u["meets"] else "no"] for u in r["uniform"]]
    goal = r["target"] or (f"budget {r['budget_bytes']:,} B" if r["budget_bytes"] else f"{r['avg_bits_limit']} bits")
    out_console.print(table(f"verified on {r['verify_n']:,} + {r['verify_n']:,} images ({goal})",
                             ["plan", "file", "FID", "precision", "recall", "meets"], urows))
    out_console.print(f"wrote {r['out']} and {r['plan_file']} ({len(r['rounds'])} verification(s))",
                      highlight=False)


@app.command("spec")
@handles_errors
def spec_cmd(model: Annotated[str, typer.Argument(help="A generator .onnx (or zoo:NAME)")],
             latent_dim: Annotated[Optional[int], typer.Option(help="Latent size (where the graph leaves it open)")] = None,
             latent: Annotated[str, typer.Option(help="The latent's prior: normal, uniform or truncated")] = "normal",
             input: Annotated[Optional[list[str]], typer.Option(
                 "--input", help="NAME=KIND[,key=value...]: an input ganq cannot tell by itself (kinds: latent, "
                 "label, noise, image, const; e.g. label=label,classes=10  img=image,source=cifar10  "
                 "psi=const,value=0.7)")] = None,
             output_range: Annotated[str, typer.Option(help="LOW,HIGH of the images")] = "-1,1",
             output_layout: Annotated[Optional[str], typer.Option(help="NCHW or NHWC (default: from the shape)")] = None,
             image_size: Annotated[Optional[str], typer.Option(help="HxW of an output whose size is symbolic "
                                                                    "(default: measured by running it once)")] = None,
             input_name: Annotated[Optional[str], typer.Option(help="The latent input (default: told by shape)")] = None,
             output_name: Annotated[Optional[str], typer.Option(help="Image output (default: the only output)")] = None,
             dataset: Annotated[str, typer.Option(help="Data set it was trained on")] = "",
             arch: Annotated[str, typer.Option(help="Architecture name")] = "",
             write: Annotated[bool, typer.Option("--write", help="Write a spec told from the graph alone")] = False,
             out: Annotated[Optional[Path], typer.Option(help="Write here instead of in place")] = None,
             force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
             as_json: Annotated[bool, typer.Option("--json")] = False):
    """Show a generator's spec; with --write (or any describing option), write one into a model exported
    elsewhere."""
    from ganq.onnx_io import describe, load_model, read_spec, resolve_model
    from ganq.spec import parse_input_option, parse_range, parse_size

    model = resolve_model(model)
    if not (write or latent_dim is not None or input or output_layout or image_size or input_name):
        spec = read_spec(load_model(model), str(model))
        emit(spec.to_dict(), as_json, lambda d: out_console.print_json(json.dumps(d)))
        return
    lo, hi = parse_range(output_range)
    given = dict(parse_input_option(t) for t in input or [])
    size = parse_size(image_size) if image_size else None
    spec = describe(model, out or model, latent_dim=latent_dim, latent=latent, output_range=(lo, hi),
                    input_name=input_name, output_name=output_name, dataset=dataset, arch=arch, force=force,
                    inputs=given, output_layout=output_layout, image_size=size)
    emit(spec.to_dict(), as_json, lambda d: out_console.print(f"wrote ganq.spec into {out or model}: "
                                                                 f"{json.dumps(d)}", highlight=False))
