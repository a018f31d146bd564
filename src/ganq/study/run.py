"""The study as one call: run (or resume) a sweep's jobs, then hand the rows to report/ to render."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ganq.report import FIGURES, write_figures, write_pages, write_tables
from ganq.study.executors import Execution, run_sweep
from ganq.study.settings import SweepSettings, parse_models


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


def _unchanged(out: Path, rows, settings, refs, failed=()) -> bool:
    """True when results.json already holds exactly these rows and settings and every output file exists."""
    import json

    from ganq._io import json_default as _json_default
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


