"""Image folders (class subfolders of images), as a directory or a .zip, brought to a fixed size."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ganq.errors import GanqError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_MEMBER = 64 * 2 ** 20   # bytes of one image file (a zip member as inflated): more is not a data-set image
MAX_PIXELS = 16 * 2 ** 20   # pixels of one decoded image (PIL's decompression-bomb guard, tightened)


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """A zip member, refused when its header says it inflates beyond MAX_MEMBER, and cut off while inflating if it
    lies (a zip bomb)."""
    info = zf.getinfo(name)
    if info.file_size > MAX_MEMBER:
        raise GanqError(f"{name} inflates to {info.file_size:,} bytes (more than {MAX_MEMBER:,}); not an image")
    with zf.open(info) as fh:
        data = fh.read(MAX_MEMBER + 1)
    if len(data) > MAX_MEMBER:
        raise GanqError(f"{name} inflates beyond {MAX_MEMBER:,} bytes although its header says "
                        f"{info.file_size:,}; refused")
    return data


def _entries(root: Path, split: str | None) -> tuple[list[tuple[str, str]], callable]:
    """(class, member) pairs and an opener for the members, for a directory or a zip."""
    if root.is_dir():
        base = root / split if split and (root / split).is_dir() else root
        items = [(p.parent.name, str(p)) for p in sorted(base.glob("*/*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        def read_file(m):
            if Path(m).stat().st_size > MAX_MEMBER:
                raise GanqError(f"{m} is {Path(m).stat().st_size:,} bytes (more than {MAX_MEMBER:,}); not an image")
            return Path(m).read_bytes()
        return items, read_file
    try:
        zf = zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise GanqError(f"{root}: not an image folder or zip ({type(e).__name__}: {str(e)[:100]})") from None
    names = [PurePosixPath(n) for n in zf.namelist() if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES]
    # A zip may hold <split>/<class>/<img> (with an optional top folder) or <class>/<img>.
    with_split = [n for n in names if split and len(n.parts) >= 3 and n.parts[-3] == split]
    chosen = with_split if with_split else [n for n in names if len(n.parts) >= 2]
    items = sorted((n.parts[-2], str(n)) for n in chosen)
    return items, lambda m: _read_member(zf, m)


def read_image_folder(root: str | Path, size: int | None, channels: int, split: str | None = None,
                      limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of class subfolders -> (uint8 [N, size, size, channels], int64 labels [N], class names).

    With `split` ("train"/"test") and a matching subfolder, only that split is read. `limit` keeps the first
    `limit` images of a fixed class-balanced order (round-robin over classes)."""
    root = Path(root)
    if not root.exists():
        raise GanqError(f"{root}: no such image folder")
    items, opener = _entries(root, split)
    if not items:
        raise GanqError(f"{root}: no images found in class subfolders (expected <class>/<image>.png|jpg)")
    classes = sorted({c for c, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    if limit is not None and limit < len(items):
        per_class = [[m for m in items if m[0] == c] for c in classes]
        rr = [m for group in zip(*per_class) for m in group]  # balanced as far as the smallest class allows
        taken = set(rr)
        rest = [m for m in items if m not in taken]
        items = (rr + rest)[:limit]
    mode = "L" if channels == 1 else "RGB"
    images = []
    for cls, member in items:
        try:
            img = Image.open(io.BytesIO(opener(member)))
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise GanqError(f"{member} is {img.size[0]}x{img.size[1]} pixels (more than {MAX_PIXELS:,}); "
                                "not a data-set image")
            img = img.convert(mode)
        except GanqError as e:
            raise GanqError(f"{root}: {e}") from None
        except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError, zipfile.BadZipFile,
                Image.DecompressionBombError) as e:  # what PIL and zipfile raise on corrupt files
            raise GanqError(f"{root}: {member} is not a readable image ({type(e).__name__}: {str(e)[:100]})") from None
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        images.append(np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise GanqError(f"{root}: images differ in size {sorted(shapes)[:3]}; give --image-size")
    labels = np.asarray([index[c] for c, _ in items], dtype=np.int64)
    return np.stack(images), labels, classes
