"""The torch side: `ganq train`, `export`, `train-classifier`, `convert-features` (each says in one line when
torch is missing)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ganq.cli.base import DataRoot, app, emit, err_console, handles_errors, need_torch, out_console


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
          arch: Annotated[str, typer.Option(help="fc4, cnn5, cnn3, dcgan (unconditional), cgan (conditional), style "
                                                 "(StyleGAN2-like, 32x32) or sr2x (2x super-resolution)")],
          out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, samples/, losses.csv, run.json")],
          epochs: int = 1, batch_size: int = 64, lr: float = 2e-4,
          beta1: Annotated[float, typer.Option(help="Adam's beta1, 0..0.999 (StyleGAN2 uses 0)")] = 0.5,
          aux: Annotated[float, typer.Option(help="cgan: weight of an auxiliary classifier term (AC-GAN) beside "
                                                  "the projection, 0 for none")] = 0.0,
          latent_dim: int = 100, seed: int = 0,
          limit: Annotated[Optional[int], typer.Option(help="Train on the first N images only")] = None,
          label_smoothing: Annotated[float, typer.Option(help="Real label 1-s for the discriminator")] = 0.0,
          dropout: Annotated[Optional[float], typer.Option(help="Dropout in the discriminator "
                                                            "(default 0.3 for fc4, else 0)")] = None,
          image_size: Annotated[Optional[int], typer.Option(
              help="Resize the images to SxS (PIL bicubic), e.g. 32 for style on Fashion-MNIST")] = None,
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
    need_torch("train")
    import os

    from ganq.train import distributed
    from ganq.train.loop import TrainConfig, train as run_train
    from ganq.train.requests import relaunch

    argv = relaunch(nproc, batch_size, sys.argv)
    cfg = TrainConfig(dataset=dataset, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, latent_dim=latent_dim,
                      seed=seed, limit=limit, label_smoothing=label_smoothing, dropout=dropout,
                      image_size=image_size, channels=channels, ema=ema, beta1=beta1, aux=aux)
    if argv is not None:
        raise typer.Exit(distributed.launch(nproc, argv))
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


@app.command()
@handles_errors
def export(source: Annotated[Path, typer.Argument(help="Run folder or checkpoint.pt")],
           out: Annotated[Path, typer.Option(help="Output .onnx")],
           n: Annotated[int, typer.Option(help="Latents for the parity check, 1..100000")] = 256,
           ema: Annotated[bool, typer.Option("--ema", help="Export the generator's weight EMA (train --ema)")] = False,
           force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
           as_json: Annotated[bool, typer.Option("--json")] = False):
    """Export a trained generator to ONNX (opset 21, dynamic batch), checked against PyTorch."""
    from ganq.train.requests import check_export

    check_export(source, out, n, force)
    need_torch("export")
    from ganq.export import export as run_export

    r = run_export(source, out, n=n, ema=ema)
    emit(r, as_json, lambda r: out_console.print(
        f"{r['out']}  {r['spec']['arch']} on {r['spec']['dataset']}, epoch {r['epoch']}"
        f"{' (EMA weights)' if r['weights'] == 'ema' else ''}, opset {r['opset']}, "
        f"{r['bytes']:,} bytes; parity with PyTorch on {r['n']} inputs: max |diff| {r['max_abs_diff']:.2e} "
        f"(limit {r['parity_tol']:g})", highlight=False))


@app.command("train-classifier")
@handles_errors
def train_classifier_cmd(dataset: Annotated[str, typer.Option(help="Data set to classify")],
                         out: Annotated[Path, typer.Option(help="Output .onnx (logits + features)")],
                         epochs: int = 5, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                         width: Annotated[int, typer.Option(help="Channels of the first block")] = 32,
                         arch: Annotated[str, typer.Option(help="cnn (the metrics' feature network) or resnet (an "
                                                                 "independent judge)")] = "cnn",
                         limit: Annotated[Optional[int], typer.Option(help="Train on the first N images")] = None,
                         data_root: DataRoot = None,
                         download: Annotated[bool, typer.Option("--download")] = False,
                         as_json: Annotated[bool, typer.Option("--json")] = False):
    """Train the metrics' feature network for a data set and export it to ONNX."""
    need_torch("train-classifier")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ganq.train.classifier import train_classifier

    with Progress(TextColumn("classifier epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=err_console) as bar:
        task = bar.add_task("train", total=None, epoch=1, loss=0.0)

        def progress(epoch, step, steps, loss):
            bar.update(task, total=steps * epochs, completed=(epoch - 1) * steps + step, epoch=epoch, loss=loss)

        r = train_classifier(dataset, out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, limit=limit,
                             data_root=data_root, download=download, width=width, progress=progress,
                             arch=arch)
    emit(r, as_json, lambda r: out_console.print(
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
    need_torch("convert-features")
    from ganq.export.features import convert

    from ganq.train.requests import feature_shape

    shape = feature_shape(dataset, image_shape)
    if out is None:
        from ganq.evaluate import converted_path
        out = converted_path(kind, shape)
    with err_console.status(f"converting {kind}"):
        r = convert(kind, weights, out, shape, check=not no_check)
    emit(r, as_json, lambda r: out_console.print(
        f"{r['out']}  {kind} for {'x'.join(map(str, r['image_shape']))} images, {r['feature_dim']}-d features; "
        f"parity with torch-fidelity: relative max |diff| {r['parity_rel_diff']:.2e}", highlight=False))
