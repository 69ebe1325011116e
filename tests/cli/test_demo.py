"""``scgexp demo`` end to end (short training): the report, its figures and its sentences."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import sparse

from scgexp.cli._demo import _compare, _rna_prediction_r, run_demo


def test_compare_says_which_is_better():
    assert _compare("A", 0.990, "B", 0.986, lower_is_better=True).startswith("A is on par")
    assert _compare("A", 0.90, "B", 0.95, lower_is_better=True).startswith("A is better")
    assert _compare("A", 0.60, "B", 0.70).startswith("A is worse")


def test_rna_prediction_r_reads_predictions_per_10k_counts():
    counts = np.random.default_rng(0).poisson(3.0, size=(50, 8)).astype(np.float32)
    per_10k = counts / counts.sum(1, keepdims=True) * 1e4  # what MultiVAE.predict returns
    np.testing.assert_allclose(
        _rna_prediction_r(per_10k, sparse.csr_matrix(counts)), 1.0, atol=1e-6
    )


@pytest.mark.slow
def test_demo_writes_a_report_whose_figures_exist(tmp_path):
    report = run_demo(tmp_path, epochs=2, accelerator="cpu").read_text()
    for section in ("## DGEX", "## ZINBAutoencoder", "## SAILER", "## MultiVAE"):
        assert section in report
    command = "scgexp demo --out DIR --epochs 2 --accelerator cpu"
    assert f"Reproduce: `{command}` (seed 0; CPU;" in report
    # Two epochs end at the limit, not by early stopping, and the report says so.
    assert report.count("2 epochs (the epoch limit;") == 3
    assert "early stopping;" not in report
    assert "The joint latent's ARI is" in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) == 8
    for figure in figures:
        assert (tmp_path / figure).stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.md", *figures])
