"""Arguments of the invariance plan that used to be dropped, refused or warned about wrongly."""

from __future__ import annotations

import warnings

from scgexp.data import simulate_scatac
from scgexp.model import SAILER
from scgexp.train._plans import warn_if_annealing_unfinished


def test_cyclical_annealing_does_not_warn_about_the_linear_ramp():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_annealing_unfinished(
            20, {"n_epochs_warmup": 2, "n_epochs_kl_warmup": 50, "kl_cycle_epochs": 4}
        )


def test_scvi_tools_plan_arguments_reach_the_invariance_plan():
    adata = simulate_scatac(n_cells=120, n_peaks=200, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=1,
            n_epochs_warmup=0,
            n_epochs_kl_warmup=None,
            early_stopping=False,
            enable_progress_bar=False,
            plan_kwargs={"max_kl_weight": 0.5, "eps": 1e-7, "lr_decay": None},
        )
    assert model.history["kl_weight"].to_numpy(dtype=float).ravel().tolist() == [0.5]
    assert model.trainer.optimizers[0].param_groups[0]["eps"] == 1e-7


def test_validation_runs_every_epoch_without_early_stopping_too():
    """scvi-tools validates every epoch only with early stopping or a plateau schedule (else
    every sys.maxsize epochs); SAILER's plan has neither without early stopping."""
    adata = simulate_scatac(n_cells=120, n_peaks=200, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=2,
            n_epochs_warmup=0,
            early_stopping=False,
            enable_progress_bar=False,
        )
    assert len(model.history["elbo_validation"]) == 2


def test_n_steps_kl_warmup_is_not_silently_ignored_by_the_invariance_plan():
    """scvi-tools' n_steps_kl_warmup passes the plan_kwargs check, but the plan's own KL
    schedule ignored it: full KL weight from the first step."""
    adata = simulate_scatac(n_cells=120, n_peaks=200, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=2,
            batch_size=40,
            n_epochs_warmup=0,
            n_epochs_kl_warmup=None,
            early_stopping=False,
            enable_progress_bar=False,
            plan_kwargs={"n_steps_kl_warmup": 1000},
        )
    weights = model.history["kl_weight"].to_numpy(dtype=float).ravel()
    assert 0 < weights.min() < weights.max() < 0.01  # rising, 6 of 1000 minibatches in
