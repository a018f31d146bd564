"""Models shipped with ganq, found by name (zoo:NAME) here and when installed with pip (package data)."""

from __future__ import annotations

from pathlib import Path

from ganq.errors import GanqError

ZOO = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in ZOO.glob("*.onnx"))


def path(name: str) -> Path:
    p = ZOO / f"{name}.onnx"
    if name not in names() or not p.is_file():  # a name, never a path (zoo:../../x)
        have = ", ".join(names()) or "none"
        raise GanqError(f"zoo:{name} is not shipped with this ganq; the zoo has: {have}")
    return p
