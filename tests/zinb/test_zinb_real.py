from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from scgexp.zinb import ZINBAutoencoder

pytestmark = pytest.mark.shared_data


def test_cellbench_latent_separates_cell_lines(shared_data):
    path = shared_data / "scrna" / "cellbench_5celllines_celseq2_3plates.h5ad"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    adata = ad.read_h5ad(path)
    adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    totals = np.asarray(adata.X.sum(0)).ravel()
    adata = adata[:, np.argsort(-totals)[:1000]].copy()  # keep the test fast
    ZINBAutoencoder.setup_anndata(adata, batch_key="batch")
    model = ZINBAutoencoder(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=40, enable_progress_bar=False)
    latent = model.get_latent_representation()
    labels = adata.obs["cell_line"].astype(str).to_numpy()
    clusters = KMeans(n_clusters=5, n_init=10, random_state=0).fit_predict(latent)
    ari = adjusted_rand_score(labels, clusters)
    assert ari > 0.5, ari
    # Denoised values are finite and keep the scale of each cell.
    denoised = model.get_normalized_expression(return_numpy=True)
    assert np.isfinite(denoised).all()
    ratio = denoised.sum(1) / np.asarray(adata.X.sum(1)).ravel()
    assert 0.5 < np.median(ratio) < 2.0
