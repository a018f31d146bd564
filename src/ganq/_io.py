"""Atomic file writes: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path in target's folder; rename it to target only if the block succeeds."""
    from ganq.errors import GanqError

    target = Path(target)
    if target.is_dir():
        raise GanqError(f"{target}: is a folder, not a file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise GanqError(f"{target}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; the result should look like any written file
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> int:
    """Remove temp files of ours for `target` (.NAME.PID.XXXX.tmp) whose writing process is gone (killed mid-write);
    returns how many."""
    n = 0
    for p in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        parts = p.name[len(target.name) + 2:].split(".")
        if len(parts) >= 3 and parts[0].isdigit() and not _alive(int(parts[0])):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def glob_escape(name: str) -> str:
    import glob
    return glob.escape(name)


def write_bytes_atomic(target, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target, text: str) -> None:
    write_bytes_atomic(target, text.encode())


def check_out(out, force: bool, inputs=()) -> None:
    """ganq's overwrite policy for a command's output file: never an input; an existing file only with --force."""
    from ganq.errors import GanqError

    out = Path(out)
    for i in inputs:
        with contextlib.suppress(OSError):
            if Path(i).exists() and out.exists() and os.path.samefile(out, i):
                raise GanqError(f"{out}: is an input of this command; write the output elsewhere")
    if out.is_dir():
        raise GanqError(f"{out}: is a folder, not a file to write")
    if out.exists() and not force:
        raise GanqError(f"{out}: exists; add --force to replace it")


def json_default(o):
    """json.dumps(default=...) for numpy scalars."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(type(o))
