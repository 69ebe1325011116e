"""Per-step values are logged once per epoch, as their means weighted by minibatch size."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback

from scgexp.data import simulate_scatac, simulate_scrna
from scgexp.model import SAILER, ZINBAutoencoder


def _record_training_losses(module) -> list[dict]:
    """Wrap ``module.loss`` to keep each training minibatch's values."""
    records, loss = [], module.loss

    @functools.wraps(loss)  # the plan reads the signature (kl_weight)
    def recording_loss(tensors, inference_outputs, generative_outputs, **kwargs):
        output = loss(tensors, inference_outputs, generative_outputs, **kwargs)
        if module.training:
            records.append(
                {
                    "n": output.n_obs_minibatch,
                    "reconstruction": float(output.reconstruction_loss_sum)
                    / output.n_obs_minibatch,
                    "kl_weight": kwargs.get("kl_weight"),
                    **{k: float(v) for k, v in output.extra_metrics.items()},
                }
            )
        return output

    module.loss = recording_loss
    return records


def _weighted_mean(records: list[dict], key: str) -> float:
    n = np.array([r["n"] for r in records], dtype=float)
    return float(np.sum(n * [r[key] for r in records]) / n.sum())


def _small_model(model_name: str):
    if model_name == "zinb":
        adata = simulate_scrna(n_cells=200, n_genes=40, seed=0)
        ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
        return ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    adata = simulate_scatac(n_cells=150, n_peaks=200, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    return SAILER(adata, n_hidden=16, n_latent=4, invariance="both")


def _train(model, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=3, batch_size=50, enable_progress_bar=False, **kwargs)


@pytest.mark.parametrize("batch_size", [64, 50])  # 50: a last minibatch of another size
def test_epoch_means_match_the_minibatches(batch_size):
    adata = simulate_scrna(n_cells=200, n_genes=40, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    records = _record_training_losses(model.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, batch_size=batch_size, enable_progress_bar=False)
    n_batches = len(records) // 2
    assert len({r["n"] for r in records}) == (1 if 180 % batch_size == 0 else 2)
    for epoch, epoch_records in enumerate([records[:n_batches], records[n_batches:]]):
        history = {k: float(v.iloc[epoch, 0]) for k, v in model.history.items()}
        for key, logged in (
            ("reconstruction", "reconstruction_loss_train"),
            ("reconstruction", "elbo_train"),  # no KL in an autoencoder
            ("reconstruction", "train_loss"),  # nor a ridge penalty by default
            ("dropout_probability", "dropout_probability_train"),
        ):
            assert history[logged] == pytest.approx(_weighted_mean(epoch_records, key), rel=1e-5)


def test_invariance_terms_and_kl_weight_are_epoch_means():
    model = _small_model("sailer")
    records = _record_training_losses(model.module)
    _train(model, n_epochs_warmup=1, n_epochs_kl_warmup=2)
    history = model.history
    n_batches = len(records) // 3
    weights = [
        _weighted_mean(records[e * n_batches : (e + 1) * n_batches], "kl_weight") for e in range(3)
    ]
    logged = history["kl_weight"].to_numpy(dtype=float).ravel()
    np.testing.assert_allclose(logged, weights, rtol=1e-6)
    assert logged[0] == 0
    assert 0 < logged[1] < logged[2] < 1
    for name in ("invariance_penalty", "invariance_mi_bound", "invariance_adversarial"):
        for mode in ("train", "validation"):
            values = history[f"{name}_{mode}"].to_numpy(dtype=float).ravel()
            assert len(values) == 3
            assert np.isfinite(values).all()
    assert len(history["discriminator_loss_train"]) == 3


class _ReadAtEpochEnd(Callback):
    """What a callback (the progress bar, a user's) reads in the epoch-end hooks."""

    def __init__(self):
        self.seen = {"train_loss": [], "validation_loss": []}

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen["train_loss"].append(float(trainer.callback_metrics["train_loss"]))

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seen["validation_loss"].append(float(trainer.callback_metrics["validation_loss"]))


@pytest.mark.parametrize("model_name", ["zinb", "sailer"])
def test_callbacks_see_the_epoch_that_ends(model_name):
    """Lightning runs callbacks' epoch-end hooks before the plan's: values are logged before."""
    model = _small_model(model_name)
    reader = _ReadAtEpochEnd()
    _train(model, callbacks=[reader], num_sanity_val_steps=1)
    for key, seen in reader.seen.items():
        logged = model.history[key].to_numpy(dtype=float).ravel()
        np.testing.assert_allclose(seen, logged, rtol=1e-6)


def test_logged_train_loss_includes_the_invariance_penalty():
    """train_loss is what the encoder minimises: the ELBO plus the penalty (KL weight 1)."""
    atac = simulate_scatac(n_cells=120, n_peaks=100, seed=0)
    SAILER.setup_anndata(atac, batch_key="batch")
    model = SAILER(atac, n_hidden=16, n_latent=4, invariance="mi", invariance_weight=2.0)
    model.train(
        max_epochs=2,
        batch_size=40,
        train_size=1.0,
        n_epochs_warmup=0,
        n_epochs_kl_warmup=0,
        enable_progress_bar=False,
    )
    history = {k: v.to_numpy(dtype=float).ravel() for k, v in model.history.items()}
    np.testing.assert_allclose(
        history["train_loss"],
        history["elbo_train"] + history["invariance_penalty_train"],
        rtol=1e-4,
    )
