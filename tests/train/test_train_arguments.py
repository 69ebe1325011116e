"""Training arguments that would crash late or be ignored are refused up front."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from scvi.train import SaveCheckpoint

from scgexp.data import InputError, simulate_scatac, simulate_scrna
from scgexp.model import SAILER, ZINBAutoencoder
from scgexp.train import TrainingDivergedError


@pytest.fixture
def zinb():
    adata = simulate_scrna(n_cells=100, n_genes=30, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts")
    return ZINBAutoencoder(adata)


def test_unknown_plan_kwargs_are_refused(zinb):
    # scvi-tools passes unknown plan arguments to the loss, which dropped them (or crashed).
    with pytest.raises(InputError, match=r"unknown argument 'lrr'\. Did you mean 'lr'"):
        zinb.train(max_epochs=1, plan_kwargs={"lrr": 1e-4})
    adata = simulate_scatac(n_cells=100, n_peaks=300, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    with pytest.raises(InputError, match="Did you mean 'n_epochs_warmup'"):
        SAILER(adata).train(max_epochs=1, plan_kwargs={"n_epochs_warmupp": 2})
    assert not zinb.is_trained


def test_a_setting_given_to_train_and_in_plan_kwargs_is_refused(zinb):
    # scvi-tools keeps train()'s value, scgexp had kept plan_kwargs': neither said so.
    with pytest.raises(InputError, match=r"lr is given twice.*train\(lr=\.\.\.\)"):
        zinb.train(max_epochs=1, lr=1e-2, plan_kwargs={"lr": 1e-4})
    adata = simulate_scatac(n_cells=100, n_peaks=300, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    sailer = SAILER(adata)
    with pytest.raises(InputError, match="n_epochs_warmup is given twice"):
        sailer.train(max_epochs=1, n_epochs_warmup=3, plan_kwargs={"n_epochs_warmup": 2})
    with pytest.raises(InputError, match="gradient_clip_val is given twice"):  # the plan clips
        sailer.train(max_epochs=1, gradient_clip_val=1.0, plan_kwargs={"gradient_clip_val": 50.0})
    # The same value twice, or plan_kwargs beside train()'s default, are one setting.
    zinb.train(max_epochs=1, lr=1e-2, plan_kwargs={"lr": 1e-2}, enable_progress_bar=False)
    zinb.train(max_epochs=1, plan_kwargs={"lr": 1e-4}, enable_progress_bar=False)
    assert zinb.trainer.optimizers[0].param_groups[0]["lr"] == 1e-4


def test_arguments_of_scvi_tools_models_trains_say_where_they_go(zinb):
    """MULTIVI/PEAKVI take plan settings in train(); Lightning's TypeError named no fix."""
    with pytest.raises(InputError, match=r"plan_kwargs=\{'n_steps_kl_warmup'"):
        zinb.train(max_epochs=1, n_steps_kl_warmup=10)
    with pytest.raises(InputError, match="ZINBAutoencoder has no adversarial penalty"):
        zinb.train(max_epochs=1, adversarial_mixing=False)
    with pytest.raises(InputError, match=r"no argument 'max_epoch'\. Did you mean 'max_epochs'"):
        zinb.train(max_epoch=1)
    with pytest.raises(InputError, match="Did you mean 'lr'"):
        zinb.train(max_epochs=1, learning_rate=1e-3)
    adata = simulate_scatac(n_cells=100, n_peaks=300, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    sailer = SAILER(adata)
    with pytest.raises(InputError, match="larger batch_size instead of accumulate_grad"):
        sailer.train(max_epochs=1, accumulate_grad_batches=2)
    with pytest.raises(InputError, match=r"SAILER\(adata, invariance=...\)"):
        sailer.train(max_epochs=1, adversarial_classifier=True)
    # The schedule sets the loss's KL weight at every step: a fixed one was silently replaced.
    for kwargs in ({"kl_weight": 0.0}, {"plan_kwargs": {"kl_weight": 0.0}}):
        with pytest.raises(InputError, match="max_kl_weight"):
            sailer.train(max_epochs=1, **kwargs)
    assert not zinb.is_trained
    zinb.train(max_epochs=1, ckpt_path=None, enable_progress_bar=False)  # scvi-tools' TrainRunner


def test_scvi_tools_configs_are_refused_not_overridden(zinb):
    """trainer_config/plan_config rank below the models' own defaults in scvi-tools, so
    early_stopping_mode="max" there would stop on the highest loss and restore the lowest."""
    with pytest.raises(InputError, match=r"pass its settings as train\(\*\*trainer_config\)"):
        zinb.train(max_epochs=1, trainer_config={"early_stopping_mode": "max"})
    with pytest.raises(InputError, match=r"train\(plan_kwargs=plan_config\)"):
        zinb.train(max_epochs=1, plan_config={"lr": 1e-2})
    assert not zinb.is_trained


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": 0}, "max_epochs must be at least 1"),
        ({"max_epochs": 1, "batch_size": 1}, "batch_size must be at least 2"),
        ({"max_epochs": 1, "train_size": 0.01}, "leaves 1 training cell"),
    ],
)
def test_degenerate_training_is_refused(zinb, kwargs, message):
    with pytest.raises(InputError, match=message):
        zinb.train(**kwargs)
    assert not zinb.is_trained


def test_every_training_run_trains_in_training_mode(zinb):
    """Outputs put the module in eval mode, which Lightning keeps: dropout and batch norm off."""
    modes = []
    zinb.module.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    zinb.train(max_epochs=1, train_size=1.0, enable_progress_bar=False)
    zinb.get_latent_representation()
    modes.clear()
    zinb.train(max_epochs=1, train_size=1.0, enable_progress_bar=False)
    assert modes
    assert all(modes)


def test_a_failed_training_call_leaves_the_outputs_alone(zinb):
    """Training mode left on after an error would update batch-norm statistics in outputs."""
    zinb.train(max_epochs=1, enable_progress_bar=False)
    latent = zinb.get_latent_representation()

    class Fails(Callback):
        def on_train_batch_start(self, *args):
            raise RuntimeError("failed in training")

    with pytest.raises(RuntimeError, match="failed in training"):
        zinb.train(max_epochs=1, enable_progress_bar=False, callbacks=[Fails()])
    assert not zinb.module.training
    np.testing.assert_array_equal(zinb.get_latent_representation(), latent)


def test_training_hides_lightnings_internal_deprecation(zinb):
    """Lightning's own ``LeafSpec`` FutureWarning (torch >= 2.10) says nothing to the user."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zinb.train(max_epochs=1)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    assert zinb.is_trained


def test_logger_false_and_scvi_tools_checkpoint_reloading(zinb, tmp_path):
    """As with SCVI: no logger (the plateau schedule keeps an in-memory one), and
    ``SaveCheckpoint(load_best_on_end=True)``, whose saves are scgexp's own format."""
    zinb.train(max_epochs=1, logger=False, enable_progress_bar=False)
    checkpoint = SaveCheckpoint(
        dirpath=str(tmp_path), monitor="validation_loss", load_best_on_end=True
    )

    class Spoil(Callback):  # the last epoch worse than the others
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                with torch.no_grad():
                    for parameter in pl_module.module.parameters():
                        parameter.add_(torch.randn_like(parameter))

    zinb.train(
        max_epochs=3,
        callbacks=[checkpoint, Spoil()],
        early_stopping=False,
        enable_progress_bar=False,
    )
    assert checkpoint.load_best_on_end  # left as the user made it
    assert "epoch=2" not in checkpoint.best_model_path
    best = ZINBAutoencoder.load(checkpoint.best_model_path, adata=zinb.adata)
    for name, value in best.module.state_dict().items():
        torch.testing.assert_close(zinb.module.state_dict()[name], value)


def test_checkpoint_with_nan_check_loads_the_best_save_when_training_diverges(zinb, tmp_path):
    checkpoint = SaveCheckpoint(
        dirpath=str(tmp_path), monitor="validation_loss", check_nan_gradients=True
    )

    class Poison(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                with torch.no_grad():
                    next(pl_module.module.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDivergedError):
        zinb.train(
            max_epochs=4,
            callbacks=[checkpoint, Poison()],
            early_stopping=False,
            enable_progress_bar=False,
        )
    assert checkpoint.check_nan_gradients
    assert zinb.is_trained
    best = ZINBAutoencoder.load(checkpoint.best_model_path, adata=zinb.adata)
    for name, value in best.module.state_dict().items():
        torch.testing.assert_close(zinb.module.state_dict()[name], value)
