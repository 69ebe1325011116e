"""Early stopping restores the best epoch's weights (shared by the models via TrainingMixin)."""

from __future__ import annotations

import copy
import logging
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback

from scgexp.data import simulate_bulk_expression, simulate_scatac, simulate_scrna
from scgexp.model import DGEX, SAILER, ZINBAutoencoder
from scgexp.train import RestoreBestWeights, TrainingMixin
from scgexp.train._callbacks import QUERY_FIRST_EPOCH_CAUSE


def _callbacks(model) -> list[RestoreBestWeights]:
    return [c for c in model.trainer.callbacks if isinstance(c, RestoreBestWeights)]


class _RecordWeights(Callback):
    """A copy of the module's weights after each epoch's validation."""

    def __init__(self):
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            state = pl_module.module.state_dict()
            self.states[trainer.current_epoch] = copy.deepcopy(state)


def _train_zinb(**train_kwargs) -> ZINBAutoencoder:
    """8 epochs with early stopping on simulated counts (lr high enough to get worse)."""
    adata = simulate_scrna(n_cells=200, n_genes=40, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=8, lr=0.05, enable_progress_bar=False, early_stopping=True, **train_kwargs
        )
    return model


def test_best_epoch_weights_are_restored():
    recorder = _RecordWeights()
    model = _train_zinb(callbacks=[recorder])
    (callback,) = _callbacks(model)
    history = model.history["validation_loss"].to_numpy().ravel()
    assert len(history) == 8  # validated every epoch
    assert callback.best_epoch == int(np.argmin(history))
    assert callback.best_epoch < 7  # else restoring would change nothing
    # The weights of that epoch as they were then, not as the training left them (a kept
    # state_dict without a copy follows the weights to the last epoch).
    best = recorder.states[callback.best_epoch]
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, best[name])


def test_no_restore_without_early_stopping_or_where_a_model_opts_out():
    adata = simulate_scrna(n_cells=120, n_genes=30, seed=1)
    ZINBAutoencoder.setup_anndata(adata, layer="counts")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    model.train(max_epochs=2, enable_progress_bar=False, early_stopping=False)
    assert _callbacks(model) == []
    atac = simulate_scatac(n_cells=120, n_peaks=300, seed=0)
    SAILER.setup_anndata(atac, batch_key="batch")
    sailer = SAILER(atac, n_hidden=32, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sailer.train(max_epochs=2, enable_progress_bar=False, n_epochs_warmup=0)
    assert _callbacks(sailer) == []


def _validate(callback, pl_module, losses) -> SimpleNamespace:
    """Feed ``losses`` to the callback as the validation losses of epochs 0, 1, ..."""
    for epoch, loss in enumerate(losses):
        trainer = SimpleNamespace(
            sanity_checking=False,
            callback_metrics={"validation_loss": torch.tensor(loss)},
            current_epoch=epoch,
        )
        callback.on_validation_end(trainer, pl_module)
    return trainer


def test_restoring_the_first_epoch_after_several_warns(warnings_as_errors):
    pl_module = SimpleNamespace(module=torch.nn.Linear(2, 1))
    callback = RestoreBestWeights("validation_loss")
    trainer = _validate(callback, pl_module, [1.0, 2.0, 3.0, 4.0])
    trainer.current_epoch = 4  # four epochs done
    with pytest.warns(UserWarning, match="learning rate may be too high"):
        callback.on_train_end(trainer, pl_module)
    query_model = SimpleNamespace(_reference_entries={})  # from load_query_data
    assert TrainingMixin._first_epoch_cause(query_model) == QUERY_FIRST_EPOCH_CAUSE
    assert TrainingMixin._first_epoch_cause(SimpleNamespace()) is None
    query = RestoreBestWeights(  # a frozen scArches query model, as TrainingMixin builds it
        "validation_loss", first_epoch_cause=QUERY_FIRST_EPOCH_CAUSE
    )
    trainer = _validate(query, pl_module, [1.0, 2.0, 3.0, 4.0])
    trainer.current_epoch = 4
    with pytest.warns(UserWarning, match="new entries may have had little left to learn"):
        query.on_train_end(trainer, pl_module)
    callback.best_epoch = 2
    with warnings_as_errors():
        callback.on_train_end(trainer, pl_module)


def test_a_non_finite_score_is_never_the_best():
    pl_module = SimpleNamespace(module=torch.nn.Linear(2, 1))
    callback = RestoreBestWeights("validation_loss")
    _validate(callback, pl_module, [float("nan"), 2.0, float("inf")])
    assert callback.best_epoch == 1
    _validate(callback, pl_module, [float("nan")])  # epoch 0 again: not better
    assert callback.best_epoch == 1


def test_the_sanity_check_is_not_an_epoch():
    """Lightning's sanity check validates the untrained weights before epoch 0."""
    pl_module = SimpleNamespace(module=torch.nn.Linear(2, 1))
    callback = RestoreBestWeights("validation_loss")
    sanity = SimpleNamespace(
        sanity_checking=True,
        callback_metrics={"validation_loss": torch.tensor(0.5)},  # better than any epoch
        current_epoch=0,
    )
    callback.on_validation_end(sanity, pl_module)
    assert callback.best_epoch is None
    _validate(callback, pl_module, [2.0, 1.0, 3.0])
    assert (callback.best_epoch, callback.best_score) == (1, 1.0)


def test_restore_watches_the_early_stopping_monitor():
    """DGEX stops on the validation MAE: the epoch restored is the one with the lowest MAE."""
    bulk = simulate_bulk_expression(n_samples=150, n_landmarks=10, n_targets=20, seed=0)
    DGEX.setup_anndata(bulk)
    model = DGEX(bulk, n_hidden=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=4, early_stopping=True, enable_progress_bar=False)
    (callback,) = _callbacks(model)
    assert callback.monitor == "mae_validation"
    mae = model.history["mae_validation"].to_numpy(dtype=float).ravel()
    assert callback.best_epoch == int(mae.argmin())


def test_restore_follows_the_early_stopping_mode():
    """early_stopping_mode="max" stops on the highest score; the highest must be restored."""
    adata = simulate_scrna(n_cells=120, n_genes=30, seed=1)
    ZINBAutoencoder.setup_anndata(adata, layer="counts")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=3,
            enable_progress_bar=False,
            early_stopping=True,
            early_stopping_monitor="validation_loss",
            early_stopping_mode="max",
            early_stopping_patience=10,
        )
    (callback,) = _callbacks(model)
    losses = model.history["validation_loss"].to_numpy(dtype=float).ravel()
    assert callback.best_epoch == int(losses.argmax())


def test_a_training_metric_monitor_restores_its_own_best_epoch():
    """Training metrics are published at the end of the training epoch, after validation: the
    epoch kept must be the one whose own value is best, not the one after it. (The training
    ELBO falls each epoch here, so mode="max" makes the first epoch the best.)"""
    recorder = _RecordWeights()
    model = _train_zinb(
        early_stopping_monitor="elbo_train",
        early_stopping_mode="max",
        early_stopping_patience=10,
        callbacks=[recorder],
    )
    (callback,) = _callbacks(model)
    elbo = model.history["elbo_train"].to_numpy(dtype=float).ravel()
    assert len(elbo) == 8
    assert callback.best_epoch == int(elbo.argmax()) < 7
    assert callback.best_score == pytest.approx(elbo.max())
    best = recorder.states[callback.best_epoch]
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, best[name])
    # Also when validation (and so early stopping's check) runs every second epoch only.
    model = _train_zinb(
        early_stopping_monitor="elbo_train",
        early_stopping_mode="max",
        early_stopping_patience=10,
        check_val_every_n_epoch=2,
    )
    (callback,) = _callbacks(model)
    elbo = model.history["elbo_train"].to_numpy(dtype=float).ravel()
    assert callback.best_epoch == int(elbo.argmax()) < 7


def test_validation_every_second_epoch_is_watched_after_validation():
    model = _train_zinb(early_stopping_patience=10, check_val_every_n_epoch=2)
    (callback,) = _callbacks(model)
    loss = model.history["elbo_validation"]
    assert len(loss) == 4
    best = loss.index[int(np.argmin(loss.to_numpy(dtype=float).ravel()))]
    assert callback.best_epoch == best


def test_restore_leaves_out_the_warm_up_and_changes_below_min_delta():
    model = _train_zinb(
        early_stopping_patience=10,
        early_stopping_monitor="validation_loss",
        early_stopping_warmup_epochs=3,
    )
    (callback,) = _callbacks(model)
    loss = model.history["validation_loss"].to_numpy(dtype=float).ravel()
    assert callback.best_epoch == 3 + int(loss[3:].argmin())
    # An improvement smaller than min_delta is none: the epoch kept is the first that gains.
    huge = _train_zinb(
        early_stopping_patience=10,
        early_stopping_monitor="validation_loss",
        early_stopping_min_delta=1e9,
    )
    (callback,) = _callbacks(huge)
    assert callback.best_epoch == 0


def test_multivae_restores_no_epoch_of_its_kl_annealing():
    from scgexp.data import simulate_multiome
    from scgexp.model import MultiVAE

    mdata = simulate_multiome(n_cells=150, n_genes=30, n_peaks=40, seed=0)
    MultiVAE.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"}
    )
    model = MultiVAE(mdata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=6, n_epochs_kl_warmup=4, enable_progress_bar=False)
    (callback,) = _callbacks(model)
    assert callback.warmup_epochs == 4
    loss = model.history["validation_loss"].to_numpy(dtype=float).ravel()
    assert callback.best_epoch == 4 + int(loss[4:].argmin())


class _OwnSCVI(TrainingMixin, scvi.model.SCVI):
    """A user's own model on scgexp's training (as TrainingMixin's docstring shows)."""


def test_own_model_restores_the_epoch_best_by_the_early_stopping_default(caplog):
    """Without early_stopping_monitor, the restore watches scvi-tools' elbo_validation."""
    adata = simulate_scrna(n_cells=200, n_genes=30, n_batches=1, seed=0)
    _OwnSCVI.setup_anndata(adata, layer="counts")
    model = _OwnSCVI(adata, n_hidden=16, n_latent=2)
    with caplog.at_level(logging.INFO, logger="scgexp.train._callbacks"):
        model.train(max_epochs=4, early_stopping=True, enable_progress_bar=False)
    restored = [r.getMessage() for r in caplog.records if "Restored weights" in r.getMessage()]
    assert restored
    assert "elbo_validation" in restored[-1]
    best = int(np.argmin(model.history["elbo_validation"].to_numpy().ravel())) + 1
    assert f"epoch {best} " in restored[-1]
