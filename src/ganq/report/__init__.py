"""The sweep: bit widths x generators -> results.json/.csv, the study's figures, report.md and index.html.
Torch-free."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ganq.report.figures import write_figures
from ganq.report.pages import write_pages
from ganq.report.sweep import DEFAULT_BITS, ModelRef, SweepSettings, parse_bits, parse_models, run_sweep, write_tables


def sweep(models: list[str], settings: SweepSettings, out: str | Path, dataset: str | None = None,
          features: str | None = None, data_root=None, progress=None) -> dict:
    """Run (or resume from the cache) a sweep and write every file of the report into `out`."""
    out = Path(out)
    refs = parse_models(models, dataset)
    res = run_sweep(refs, settings, out, features, data_root, progress)
    figures = write_figures(out, res["rows"], res["samples"], res["reals"])
    write_tables(out, res["rows"], settings, refs)
    write_pages(out, res["rows"], asdict(settings), figures)
    return {"rows": res["rows"], "out": str(out), "index": str(out / "index.html"), "figures": figures}


__all__ = ["sweep", "SweepSettings", "DEFAULT_BITS", "parse_bits", "ModelRef"]
