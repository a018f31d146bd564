"""The golden cases: quantize options on two zoo generators whose output files must stay byte-identical across
refactors (tests/test_golden.py). `python tests/golden/cases.py` rewrites digests.json from the current code: run it
only when a change of the files is intended, and say so in the commit.

The calibrated cases (gptq, adaround: a Hessian, Cholesky factors and layer inputs from onnxruntime) round on float32
sums whose order the CPU's vector width decides (onnxruntime's MLAS and OpenBLAS pick AVX-512 kernels where the CPU
has them), so their bytes are those of one instruction set: digests.json was recorded with AVX2, and
digests.<isa>.json holds the cases that differ under another, digests.<cpu_id>.json those of one CPU model where
it differs from its instruction set's (`python tests/golden/cases.py --isa`, run with the code of the commit that
recorded digests.json, writes the instruction set's; rename it to the CPU's where that is what differs)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

MODELS = ("mnist-fc4", "fashion-mnist-cnn3")
FORMATS = ("fake", "int", "packed")
# calibrated methods on a small calibration set and short schedules, so the whole grid runs in about a minute
CALIBRATED = {"gptq": (), "adaround": (("steps", "20"),)}
RTN = ("minmax", "symmetric", "mse", "aciq", "log2", "tanh", "em", "kmeans", "ocs")


def cases():
    """(case id, model name, QuantizeOptions kwargs)."""
    out = []
    for model in MODELS:
        for fmt in FORMATS:
            for method in RTN + tuple(CALIBRATED):
                bits = 3 if method not in ("log2",) else 4
                kw = {"bits": bits, "method": method, "format": fmt, "granularity": "channel",
                      "method_opts": CALIBRATED.get(method, ()), "calibration": 64}
                out.append((f"{model}/{fmt}/{method}", model, kw))
            extra = {
                "minmax-tensor-4": {"bits": 4, "granularity": "tensor"},
                "minmax-foldbn-bias": {"bits": 4, "fold_bn": True, "include_bias": True, "granularity": "channel"},
                "mse-mixed": {"bits": 4, "method": "mse", "tensor_bits": (("first", 2), ("last", 8)),
                              "granularity": "channel"},
                "minmax-recalibrate": {"bits": 3, "recalibrate_bn": True, "granularity": "channel",
                                       "calibration": 64},
                "gptq-recalibrate": {"bits": 3, "method": "gptq", "recalibrate_bn": True, "granularity": "channel",
                                     "calibration": 64},
            }
            for name, kw in extra.items():
                out.append((f"{model}/{fmt}/{name}", model, dict(kw, format=fmt)))
    return out


def digest(model: str, kw: dict) -> str:
    from ganq.quantize import QuantizeOptions, quantize_model
    from ganq.onnx_io import load_model
    from ganq.zoo import path as zoo_path

    m, _ = quantize_model(load_model(zoo_path(model)), QuantizeOptions(**kw))
    strip_added_fields(m)
    return hashlib.sha256(m.SerializeToString()).hexdigest()


# ganq.quant fields added after the digests were recorded (issue 22: the weight share): left out of the digest, so
# that the graph, every tensor and every field that existed then stay byte-identical
ADDED_FIELDS = ("weight_params", "weight_share", "weights_left_float")


ADDED_TENSOR_FIELDS = ("entropy_bits",)  # per tensor row (issue 24)


def strip_added_fields(m) -> None:
    from ganq.onnx_io import META_QUANT, read_quant, write_metadata

    rec = read_quant(m)
    if rec is not None:
        rec = {k: v for k, v in rec.items() if k not in ADDED_FIELDS}
        rec["tensors"] = [{k: v for k, v in r.items() if k not in ADDED_TENSOR_FIELDS} for r in rec["tensors"]]
        write_metadata(m, META_QUANT, json.dumps(rec, sort_keys=True))


CALIBRATED_CASES = tuple(CALIBRATED) + ("gptq-recalibrate",)


def isa() -> str:
    """The vector instruction set onnxruntime and OpenBLAS use here: avx512 (F, BW, DQ, VL: what MLAS asks), avx2,
    or other."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "other"
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "other"


def cpu_id() -> str:
    """isa() with the CPU's vendor, family and model (avx2-AuthenticAMD-23-1): the same instruction set does not
    give the same calibrated bytes on every CPU (an AMD Zen AVX2 CPU differs from the one digests.json was recorded
    on in the 18 calibrated cases, in no other)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:30] if ":" in line)
    except OSError:
        return isa()
    info = {k.strip(): v.strip() for k, v in info.items()}
    return "-".join([isa()] + [info.get(k, "?").replace(" ", "") for k in ("vendor_id", "cpu family", "model")])


def overrides() -> Path | None:
    """The digest file for this CPU (digests.<cpu_id>.json), else for its instruction set (digests.<isa>.json)."""
    for name in (cpu_id(), isa()):
        p = Path(__file__).with_name(f"digests.{name}.json")
        if p.is_file():
            return p
    return None


def is_calibrated(cid: str) -> bool:
    return cid.rsplit("/", 1)[1] in CALIBRATED_CASES


if __name__ == "__main__" and sys.argv[1:] == ["--isa"]:
    base = json.loads(Path(__file__).with_name("digests.json").read_text())
    here = {cid: digest(model, kw) for cid, model, kw in cases() if is_calibrated(cid)}
    diff = {cid: d for cid, d in here.items() if d != base[cid]}
    out = Path(__file__).with_name(f"digests.{isa()}.json")
    out.write_text(json.dumps(diff, indent=1, sort_keys=True) + "\n")
    print(f"{len(diff)} of {len(here)} calibrated cases differ under {isa()}: {out}", file=sys.stderr)
elif __name__ == "__main__":
    import time

    table = {}
    for cid, model, kw in cases():
        t = time.perf_counter()
        table[cid] = digest(model, kw)
        print(f"{cid}: {time.perf_counter() - t:.2f} s", file=sys.stderr)
    Path(__file__).with_name("digests.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
