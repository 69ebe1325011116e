"""ZINBAutoencoder's settings reach what they set (each test fails where one is ignored)."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from scgexp.data import simulate_scrna
from scgexp.zinb import ZINBAutoencoder


@pytest.fixture(scope="module")
def zinb():
    adata = simulate_scrna(n_cells=300, n_genes=60, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=32, n_latent=8)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model


def test_shallow_library_sizes_given_as_size_factors_warn():
    """A median of 200 counts is a library size (shallow data), not a size factor near 1."""
    adata = simulate_scrna(n_cells=100, n_genes=30, seed=0)
    totals = np.asarray(adata.layers["counts"].sum(1)).ravel()
    adata.obs["sf"] = totals / np.median(totals) * 200
    with pytest.warns(UserWarning, match="looks like library sizes in counts"):
        ZINBAutoencoder.setup_anndata(adata, layer="counts", size_factor_key="sf")


def test_zinb_train_settings_reach_training(training_arguments):
    """The default epoch budget, the plateau cut (÷10), lr_patience, train_size, batch_size."""
    counts = np.random.default_rng(0).poisson(3.0, (15_000, 8)).astype(np.float32)
    adata = anndata.AnnData(sparse.csr_matrix(counts))
    ZINBAutoencoder.setup_anndata(adata)
    model = ZINBAutoencoder(adata, n_hidden=8, n_latent=2)
    model.train()
    assert training_arguments["max_epochs"] == 200  # documented: 3e6 / n_cells between 20 and 300
    assert training_arguments["plan_kwargs"]["lr_factor"] == 0.1  # "reduced by 10x"
    model.train(lr_patience=3, train_size=0.8, batch_size=64)
    assert training_arguments["plan_kwargs"]["lr_patience"] == 3
    assert training_arguments["train_size"] == 0.8
    assert training_arguments["batch_size"] == 64


def test_feature_correlation_is_of_denoised_values_at_the_asked_batch(zinb):
    """Correlations of denoised proportions (not depth-scaled counts) at the batch asked for."""
    expected = zinb.get_normalized_expression(transform_batch="batch_1", library_size=1000)
    got = zinb.get_feature_correlation_matrix(
        transform_batch="batch_1", correlation_type="pearson"
    )
    pd.testing.assert_frame_equal(got, expected.corr(method="pearson"), rtol=1e-4)


def test_de_draws_cells_before_decoding_and_filters_outliers_on_request(zinb, monkeypatch):
    """n_samples_overall draws cells before decoding; filter_outlier_cells reads the latent."""
    decode, sizes, latent_calls = zinb.get_normalized_expression, [], []
    encode = zinb.get_latent_representation

    def recorded(*args, indices=None, **kwargs):
        sizes.append(len(indices))
        return decode(*args, indices=indices, **kwargs)

    monkeypatch.setattr(zinb, "get_normalized_expression", recorded)
    monkeypatch.setattr(
        zinb,
        "get_latent_representation",
        lambda *a, **k: latent_calls.append(1) or encode(*a, **k),
    )
    zinb.differential_expression(
        groupby="batch", group1="batch_0", n_samples_overall=40, silent=True
    )
    assert sizes == [40, 40]
    assert latent_calls == []
    zinb.differential_expression(
        groupby="batch", group1="batch_0", filter_outlier_cells=True, silent=True
    )
    assert latent_calls  # the outlier filter reads the latent space


def test_zinb_architecture_arguments_reach_the_module(zinb):
    """n_layers and dropout_rate build the network they name."""
    module = ZINBAutoencoder(zinb.adata, n_layers=2, dropout_rate=0.0).module
    assert len(module.encoder.fc_layers) == 2
    assert len(module.decoder.fc_layers) == 2
    dropouts = [m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(p == 0 for p in dropouts)
    module = ZINBAutoencoder(zinb.adata, dropout_rate=0.3).module
    assert {m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}


def test_encoder_outputs_do_not_depend_on_the_module_mode(zinb):
    """The encoder-only outputs put the module in eval mode themselves (dropout 0.2 and
    batch norm otherwise make them random), e.g. after an interrupted training."""
    zinb.module.eval()
    latent = zinb.get_latent_representation()
    error = zinb.get_reconstruction_error(return_mean=False)["reconstruction_loss"]
    zinb.module.train()
    np.testing.assert_allclose(zinb.get_latent_representation(), latent, rtol=1e-5)
    zinb.module.train()
    torch.testing.assert_close(
        zinb.get_reconstruction_error(return_mean=False)["reconstruction_loss"], error
    )
