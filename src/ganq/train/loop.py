"""The GAN training loop: minimax loss with the non-saturating generator loss, Adam, a checkpoint per epoch."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganq import __version__
from ganq import data as gdata
from ganq._io import atomic_path, write_text_atomic
from ganq.errors import GanqError, check_range, warn
from ganq.spec import GeneratorSpec
from ganq.train import checkpoint
from ganq.train.archs import build, check_fits, family_of
from ganq.train.families import R1_EVERY, disc, r1_penalty

RUN_FILE = "run.json"
LOSS_COLUMNS = ["epoch", "d_loss", "g_loss", "d_real", "d_fake", "images", "seconds", "images_per_s"]


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    arch: str
    epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    latent_dim: int = 100
    latent: str = "normal"
    seed: int = 0
    limit: int | None = None
    label_smoothing: float = 0.0
    dropout: float | None = None  # None: the architecture's default (0.3 for fc4, as FC GANs need; else 0)
    image_size: int | None = None
    channels: int | None = None
    grid: int = 64
    nproc: int = 1  # processes of a torchrun run (1: the plain loop, or torchrun with one process)
    ema: float = 0.0  # 0: off (the study's setting); else the decay of the generator's weight EMA
    aux: float = 0.0  # conditional: the weight of AC-GAN's auxiliary classification term (0: the projection alone)

    def __post_init__(self):
        if self.dropout is None:
            object.__setattr__(self, "dropout", 0.3 if self.arch == "fc4" else 0.0)
        check_range("--epochs", self.epochs, 1, 100_000)
        if self.batch_size < 2:
            raise GanqError(f"--batch-size must be at least 2 (BatchNorm needs a batch), got {self.batch_size}")
        check_range("--batch-size", self.batch_size, 2, 65_536)
        check_range("--latent-dim", self.latent_dim, 1, 4096)
        check_range("--seed", self.seed, 0, 2 ** 31 - 1)
        if self.limit is not None:
            check_range("--limit", self.limit, 1, 10 ** 8)
        if self.image_size is not None:
            check_range("--image-size", self.image_size, 8, 512)
        if self.channels is not None and self.channels not in (1, 3):
            raise GanqError(f"--channels must be 1 or 3, got {self.channels}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 1):
            raise GanqError(f"--lr must be in (0, 1], got {self.lr}")
        check_range("--beta1", self.beta1, 0.0, 0.999, integer=False)
        check_range("--nproc", self.nproc, 1, 64)
        if not 0 <= self.label_smoothing < 0.5:
            raise GanqError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if not 0 <= self.dropout < 1:
            raise GanqError(f"--dropout must be in [0, 1), got {self.dropout}")
        check_range("--aux", self.aux, 0.0, 100.0, integer=False)
        if self.aux and family_of(self.arch).name != "conditional":
            raise GanqError(f"--aux is a term of the conditional architectures (cgan, cgan-bn), not {self.arch}")
        if self.ema != 0.0 and not 0 < self.ema < 1:
            raise GanqError(f"--ema must be in (0, 1) (or 0 for off), got {self.ema}")

    def same_run(self, other: "TrainConfig") -> list[str]:
        """Settings that differ, except those a resumed run may change (epochs)."""
        return [f.name for f in fields(self) if f.name != "epochs" and getattr(self, f.name) != getattr(other, f.name)]


class Progress:
    """Callbacks the CLI fills in with a progress bar; the default is silent."""

    def start(self, total_steps: int, done_steps: int, images_per_step: int) -> None: ...
    def step(self, d_loss: float, g_loss: float) -> None: ...
    def epoch(self, row: dict) -> None: ...


class GeneratorEMA:
    """An exponential moving average of a generator's parameters: after each generator step,
    ema <- decay * ema + (1 - decay) * w, starting from the initial weights (ema_0 = w_0), so after T steps
    ema_T = decay^T w_0 + (1 - decay) * sum_{t=1..T} decay^(T-t) w_t.

    BatchNorm's running statistics are buffers, not parameters: they are copied from the raw generator when the
    EMA is read (state_dict), as StyleGAN and most GAN codebases do, rather than averaged or recomputed."""

    def __init__(self, g: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = {k: v.detach().clone() for k, v in g.named_parameters()}

    @torch.no_grad()
    def update(self, g: torch.nn.Module) -> None:
        for k, v in g.named_parameters():
            self.params[k].lerp_(v.detach(), 1.0 - self.decay)

    def state_dict(self, g: torch.nn.Module) -> dict:
        return {k: (self.params[k] if k in self.params else v).detach().cpu().clone()
                for k, v in g.state_dict().items()}

    def load(self, state: dict) -> None:
        for k in self.params:
            if k not in state or state[k].shape != self.params[k].shape:
                raise GanqError(f"checkpoint's generator_ema lacks or misshapes {k}")
            self.params[k].copy_(state[k])


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise GanqError("--device cuda: torch sees no CUDA GPU here; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise GanqError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return torch.device(device)


def is_run(folder: Path) -> bool:
    try:
        return json.loads((folder / RUN_FILE).read_text()).get("ganq") == "run"
    except (OSError, ValueError, AttributeError):
        return False


def prepare_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to write into a folder that holds something else, unless --force."""
    if resume:
        if not is_run(out) and not (out / "checkpoint.pt").is_file():
            raise GanqError(f"{out}: nothing to resume (no ganq run here)")
        return
    if out.exists() and not out.is_dir():
        raise GanqError(f"{out}: exists and is not a folder")
    from ganq._io import check_writable_place
    check_writable_place(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "a ganq run; add --resume to continue it" if is_run(out) else "not a ganq run"
        raise GanqError(f"{out}: folder exists and is {what}, or --force to start over there")


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    # uint8 NHWC -> float NCHW in [-1, 1], the generator's output range
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def latents(n: int, dim: int, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(n, dim, generator=generator) * 2 - 1
    return torch.randn(n, dim, generator=generator)


def save_grid(g, args: list, path: Path) -> None:
    """A PNG grid of g(*args), drawn in eval mode as the exported generator runs."""
    from torchvision.utils import save_image

    was_training = g.training
    g.eval()
    with torch.no_grad():
        x = g(*args).cpu()
    g.train(was_training)
    buf = io.BytesIO()
    nrow = int(np.ceil(np.sqrt(len(x))))
    save_image(x, buf, format="png", nrow=nrow, normalize=True, value_range=(-1, 1))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _write_losses(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, LOSS_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _read_losses(path: Path, up_to_epoch: int) -> list[dict]:
    """The logged rows up to up_to_epoch; rows that do not parse are dropped with one warning (losses.csv is a log:
    the model is in the checkpoint, so a damaged log never stops a resume)."""
    if not path.exists():
        return []
    rows, bad = [], 0
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                try:
                    e = int(r.get("epoch") or "")
                    ok = all(r.get(c) not in (None, "") for c in LOSS_COLUMNS)
                except (ValueError, TypeError):
                    ok = False
                if not ok:
                    bad += 1
                elif e <= up_to_epoch:
                    rows.append({c: r[c] for c in LOSS_COLUMNS})
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        warn(f"{path}: unreadable ({type(e).__name__}); the earlier epochs' losses are dropped from the log, "
             "training resumes")
        return []
    if bad:
        warn(f"{path}: {bad} damaged row(s) dropped from the log; training resumes")
    return rows


def _saved_config(out: Path, state) -> "TrainConfig":
    """The run's settings: run.json, or (when it is missing or damaged) the checkpoint's copy of them."""
    try:
        return TrainConfig(**json.loads((out / RUN_FILE).read_text())["config"])
    except Exception as e:  # missing, not JSON, not an object, unknown or out-of-range fields: many types
        if state is None:
            raise GanqError(f"{out}: {RUN_FILE} is missing or damaged and there is no checkpoint to resume from"
                            ) from None
        why = str(e).splitlines()[0][:80] if isinstance(e, GanqError) else type(e).__name__
        warn(f"{out / RUN_FILE}: missing or damaged ({why}); using the settings stored in checkpoint.pt")
        try:
            return TrainConfig(**state["config"])
        except Exception:
            raise GanqError(f"{out}: neither {RUN_FILE} nor checkpoint.pt hold readable run settings") from None


def train(config: TrainConfig, out: str | Path, resume: bool = False, force: bool = False, device: str = "auto",
          data_root=None, download: bool = False, progress: Progress | None = None,
          keep_every: int = 0) -> dict:
    """Train config's GAN into folder `out`; returns the last epoch's loss row. Under torchrun (WORLD_SIZE set) the
    distributed path (ganq.train.distributed) runs instead, with config.nproc = WORLD_SIZE."""
    from ganq.train import distributed

    out, progress = Path(out), progress or Progress()
    if keep_every < 0:
        raise GanqError(f"--keep-every must be 0 (off) or a positive number of epochs, got {keep_every}")
    dev = pick_device(device)
    ddp = None
    if distributed.under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        distributed.per_process_batch(config.batch_size, world)
        if config.nproc != world:
            config = replace(config, nproc=world)
        ddp, dev = distributed.setup(dev)
        if not ddp.main:
            progress = Progress()
    elif config.nproc != 1:
        raise GanqError("nproc > 1 needs torchrun: use `ganq train --nproc N` or `torchrun --nproc_per_node N -m "
                        "ganq.cli train ...`")
    fresh = not out.exists()
    try:
        return _train(config, out, resume, force, dev, data_root, download, progress, keep_every, ddp)
    except BaseException:
        # a new run that failed (a full disk) or was stopped before its first checkpoint leaves no folder behind
        if fresh and (ddp is None or ddp.main) and out.is_dir() and not (out / "checkpoint.pt").exists():
            import shutil
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if ddp is not None:
            distributed.teardown()


def _train(config, out, resume, force, dev, data_root, download, progress, keep_every, ddp):
    from ganq.train import distributed

    main = ddp is None or ddp.main
    if ddp is not None and config.aux:
        raise GanqError("--aux trains the auxiliary classifier outside DDP's gradient sync; use one process")
    prepare_out(out, resume, force)
    if ddp is not None:
        import torch.distributed as dist
        dist.barrier()  # every process has checked the folder before rank 0 writes into it

    state = None
    if resume:
        state = checkpoint.load(out / "checkpoint.pt") if (out / "checkpoint.pt").exists() else None
        saved = _saved_config(out, state)
        diff = saved.same_run(config)
        if diff == ["nproc"]:
            raise GanqError(f"{out}: the run was trained with {saved.nproc} process(es); resume it with the same "
                            f"number (--nproc {saved.nproc}), not {config.nproc}")
        if diff:
            raise GanqError(f"{out}: --resume with other settings than the run's ({', '.join(diff)})")

    from ganq.train.download import fetch

    ds = gdata.load(config.dataset, "train", data_root=data_root, download=fetch if download else None, limit=config.limit,
                    image_size=config.image_size, channels=config.channels)
    c, h, w = ds.shape_chw
    spec = GeneratorSpec(latent_dim=config.latent_dim, channels=c, height=h, width=w, latent=config.latent,
                         dataset=config.dataset, arch=config.arch)
    check_fits(config.arch, spec)
    family = family_of(config.arch)
    classes = len(ds.classes) or int(ds.labels.max()) + 1
    if family.needs_labels and classes < 2:
        raise GanqError(f"{config.dataset}: a conditional generator needs labelled images of 2 or more classes")
    if family.name != "unconditional":
        spec = replace(spec, inputs=family.inputs(spec, classes))
    if len(ds.images) < config.batch_size:
        raise GanqError(f"{config.dataset}: {len(ds.images)} images, fewer than one batch of {config.batch_size}")

    torch.manual_seed(config.seed)
    g, d = build(spec, dropout=config.dropout, aux=config.aux > 0)
    g, d = g.to(dev), d.to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    g_run, d_run = g, d  # what the steps call: the modules, or their DDP wrappers
    if ddp is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        distributed.sync_batchnorm(g)
        distributed.sync_batchnorm(d)
        ids = [dev.index] if dev.type == "cuda" else None
        g_run = DDP(g, device_ids=ids, broadcast_buffers=False)
        d_run = DDP(d, device_ids=ids, broadcast_buffers=False)
    ema = GeneratorEMA(g, config.ema) if config.ema else None
    start_epoch = 0
    if state is not None:
        if state["spec"] != spec.to_dict():
            raise GanqError(f"{out}: checkpoint's generator spec differs from this data set's")
        try:
            g.load_state_dict(state["generator"])
            d.load_state_dict(state["discriminator"])
            opt_g.load_state_dict(state["optimizers"]["g"])
            opt_d.load_state_dict(state["optimizers"]["d"])
        except (RuntimeError, TypeError, ValueError, KeyError, IndexError) as e:
            raise GanqError(f"{out}: checkpoint.pt does not fit this run's networks "
                            f"({str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__})"
                            ) from None
        start_epoch = int(state["epoch"])
        if ema is not None:
            if "generator_ema" not in state:
                raise GanqError(f"{out}: checkpoint has no generator EMA to resume")
            ema.load(state["generator_ema"])
        try:
            torch.set_rng_state(state["rng"]["torch"])
        except (RuntimeError, TypeError, ValueError) as e:
            raise GanqError(f"{out}: checkpoint.pt holds a damaged random-generator state ({type(e).__name__})"
                            ) from None
        if dev.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(exist_ok=True)
        if not resume:
            for stale in ("checkpoint.pt", "losses.csv"):
                (out / stale).unlink(missing_ok=True)
        write_text_atomic(out / RUN_FILE, json.dumps(
            {"ganq": "run", "version": __version__, "spec": spec.to_dict(), "config": asdict(config),
             "dataset_source": ds.source, "images": int(len(ds.images))}, indent=2) + "\n")
    rows = _read_losses(out / "losses.csv", start_epoch) if resume else []

    x_all = _to_tensor(ds.images)
    y_all = torch.from_numpy(ds.labels.astype(np.int64))
    lr_all = None
    if family.needs_lowres:  # the low-resolution inputs, made as ganq makes them at evaluation (PIL bicubic)
        from ganq.data.resize import resize_images

        lr_all = _to_tensor(resize_images(ds.images, h // 2, w // 2, c))
    del ds
    steps = len(x_all) // config.batch_size  # the last partial batch is dropped: BatchNorm dislikes tiny batches
    per = config.batch_size if ddp is None else config.batch_size // ddp.world
    fixed = family.noise(spec, config.grid, torch.Generator().manual_seed(config.seed + 1), classes)
    if family.needs_labels:  # the grid cycles through the classes
        fixed[1] = torch.arange(config.grid) % classes
    fixed = family.g_args(fixed, lr_all[:config.grid] if lr_all is not None else None)
    real_target = 1.0 - config.label_smoothing
    progress.start(steps * config.epochs, steps * start_epoch, config.batch_size)

    row = rows[-1] if rows else {}
    for epoch in range(start_epoch + 1, config.epochs + 1):
        g.train()
        d.train()
        # the shuffle depends on (seed, epoch) alone, so a resumed run sees the same batches
        if ddp is None:
            perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        else:
            from torch.utils.data import DistributedSampler

            # the same permutation, sharded: rank r reads perm[r::N] (DistributedSampler seeds seed + epoch)
            sampler = DistributedSampler(range(len(x_all)), num_replicas=ddp.world, rank=ddp.rank, shuffle=True,
                                         seed=config.seed * 100003, drop_last=True)
            sampler.set_epoch(epoch)
            perm = torch.tensor(list(sampler))
            torch.manual_seed(config.seed * 100003 + epoch * 1009 + ddp.rank)  # this process's dropout stream
            zgen = torch.Generator().manual_seed(config.seed * 7919 + epoch)
        t0, sums = time.perf_counter(), np.zeros(4)
        for i in range(steps):
            idx = perm[i * per:(i + 1) * per]
            real = x_all[idx].to(dev)
            if ddp is None:
                noise = [t.to(dev) for t in family.noise(spec, len(real), None, classes)]
            else:  # the step's B draws, the same on every process; this process takes its slice
                noise = [t[ddp.rank * per:(ddp.rank + 1) * per].to(dev)
                         for t in family.noise(spec, config.batch_size, zgen, classes)]
            fake = g_run(*family.g_args(noise, lr_all[idx].to(dev) if lr_all is not None else None))
            real_cond = family.real_cond(y_all[idx].to(dev))
            fake_cond = family.fake_cond(noise)

            d_real, d_fake = disc(d_run, real, real_cond), disc(d_run, fake.detach(), fake_cond)
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, real_target))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            if config.aux:  # AC-GAN: the discriminator also classifies the real images
                loss_d = loss_d + config.aux * F.cross_entropy(d.classify(real), real_cond)
            if family.r1 and i % R1_EVERY == 0:  # lazy R1 (StyleGAN2): every R1_EVERY steps, weighted by it
                loss_d = loss_d + family.r1 * R1_EVERY * r1_penalty(d_run, real, real_cond)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            d_gen = disc(d_run, fake, fake_cond)
            loss_g = family.adv_weight * F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            if config.aux:  # ... and the generator's images must be classified as their labels
                loss_g = loss_g + config.aux * F.cross_entropy(d.classify(fake), fake_cond)
            if family.pixel_weight:
                loss_g = loss_g + family.pixel_weight * F.l1_loss(fake, real)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if ema is not None:
                ema.update(g)

            vals = torch.stack([loss_d.detach(), loss_g.detach(), torch.sigmoid(d_real).mean().detach(),
                                torch.sigmoid(d_fake).mean().detach()])
            if ddp is not None:
                import torch.distributed as dist
                dist.all_reduce(vals)
                vals = vals / ddp.world
            vals = tuple(float(v) for v in vals.cpu())
            sums += vals
            progress.step(vals[0], vals[1])
        seconds = time.perf_counter() - t0
        n_img = steps * config.batch_size  # images of the whole step, over every process
        row = {"epoch": epoch, **{k: round(float(v / steps), 5) for k, v in
                                  zip(("d_loss", "g_loss", "d_real", "d_fake"), sums)},
               "images": n_img, "seconds": round(seconds, 2), "images_per_s": round(n_img / seconds, 1)}
        rows.append(row)

        if not all(bool(torch.isfinite(p).all()) for p in list(g.parameters()) + list(d.parameters())):
            raise GanqError(f"training diverged in epoch {epoch} (weights are NaN or infinite; losses D "
                            f"{row['d_loss']}, G {row['g_loss']}); nothing saved for it: the last checkpoint is epoch "
                            f"{epoch - 1} (try a smaller --lr)")
        if not main:
            progress.epoch(row)
            continue
        save_grid(g, [t.to(dev) for t in fixed], out / "samples" / f"epoch-{epoch:03d}.png")
        rng = {"torch": torch.get_rng_state()}
        if dev.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        ckpt = {"spec": spec.to_dict(), "config": asdict(config),
                "generator": {k: v.cpu() for k, v in g.state_dict().items()},
                "discriminator": {k: v.cpu() for k, v in d.state_dict().items()},
                "optimizers": {"g": opt_g.state_dict(), "d": opt_d.state_dict()}, "epoch": epoch, "rng": rng}
        if ema is not None:
            ckpt["generator_ema"] = ema.state_dict(g)
            ckpt["ema_decay"] = config.ema
        checkpoint.save(out / "checkpoint.pt", ckpt)
        if keep_every and epoch % keep_every == 0:
            checkpoint.save(out / "checkpoints" / f"epoch-{epoch:03d}.pt", ckpt)
        _write_losses(out / "losses.csv", rows)
        progress.epoch(row)
    return row
