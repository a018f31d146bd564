"""Torch-free reader of IDX files (MNIST, Fashion-MNIST), plain or gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ganq.errors import GanqError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array of its declared shape."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise GanqError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise GanqError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GanqError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise GanqError(f"{path}: IDX file has {len(raw)} bytes, its header promises {expected} (truncated or corrupt)")
    try:
        return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
    except ValueError as e:  # e.g. a zero dimension beside dimensions whose product numpy cannot represent
        raise GanqError(f"{path}: IDX header declares shape {list(shape)}, which numpy cannot hold ({e})") from None
