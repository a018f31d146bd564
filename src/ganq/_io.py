"""Atomic file writes: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, replace: bool = True):
    """Yield a temporary path in target's folder; rename it to target only if the block succeeds. replace=False
    claims the name atomically without replacing (a hard link): of two writers of one new name without --force,
    the second says the file exists instead of silently replacing the first's."""
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
        try:
            yield Path(tmp)
        except OSError as e:  # a full disk while writing: name the file the user asked for, not the temporary one
            import errno
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(e.errno, e.strerror, str(target)) from None
            raise
        if replace:
            os.replace(tmp, target)
        else:
            _claim(Path(tmp), target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _claim(tmp: Path, target: Path) -> None:
    from ganq.errors import GanqError

    try:
        os.link(tmp, target)
    except FileExistsError:
        raise GanqError(f"{target}: exists (written meanwhile by another run); add --force to replace it") from None
    except OSError:  # a file system without hard links: claim the name exclusively, then fill it
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise GanqError(f"{target}: exists (written meanwhile by another run); add --force to replace it"
                            ) from None
        os.replace(tmp, target)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> int:
    """Remove temp files (and folders: the app's) of ours for `target` (.NAME.PID.XXXX.tmp) whose writing process is
    gone (killed mid-write); returns how many."""
    import shutil

    n = 0
    for p in Path(target).parent.glob(f".{glob_escape(Path(target).name)}.*.tmp"):
        parts = p.name[len(Path(target).name) + 2:].split(".")
        if len(parts) >= 3 and parts[0].isdigit() and not _alive(int(parts[0])):
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                n += 1
    return n


def glob_escape(name: str) -> str:
    import glob
    return glob.escape(name)


def write_bytes_atomic(target, data: bytes, replace: bool = True) -> None:
    with atomic_path(target, replace) as tmp:
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
    check_writable_place(out.parent, out)


def check_writable_place(folder, what=None) -> None:
    """Before any work: `folder` (to be made if missing) can hold `what`: no file stands where a folder of its
    path should be, and the nearest existing folder is writable."""
    from ganq.errors import GanqError

    what = Path(what if what is not None else folder)
    p = Path(folder).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise GanqError(f"{what}: cannot be written: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise GanqError(f"{what}: cannot be written: {p} is not writable")


def json_default(o):
    """json.dumps(default=...) for numpy scalars."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(type(o))
