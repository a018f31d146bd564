"""What the torch-side commands check before any work, torch-free (so that a bad option is one line even where
torch is missing or slow to import)."""

from __future__ import annotations

import os

from ganq.errors import GanqError, check_range


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def per_process_batch(batch: int, nproc: int) -> int:
    if nproc < 1:
        raise GanqError(f"--nproc must be at least 1, got {nproc}")
    if batch % nproc:
        raise GanqError(f"--batch-size {batch} does not split over {nproc} processes; use a multiple of {nproc}")
    if batch // nproc < 2:
        raise GanqError(f"--batch-size {batch} over {nproc} processes leaves {batch // nproc} image a process; "
                        "BatchNorm needs at least 2")
    return batch // nproc


def relaunch(nproc: int, batch_size: int, argv: list[str]) -> list[str] | None:
    """`ganq train`'s processes: None to train in this process, else the arguments after `train` to relaunch
    under torchrun with nproc processes."""
    if not 1 <= nproc <= 64:
        raise GanqError(f"--nproc must be in 1..64, got {nproc}")
    torchrun = under_torchrun()
    if torchrun and nproc not in (1, int(os.environ["WORLD_SIZE"])):
        raise GanqError(f"--nproc {nproc} under torchrun with {os.environ['WORLD_SIZE']} processes; drop --nproc")
    if nproc == 1 or torchrun:
        return None
    per_process_batch(batch_size, nproc)
    if "train" not in argv:
        raise GanqError("--nproc relaunches the command line under torchrun; run it from a shell")
    return argv[argv.index("train") + 1:]


def check_export(source, out, n: int, force: bool) -> None:
    from ganq._io import check_out

    check_range("--n", n, 1, 100_000)
    check_out(out, force, [source])


def feature_shape(dataset: str | None, image_shape: str | None) -> tuple[int, int, int]:
    """The image shape of `convert-features`: a data set's, or C,H,W."""
    if (dataset is None) == (image_shape is None):
        raise GanqError("give exactly one of --dataset and --image-shape")
    if dataset is not None:
        from ganq import data
        return data.get_entry(dataset).shape
    try:
        shape = tuple(int(v) for v in image_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise GanqError(f"--image-shape must be C,H,W, got {image_shape!r}")
    return shape
