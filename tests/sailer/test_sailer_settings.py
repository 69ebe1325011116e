"""SAILER's settings reach what they set (each test fails on a mutant that ignores one)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.feature_selection import mutual_info_classif

from scgexp.data import simulate_scatac
from scgexp.sailer import SAILER


def _quiet_train(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(enable_progress_bar=False, **kwargs)
    return model


@pytest.fixture(scope="module")
def sailer():
    adata = simulate_scatac(n_cells=300, n_peaks=200, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=32, n_latent=4)
    return _quiet_train(model, max_epochs=2, n_epochs_warmup=0, n_epochs_kl_warmup=1)


def test_query_covariates_far_from_training_warn_and_near_ones_do_not():
    """New data's covariates are compared with their own training column, not with depth's."""
    adata = simulate_scatac(n_cells=300, n_peaks=300, seed=0)
    adata.obs["tss"] = np.random.default_rng(0).normal(50, 1, adata.n_obs)
    SAILER.setup_anndata(adata, batch_key="batch", continuous_covariate_keys=["tss"])
    model = SAILER(adata, n_hidden=16, n_latent=4)
    _quiet_train(model, max_epochs=1, n_epochs_warmup=0, n_epochs_kl_warmup=None)
    query = adata[:50].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.get_latent_representation(query)
    query.obs["tss"] *= 100
    with pytest.warns(UserWarning, match="training standard deviations"):
        model.get_latent_representation(query)


def test_sailer_default_hidden_units_follow_the_number_of_peaks():
    """n_hidden=None is sqrt(n_peaks) clipped to 128..1000 (documented)."""
    adata = simulate_scatac(n_cells=100, n_peaks=300, seed=0)
    SAILER.setup_anndata(adata)
    module = SAILER(adata).module
    assert module.output.in_features == 128
    assert module.encoder.fc_layers[0][0].out_features == 128


def test_sailer_train_settings_reach_training(training_arguments):
    """weight_decay (default 5e-4) and the default epoch budget (2e6 / n_cells) reach training."""
    adata = simulate_scatac(n_cells=10_000, n_peaks=50, seed=0)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    SAILER.setup_anndata(adata)
    model = SAILER(adata, n_hidden=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train()
        assert training_arguments["max_epochs"] == round(2e6 / adata.n_obs)
        assert training_arguments["plan_kwargs"]["weight_decay"] == 5e-4
        model.train(weight_decay=0.01)
    assert training_arguments["plan_kwargs"]["weight_decay"] == 0.01


def test_differential_accessibility_decodes_posterior_samples_at_each_batch(sailer, monkeypatch):
    """batch_correction decodes at every batch, from posterior samples (not the means)."""
    decode, calls = sailer.get_normalized_accessibility, []

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        return decode(*args, **kwargs)

    monkeypatch.setattr(sailer, "get_normalized_accessibility", recorded)
    sailer.differential_accessibility(
        groupby="cell_type", group1="type_0", batch_correction=True, silent=True
    )
    assert {str(c["transform_batch"]) for c in calls} == {"batch_0", "batch_1"}
    assert all(c["use_z_mean"] is False for c in calls)


def test_confounder_information_subsamples_all_cells_with_the_asked_neighbours(
    sailer, monkeypatch
):
    """max_cells samples from all cells (not the first ones), and n_neighbors reaches the
    estimator; latents planted to hold the batch (sharply, then blurred: separated classes
    give the same value for any k)."""
    order = np.argsort(sailer.adata.obs["batch"].cat.codes.to_numpy(), kind="stable")
    adata = sailer.adata[order].copy()  # cells sorted by batch
    batch = adata.obs["batch"].cat.codes.to_numpy()
    noise = np.random.default_rng(1).normal(size=(adata.n_obs, 2))
    use = {"latent": batch[:, None] + 0.05 * noise}
    monkeypatch.setattr(
        sailer,
        "get_latent_representation",
        lambda adata=None, indices=None: use["latent"][indices],
    )
    assert sailer.confounder_information(adata, max_cells=100)["batch"] > 0.3
    use["latent"] = blurred = batch[:, None] + 0.7 * noise
    info = sailer.confounder_information(adata, max_cells=None, n_neighbors=10)
    expected = {
        k: np.mean(mutual_info_classif(blurred, batch, n_neighbors=k, random_state=0))
        for k in (3, 10)
    }
    assert info["batch"] == pytest.approx(expected[10], rel=1e-6)
    assert expected[3] != pytest.approx(expected[10], rel=1e-3)


def test_poisson_encoder_input_total_is_the_mean_total_of_log1p_counts():
    """The Poisson encoder reads log1p(x), so its reference total is that of log1p."""
    adata = simulate_scatac(n_cells=300, n_peaks=300, seed=0)
    SAILER.setup_anndata(adata)
    module = SAILER(adata, likelihood="poisson").module
    expected = np.log1p(adata.X.toarray()).sum(1).mean()
    np.testing.assert_allclose(float(module.mean_input_total), expected, rtol=1e-5)
