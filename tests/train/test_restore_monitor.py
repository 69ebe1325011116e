"""RestoreBestWeights: the sanity check is no epoch; it watches early stopping's monitor."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from scgexp.data import simulate_scrna
from scgexp.model import ZINBAutoencoder
from scgexp.train import RestoreBestWeights


def test_the_sanity_check_is_not_an_epoch():
    """Lightning's sanity check validates the untrained weights before epoch 0."""
    pl_module = SimpleNamespace(module=torch.nn.Linear(2, 1))
    callback = RestoreBestWeights("validation_loss")
    sanity = SimpleNamespace(
        sanity_checking=True,
        callback_metrics={"validation_loss": torch.tensor(0.5)},  # better than any epoch
        current_epoch=0,
    )
    callback.on_validation_epoch_end(sanity, pl_module)
    assert callback.best_epoch is None
    for epoch, loss in enumerate([2.0, 1.0, 3.0]):
        trainer = SimpleNamespace(
            sanity_checking=False,
            callback_metrics={"validation_loss": torch.tensor(loss)},
            current_epoch=epoch,
        )
        callback.on_validation_epoch_end(trainer, pl_module)
    assert (callback.best_epoch, callback.best_score) == (1, 1.0)


def test_restore_watches_the_early_stopping_monitor():
    """DGEX stops on the validation MAE: the epoch restored is the one with the lowest MAE."""
    from scgexp.data import simulate_bulk_expression
    from scgexp.model import DGEX

    bulk = simulate_bulk_expression(n_samples=150, n_landmarks=10, n_targets=20, seed=0)
    DGEX.setup_anndata(bulk)
    model = DGEX(bulk, n_hidden=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=4, early_stopping=True, enable_progress_bar=False)
    (callback,) = [c for c in model.trainer.callbacks if isinstance(c, RestoreBestWeights)]
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
    (callback,) = [c for c in model.trainer.callbacks if isinstance(c, RestoreBestWeights)]
    losses = model.history["validation_loss"].to_numpy(dtype=float).ravel()
    assert callback.best_epoch == int(losses.argmax())
