"""``scgexp demo`` end to end (short training): the report, its figures and its sentences."""

from __future__ import annotations

import re

import pytest

from scgexp.cli._demo import _compare, run_demo


def test_compare_says_which_is_better():
    assert _compare("A", 0.990, "B", 0.986, lower_is_better=True).startswith("A is on par")
    assert _compare("A", 0.90, "B", 0.95, lower_is_better=True).startswith("A is better")
    assert _compare("A", 0.60, "B", 0.70).startswith("A is worse")


@pytest.mark.slow
def test_demo_writes_a_report_whose_figures_exist(tmp_path):
    report = run_demo(tmp_path, epochs=2).read_text()
    for section in ("## DGEX", "## ZINBAutoencoder", "## SAILER", "## MultiVAE"):
        assert section in report
    assert "Reproduce: `scgexp demo --out DIR --epochs 2`" in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) == 8
    for figure in figures:
        assert (tmp_path / figure).stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.md", *figures])
