"""``scgexp demo`` end to end (short training): the report, its figures and its sentences."""

from __future__ import annotations

import re
from types import SimpleNamespace

import anndata
import numpy as np
import pytest
from scipy import sparse

from scgexp.cli._demo import _compare, _rna_prediction_r, _stopped, run_demo
from scgexp.train import RestoreBestWeights


def test_compare_says_which_is_better():
    assert _compare("A", 0.990, "B", 0.986, lower_is_better=True).startswith("A is on par")
    assert _compare("A", 0.90, "B", 0.95, lower_is_better=True).startswith("A is better")
    assert _compare("A", 0.60, "B", 0.70).startswith("A is worse")
    assert _compare("A", 0.518, "B", 0.496, tolerance=0.05).startswith("A is on par")


@pytest.mark.parametrize(
    ("n_epochs", "best_epoch", "said"),
    [
        (10, 9, "10 epochs (the epoch limit; mae_validation still improving at the limit"),
        (10, 4, "10 epochs (the epoch limit; the weights of epoch 5, the best by mae_valid"),
        (6, 2, "6 epochs (early stopping; the weights of epoch 3, the best by mae_validation"),
        (6, None, "6 epochs (early stopping; the last epoch's weights kept)"),
    ],
)
def test_stopped_says_which_weights_are_kept(n_epochs, best_epoch, said):
    restore = RestoreBestWeights("mae_validation")
    restore.best_epoch = best_epoch
    trainer = SimpleNamespace(max_epochs=10, callbacks=[restore])
    model = SimpleNamespace(history={"mae_validation": [0.0] * n_epochs}, trainer=trainer)
    assert _stopped(model, "mae_validation").startswith(said)


def test_rna_prediction_r_reads_predictions_per_10k_counts():
    counts = np.random.default_rng(0).poisson(3.0, size=(50, 8)).astype(np.float32)
    per_10k = counts / counts.sum(1, keepdims=True) * 1e4  # what MultiVAE.predict returns
    np.testing.assert_allclose(
        _rna_prediction_r(per_10k, sparse.csr_matrix(counts)), 1.0, atol=1e-6
    )


@pytest.mark.slow
def test_demo_writes_a_report_whose_figures_exist(tmp_path, monkeypatch):
    import scgexp
    from scgexp.cli import _demo

    umaps, scored, simulated = {}, [], []  # what each figure draws and each r is scored on

    def umaps_spy(adata, rep, colors, path, title):
        umaps[path.name] = (rep, adata.obsm[rep].copy())
        return draw_umaps(adata, rep, colors, path, title)

    def r_spy(predicted, counts):
        scored.append(counts.copy())
        return rna_prediction_r(predicted, counts)

    def simulate_spy(**kwargs):
        simulated.append(simulate_multiome(**kwargs))
        return simulated[-1]

    draw_umaps, rna_prediction_r = _demo._umaps, _demo._rna_prediction_r
    simulate_multiome = scgexp.data.simulate_multiome
    monkeypatch.setattr(_demo, "_umaps", umaps_spy)
    monkeypatch.setattr(_demo, "_rna_prediction_r", r_spy)
    monkeypatch.setattr(scgexp.data, "simulate_multiome", simulate_spy)
    report = run_demo(tmp_path, epochs=2, accelerator="cpu").read_text()
    assert umaps["sailer_umap.png"][0] == "X_sailer"
    assert umaps["sailer_cvae_umap.png"][0] == "X_cvae"
    assert not np.allclose(umaps["sailer_umap.png"][1], umaps["sailer_cvae_umap.png"][1])
    (mdata,) = simulated
    paired = (mdata.obs["has_rna"] & mdata.obs["has_atac"]).to_numpy()
    assert len(scored) == 2  # the model's predictions and the oracle's, on the same cells
    for counts in scored:
        assert (counts != mdata["rna"].X[paired]).nnz == 0
    for section in ("## DGEX", "## ZINBAutoencoder", "## SAILER", "## MultiVAE"):
        assert section in report
    command = "scgexp demo --out DIR --epochs 2 --accelerator cpu"
    assert f"Reproduce: `{command}` (seed 0; CPU;" in report
    # Two epochs end at the limit, not by early stopping, and the report says so.
    assert report.count("2 epochs (the epoch limit;") == 4
    assert "early stopping;" not in report
    assert "SAILER's latent holds " in report
    assert "## SAILER: depth and batch in an scATAC-seq latent space" in report
    assert "The joint latent's ARI is" in report
    assert "| RNA-only cells (" in report
    assert "| ATAC-only cells (" in report
    assert "An\noracle that knows each cell's type" in report
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) == 8
    for figure in figures:
        assert (tmp_path / figure).stat().st_size > 10_000
    written = ["report.md", "pbmc68k_zinb.h5ad", *figures]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)
    pbmc = anndata.read_h5ad(tmp_path / "pbmc68k_zinb.h5ad")
    assert {"X_zinb", "X_umap"} <= set(pbmc.obsm)
    assert "zinb_denoised" in pbmc.layers
    # The clusterings scored (best NMI), not the last resolution tried, and named graphs.
    from sklearn.metrics import normalized_mutual_info_score, silhouette_score

    for key in ("zinb", "pca"):
        assert f"neighbors_{key}_connectivities" in pbmc.obsp
        nmi = normalized_mutual_info_score(pbmc.obs["cell_type"], pbmc.obs[f"leiden_{key}"])
        table = "ZINBAutoencoder latent" if key == "zinb" else "PCA of log-normalised"
        row = re.search(rf"\| {table} \| ([0-9.]+) \| [0-9.]+ \| (-?[0-9.]+) \|", report)
        assert f"{nmi:.3f}" == row.group(1)
        silhouette = silhouette_score(pbmc.obsm[f"X_{key}"], pbmc.obs["cell_type"])
        assert f"{silhouette:.3f}" == row.group(2)
