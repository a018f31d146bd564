"""Refactors keep ganq's files: every method x format on two zoo generators gives the bytes recorded in
tests/golden/digests.json (written by tests/golden/cases.py before the shape change of issue 21)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from cases import cases, digest, is_calibrated, isa, overrides  # noqa: E402

DIGESTS = json.loads((Path(__file__).parent / "golden" / "digests.json").read_text())
# the calibrated cases' bytes on this CPU (or instruction set) where they differ from digests.json's (cases.py says why)
ISA = isa()
OVERRIDES = overrides()
HERE = {**DIGESTS, **(json.loads(OVERRIDES.read_text()) if OVERRIDES else {})}


def test_every_case_has_a_recorded_digest():
    ids = [c[0] for c in cases()]
    assert sorted(ids) == sorted(DIGESTS)
    assert len(ids) == 2 * 3 * 16


@pytest.mark.parametrize("model", ["mnist-fc4", "fashion-mnist-cnn3"])
def test_files_are_byte_identical_to_the_recorded_ones(model):
    """Every case on AVX2 and AVX-512 machines; elsewhere the round-to-nearest ones (whose bytes no float kernel
    decides), the calibrated ones being recorded for those two instruction sets only."""
    known = ISA == "avx2" or OVERRIDES is not None
    todo = [(cid, m, kw) for cid, m, kw in cases() if m == model and (known or not is_calibrated(cid))]
    wrong = [cid for cid, m, kw in todo if digest(m, kw) != HERE[cid]]
    assert not wrong, f"{len(wrong)} files changed ({ISA}): {wrong[:8]}"
    if not known:
        pytest.skip(f"the calibrated cases have no digests recorded for this CPU ({ISA}); the others matched")


def test_a_sweep_written_before_the_shape_change_resumes_with_zero_recomputed_cells(tmp_path):
    """tests/golden/sweep holds the cache of `ganq sweep` made before issue 21 (fp32 + minmax/gptq at 4 bits + mixed
    rows, 2 seeds): a rerun with the same options reads every cell and quantizes nothing (models/ stays empty)."""
    import hashlib
    import shutil
    import subprocess

    out = tmp_path / "sweep"
    shutil.copytree(Path(__file__).parent / "golden" / "sweep", out)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "cache").glob("*.npz")}
    assert len(before) == 10  # 2 seeds x (fp32, minmax 4, gptq 4, 2 mixed)
    r = subprocess.run([sys.executable, "-m", "ganq", "sweep", "zoo:fashion-mnist-cnn3", "--bits", "32,4",
                        "--methods", "minmax,gptq", "--calibration", "64", "--repeats", "2", "--n", "200",
                        "--no-speed", "--mixed", "fid=3", "--mixed-choices", "4,8", "--proxy-n", "100", "--out",
                        str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "cache").glob("*.npz")}
    assert after == before
    assert not list((out / "models").glob("*.onnx")), "a cell was recomputed: a model was quantized"
    assert len(json.loads(r.stdout)["rows"]) == 5
