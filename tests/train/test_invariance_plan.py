"""InvarianceTrainingPlan: its optimisers, clipping, fresh gradients, the logged bound and the
scvi-tools plan arguments it takes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback

from scgexp.data import InputError, simulate_scatac
from scgexp.model import SAILER
from scgexp.train import InvarianceTrainingPlan
from scgexp.train._plans import warn_if_annealing_unfinished


@pytest.fixture(scope="module")
def atac():
    adata = simulate_scatac(n_cells=120, n_peaks=200, seed=0)
    SAILER.setup_anndata(adata, batch_key="batch")
    return adata


def _train(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(enable_progress_bar=False, early_stopping=False, **kwargs)


def test_optimisers_take_the_plan_arguments_and_split_the_parameters(atac):
    module = SAILER(atac, n_hidden=16, n_latent=4, invariance="both").module
    heads = {id(p) for p in module.invariance.discriminator_parameters()}
    assert heads
    plan = InvarianceTrainingPlan(
        module, lr=3e-3, weight_decay=1e-3, discriminator_lr=7e-3, lr_decay=0.9
    )
    (optimizer, discriminator), (scheduler,) = plan.configure_optimizers()
    (group,) = optimizer.param_groups
    assert group["lr"] == 3e-3
    assert group["weight_decay"] == 1e-3
    assert discriminator.param_groups[0]["lr"] == 7e-3
    assert scheduler.optimizer is optimizer
    assert scheduler.gamma == 0.9
    # The encoder/decoder optimiser never moves the heads (the penalty's gradient would train
    # them to fail); the heads' optimiser moves nothing else.
    encoder = {id(p) for p in group["params"]}
    discriminated = {id(p) for g in discriminator.param_groups for p in g["params"]}
    assert not encoder & heads
    assert discriminated == heads
    assert encoder | heads == {id(p) for p in module.parameters()}
    default = InvarianceTrainingPlan(module, lr=2e-4)
    (_, discriminator), _ = default.configure_optimizers()
    assert discriminator.param_groups[0]["lr"] == pytest.approx(2e-3)  # ten times lr


class _GradientNorms(Callback):
    """Norm of the encoder/decoder gradients as the optimiser sees them (after clipping)."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if optimizer is trainer.optimizers[0]:  # not the discriminator's
            grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
            norms = [torch.linalg.vector_norm(g) for g in grads if g is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack(norms))))


def test_gradients_are_clipped_to_the_norm_given(atac):
    model = SAILER(atac, n_hidden=16, n_latent=4, invariance="both")
    recorder = _GradientNorms()
    _train(
        model,
        max_epochs=2,
        batch_size=40,
        n_epochs_warmup=0,
        callbacks=[recorder],
        gradient_clip_val=1e-2,
    )
    assert len(recorder.norms) == 2 * 3  # 108 training cells: 3 minibatches per epoch
    # every step was clipped (the loss's gradients are far larger), to the norm, not per entry
    assert max(recorder.norms) <= 1e-2 * (1 + 1e-4)
    assert min(recorder.norms) >= 1e-2 * (1 - 1e-4)


def test_gradients_are_clipped_by_value_when_asked(atac):
    model = SAILER(atac, n_hidden=16, n_latent=4, invariance="both")
    largest = []

    class _Largest(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if optimizer is trainer.optimizers[0]:
                grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
                largest.append(max(float(g.abs().max()) for g in grads if g is not None))

    _train(
        model,
        max_epochs=1,
        batch_size=40,
        n_epochs_warmup=0,
        callbacks=[_Largest()],
        gradient_clip_val=1e-3,
        gradient_clip_algorithm="value",  # Lightning refused the plan's "norm" clipping
    )
    assert model.trainer.lightning_module.gradient_clip_algorithm == "value"
    assert max(largest) == pytest.approx(1e-3)  # each entry at most the value
    with pytest.raises(InputError, match="'norm' or 'value', not 'max'"):
        InvarianceTrainingPlan(model.module, gradient_clip_algorithm="max")


class _StaleGradients(Callback):
    """Leaves a huge gradient on every parameter before each minibatch: a step that does not
    zero the gradients first trains on it."""

    def __init__(self):
        self.largest: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for p in pl_module.module.parameters():
            p.grad = torch.full_like(p, 1e6)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
        self.largest.append(max(float(g.abs().max()) for g in grads if g is not None))


def test_each_step_starts_from_fresh_gradients(atac):
    model = SAILER(atac, n_hidden=16, n_latent=4, invariance="both")
    recorder = _StaleGradients()
    _train(model, max_epochs=1, batch_size=40, n_epochs_warmup=0, callbacks=[recorder])
    assert len(recorder.largest) == 2 * 3  # both optimisers, 3 minibatches
    assert max(recorder.largest) < 1e5


def test_logged_mi_bound_is_the_pairwise_kl_plus_the_reconstruction_per_cell(atac):
    model = SAILER(atac, n_hidden=16, n_latent=4, invariance="mi", invariance_weight=0.25)
    # 120 cells in three minibatches of 40: epoch means of per-minibatch means agree.
    _train(model, max_epochs=2, batch_size=40, train_size=1.0, n_epochs_warmup=0)
    history = {k: v.to_numpy(dtype=float).ravel() for k, v in model.history.items()}
    np.testing.assert_allclose(
        history["invariance_mi_bound_train"],
        history["invariance_pairwise_kl_train"] + history["reconstruction_loss_train"],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        history["invariance_penalty_train"],
        0.25 * history["invariance_mi_bound_train"],
        rtol=1e-5,
    )


def test_a_non_finite_loss_stops_the_invariance_plan_at_the_end_of_the_epoch(atac):
    """The plan's own epoch-end hook (the learning-rate decay) keeps the divergence check."""
    from types import SimpleNamespace

    from scgexp.train import TrainingDivergedError

    plan = InvarianceTrainingPlan(SAILER(atac, n_hidden=16, n_latent=4).module)
    plan._trainer = SimpleNamespace(optimizers=[], callbacks=[], current_epoch=0)
    plan._check_finite(torch.tensor(float("inf")))
    with pytest.raises(TrainingDivergedError, match="diverged in epoch 1"):
        plan.on_train_epoch_end()


def test_cyclical_annealing_does_not_warn_about_the_linear_ramp(warnings_as_errors):
    with warnings_as_errors():
        warn_if_annealing_unfinished(
            20, {"n_epochs_warmup": 2, "n_epochs_kl_warmup": 50, "kl_cycle_epochs": 4}
        )


def test_scvi_tools_plan_arguments_reach_the_invariance_plan(atac):
    model = SAILER(atac, n_hidden=16, n_latent=4)
    plan_kwargs = {"max_kl_weight": 0.5, "eps": 1e-7, "lr_decay": None}
    _train(
        model, max_epochs=1, n_epochs_warmup=0, n_epochs_kl_warmup=None, plan_kwargs=plan_kwargs
    )
    assert model.history["kl_weight"].to_numpy(dtype=float).ravel().tolist() == [0.5]
    assert model.trainer.optimizers[0].param_groups[0]["eps"] == 1e-7


def test_validation_runs_every_epoch_without_early_stopping_too(atac):
    """scvi-tools validates every epoch only with early stopping or a plateau schedule (else
    every sys.maxsize epochs); SAILER's plan has neither without early stopping."""
    model = SAILER(atac, n_hidden=16, n_latent=4)
    _train(model, max_epochs=2, n_epochs_warmup=0)
    assert len(model.history["elbo_validation"]) == 2


class _EncoderGradient(Callback):
    """The encoder's gradient at the first encoder/decoder step."""

    def __init__(self):
        self.gradient = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.gradient is None and optimizer is trainer.optimizers[0]:
            self.gradient = torch.cat(
                [p.grad.flatten() for p in pl_module.module.encoder.parameters()]
            )


def test_the_penalty_reaches_the_encoder_and_the_heads_learn(atac):
    """Fast checks of what otherwise only the statistical test in tests/sailer shows."""
    gradients = {}
    for weight in (0.1, 1.0):
        scvi.settings.seed = 0
        model = SAILER(atac, n_hidden=16, n_latent=4, invariance="mi", invariance_weight=weight)
        recorder = _EncoderGradient()
        _train(model, max_epochs=1, batch_size=128, n_epochs_warmup=0, callbacks=[recorder])
        gradients[weight] = recorder.gradient
    # Same seed, cells and sample of z: only the penalty's weight differs.
    assert not torch.allclose(gradients[0.1], gradients[1.0])

    model = SAILER(atac, n_hidden=16, n_latent=4, invariance="adversarial")
    heads = list(model.module.invariance.discriminator_parameters())
    before = [p.detach().clone() for p in heads]
    _train(model, max_epochs=1, batch_size=128, n_epochs_warmup=0)
    assert all(not torch.equal(p, b) for p, b in zip(heads, before, strict=True))
