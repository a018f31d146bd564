"""fp32 quality of every generator in the zoo, judged by its data set's zoo classifier (10,000 + 10,000 samples):
the numbers in zoo/README.md. Prints a markdown table and writes JSON.

    GANQ_DATA=../shared/data .venv/bin/python benchmarks/zoo_metrics.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ganq import zoo
from ganq.evaluate import EvalOptions, evaluate
from ganq.runtime import Generator


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", default="benchmarks/results/zoo.json")
    args = ap.parse_args()
    rows = []
    for name in zoo.names():
        if name.endswith("-classifier"):
            continue
        spec = Generator(f"zoo:{name}").spec
        t0 = time.perf_counter()
        r = evaluate(f"zoo:{name}", spec.dataset, None, EvalOptions(n=args.n))
        r["name"], r["wall_s"] = name, round(time.perf_counter() - t0, 1)
        rows.append(r)
        print(f"{name}: done in {r['wall_s']} s", flush=True)
    print("\n| generator | data set | IS (real) | FID | KID | precision | recall | realism P | density | coverage "
          "| class histogram |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['dataset']} | {r['inception_score']:.2f} ± {r['inception_score_std']:.2f} ({r['inception_score_real']:.2f}) "
              f"| {r['fid']:.2f} | {r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} "
              f"| {r['realism_precision']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} "
              f"| {' '.join(map(str, r['class_histogram']))} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
