"""The front page and the study page hold the tables benchmarks/study_tables.py makes from docs/study/results.json,
not hand-copied numbers; the README stays a front page."""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_marked_tables_are_the_scripts_output():
    import study_tables

    made = study_tables.tables(str(REPO / "docs" / "study" / "results.json"))
    found = 0
    for page in (REPO / "README.md", REPO / "docs" / "study.md"):
        for name, body in re.findall(r"<!-- study_tables:(\w+) -->\n(.*?)\n<!-- /study_tables:\1 -->",
                                     page.read_text(), flags=re.S):
            assert body == made[name], f"{page.name}: table {name} differs; run benchmarks/study_tables.py --write"
            found += 1
    assert found == 4


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\(((?:docs|zoo)/[^)#]+)\)", text):
        assert (REPO / link).exists(), link
