"""The sweep: bit widths x generators -> results.json/.csv, the study's figures, report.md and index.html.
Torch-free."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ganq.report.figures import write_figures
from ganq.report.pages import write_pages
from ganq.report.sweep import DEFAULT_BITS, Execution, ModelRef, SweepSettings, parse_bits, parse_models, run_sweep, write_tables


def sweep(models: list[str], settings: SweepSettings, out: str | Path, dataset: str | None = None,
          features: str | None = None, data_root=None, progress=None, execution: Execution = Execution()) -> dict:
    """Run (or resume from the cache) a sweep and write every file of the report into `out`. execution: local
    processes or a Dask scheduler (tcp://HOST:PORT). progress(done, total, label)."""
    out = Path(out)
    refs = parse_models(models, dataset)
    res = run_sweep(refs, settings, out, features, data_root, progress, execution)
    figures = list(FIGURES)
    if not _unchanged(out, res["rows"], settings, refs, res["failed"]):  # a rerun from the cache redraws nothing
        write_figures(out, res["rows"], res["samples"], res["reals"])
        write_pages(out, res["rows"], asdict(settings), figures, {r.name: r.arch for r in refs}, res["failed"])
        write_tables(out, res["rows"], settings, refs, res["failed"])
    return {"rows": res["rows"], "failed": res["failed"], "out": str(out), "index": str(out / "index.html"), "figures": figures}


FIGURES = ("fig-samples.png", "fig-inception.png", "fig-precision-recall.png", "fig-realism.png",
           "fig-quality-vs-size.png")


def _unchanged(out: Path, rows, settings, refs, failed=()) -> bool:
    """True when results.json already holds exactly these rows and settings and every output file exists."""
    import json

    from ganq.report.sweep import _json_default
    files = [out / f for f in FIGURES + ("report.md", "index.html", "results.csv", "results.json")]
    if not all(f.exists() for f in files):
        return False
    try:
        old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return False
    new = json.loads(json.dumps({"settings": asdict(settings), "models": [asdict(r) for r in refs], "rows": rows,
                                 "failed": list(failed)}, default=_json_default))
    return old == new


__all__ = ["sweep", "Execution", "SweepSettings", "DEFAULT_BITS", "parse_bits", "ModelRef"]
