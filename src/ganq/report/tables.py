"""results.json and results.csv of a sweep, and the folder's marker."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

from ganq._io import json_default as _json_default, write_text_atomic

def _csv_columns() -> list[str]:
    """Every metric with its spread over the seeds (`_seed_std`); IS and KID also keep their own within-run std."""
    from ganq.evaluate.catalogue import METRICS

    metrics = [c for m in METRICS for c in (m, f"{m}_seed_std")]
    return (["model", "dataset", "method", "kind", "bits", "format", "granularity", "fold_bn", "recalibrate_bn",
             "repeats"] + metrics + ["inception_score_std", "kid_std", "inception_score_real", "bytes_file",
                                     "bytes_ideal", "bytes_gzip", "bytes_fp32", "images_per_s", "file"])


def write_tables(out: Path, rows: list[dict], settings, refs, failed=()) -> None:
    """results.json (with the mixed rows out of reach under `failed`), results.csv and the folder's marker."""
    write_text_atomic(out / "results.json", json.dumps(
        {"settings": asdict(settings), "models": [asdict(r) for r in refs], "rows": rows, "failed": list(failed)},
        indent=1, default=_json_default) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, _csv_columns(), extrasaction="ignore")
    w.writeheader()
    w.writerows({**r, **{f"{m}_seed_std": v for m, v in (r.get("spread") or {}).items()}} for r in rows)
    write_text_atomic(out / "results.csv", buf.getvalue())
    write_text_atomic(out / "sweep.json", json.dumps({"ganq": "sweep", "settings_key": settings.key()}) + "\n")
