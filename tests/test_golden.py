"""Refactors keep ganq's files: every method x format on two zoo generators gives the bytes recorded in
tests/golden/digests.json (written by tests/golden/cases.py before the shape change of issue 21)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from cases import cases, digest  # noqa: E402

DIGESTS = json.loads((Path(__file__).parent / "golden" / "digests.json").read_text())


def test_every_case_has_a_recorded_digest():
    ids = [c[0] for c in cases()]
    assert sorted(ids) == sorted(DIGESTS)
    assert len(ids) == 2 * 3 * 16


@pytest.mark.parametrize("model", ["mnist-fc4", "fashion-mnist-cnn3"])
def test_files_are_byte_identical_to_the_recorded_ones(model):
    wrong = [cid for cid, m, kw in cases() if m == model and digest(m, kw) != DIGESTS[cid]]
    assert not wrong, f"{len(wrong)} files changed: {wrong[:8]}"
