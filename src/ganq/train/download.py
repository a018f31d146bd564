"""Data set downloads through torchvision's downloaders (the torch side): handed to ganq.data.load by train and
train-classifier when --download is given."""

from __future__ import annotations

from pathlib import Path

from ganq.data import Entry, cache_dir
from ganq.errors import GanqError


def fetch(entry: Entry) -> Path:
    """Download data set `entry` into the user cache; the folder ganq then reads it from."""
    if entry.torchvision is None:
        raise GanqError(f"{entry.name} cannot be downloaded: {entry.how_to_get}")
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise GanqError("--download needs torchvision: pip install 'ganq[train]'") from None
    root = cache_dir() / "datasets"
    try:
        for train in (True, False):
            getattr(tvd, entry.torchvision)(root=str(root), train=train, download=True)
    except Exception as e:  # torchvision raises plain RuntimeError/URLError when offline
        raise GanqError(f"download of {entry.name} failed ({type(e).__name__}: {e}); {entry.how_to_get}") from None
    found = entry.locate(root)
    if found is None:
        raise GanqError(f"download of {entry.name} finished but its files are not in {root}")
    return found


