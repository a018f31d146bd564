"""Checkpoints: self-describing dicts of tensors and plain values, written atomically, read with weights_only."""

from __future__ import annotations

from pathlib import Path

import torch

from ganq._io import atomic_path
from ganq.errors import GanqError
from ganq.spec import GeneratorSpec

KEYS = ("spec", "config", "generator", "discriminator", "optimizers", "epoch", "rng")


def save(path: str | Path, state: dict) -> None:
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except (OSError, RuntimeError) as e:  # a full disk: torch's zip writer says "unexpected pos ..."
            import shutil

            free = shutil.disk_usage(Path(tmp).parent).free
            raise GanqError(f"{path}: cannot write the checkpoint ({str(e).strip().splitlines()[0][:120]}; "
                            f"{free:,} bytes free there)") from None


def load(path: str | Path) -> dict:
    """Read a checkpoint safely (weights_only=True); a corrupt or foreign file is a GanqError."""
    path = Path(path)
    if not path.is_file():
        raise GanqError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on foreign bytes (struct.error, UnpicklingError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GanqError(f"{path}: not a readable ganq checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise GanqError(f"{path}: not a ganq checkpoint (expected keys {', '.join(KEYS)})")
    _check_types(path, state)
    GeneratorSpec.from_dict(state["spec"])
    return state


def _tensors(x) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in x.items())


def _check_types(path: Path, state: dict) -> None:
    """Every field of a checkpoint has the type the trainer and exporter read (weights_only already kept code out)."""
    problems = []
    if not isinstance(state["spec"], dict):
        problems.append("spec is not an object")
    if not isinstance(state["config"], dict):
        problems.append("config is not an object")
    for k in ("generator", "discriminator"):
        if not _tensors(state[k]):
            problems.append(f"{k} is not a dict of tensors")
    if "generator_ema" in state and state["generator_ema"] is not None and not _tensors(state["generator_ema"]):
        problems.append("generator_ema is not a dict of tensors")
    opts = state["optimizers"]
    if not isinstance(opts, dict) or not all(isinstance(opts.get(k), dict) and isinstance(opts[k].get("state"), dict)
                                             and isinstance(opts[k].get("param_groups"), list) for k in ("g", "d")):
        problems.append("optimizers is not {g, d} optimizer states")
    e = state["epoch"]
    if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e <= 10 ** 6:
        problems.append(f"epoch is {e!r}, not an integer in 0..1000000")
    rng = state["rng"]
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor) or rng["torch"].dtype != torch.uint8:
        problems.append("rng has no torch generator state")
    if problems:
        raise GanqError(f"{path}: not a valid ganq checkpoint ({'; '.join(problems)})")


def resolve(path: str | Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    if path.is_dir():
        ckpt = path / "checkpoint.pt"
        if not ckpt.is_file():
            raise GanqError(f"{path}: run folder has no checkpoint.pt (has a training epoch finished?)")
        return ckpt
    return path


def load_generator(path: str | Path, ema: bool = False):
    """(generator in eval mode, spec, checkpoint) from a run folder or checkpoint file; ema: the generator's
    weight EMA (train --ema) instead of its raw weights."""
    from ganq.train.archs import build

    state = load(resolve(path))
    spec = GeneratorSpec.from_dict(state["spec"])
    g, _ = build(spec, dropout=0.0)
    weights = state["generator"]
    if ema:
        if not isinstance(state.get("generator_ema"), dict):
            raise GanqError(f"{path}: the checkpoint has no generator EMA (train with --ema DECAY to keep one)")
        weights = state["generator_ema"]
    try:
        g.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise GanqError(f"{path}: generator weights do not fit architecture {spec.arch} ({str(e)[:160]})") from None
    g.eval()
    return g, spec, state
