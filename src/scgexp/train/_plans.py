"""Training plan for scgexp modules with an invariance component (:mod:`scgexp.nn`)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch.optim.lr_scheduler import ExponentialLR

from scgexp._warn import warn_user
from scgexp.data._checks import InputError
from scgexp.train._trainingplan import TrainingPlan

if TYPE_CHECKING:
    from scvi.module.base import BaseModuleClass

logger = logging.getLogger(__name__)


# scvi-tools' plateau-scheduler arguments, which this plan's lr_decay schedule would ignore.
_PLATEAU_ARGS = (
    "lr_patience",
    "lr_factor",
    "lr_threshold",
    "lr_min",
    "lr_scheduler_metric",
)


def warn_if_annealing_unfinished(max_epochs: int, plan_kwargs: dict) -> None:
    """Warn when training ends before the KL weight (and the invariance penalty) apply in full."""
    warmup = plan_kwargs.get("n_epochs_warmup") or 0
    annealing = plan_kwargs.get("n_epochs_kl_warmup") or 0
    if max_epochs <= warmup:
        warn_user(
            f"max_epochs={max_epochs} ends within the {warmup} reconstruction-only warm-up "
            "epochs, so the model trains without its KL term or any invariance penalty. "
            "Train longer or pass train(n_epochs_warmup=...) a smaller value."
        )
    elif plan_kwargs.get("kl_cycle_epochs") is None and max_epochs < warmup + annealing:
        warn_user(
            f"max_epochs={max_epochs} ends before the KL weight is full (after {warmup} "
            f"warm-up and {annealing} annealing epochs), so the model ends partly annealed. "
            "Train longer or pass train(n_epochs_kl_warmup=...) a smaller value."
        )


class InvarianceTrainingPlan(TrainingPlan):
    """Train a VAE whose latent space must be invariant to confounders.

    Works with any module that follows the hook contract of :mod:`scgexp.nn` (an
    ``invariance`` attribute and an ``invariance_inputs(tensors, inference_outputs)`` method);
    with ``module.invariance = None`` it trains a plain VAE. Optimisation is manual, as in
    :class:`scvi.train.AdversarialTrainingPlan`: each minibatch first updates the encoder and
    decoder on ``loss + factor * penalty``, then the discriminator heads (if any) on their own
    optimiser.

    The schedule follows SAILER :cite:p:`Cao2021`: ``n_epochs_warmup`` epochs on reconstruction
    alone (KL weight and invariance factor 0), then the KL weight is annealed, either linearly
    over ``n_epochs_kl_warmup`` epochs or cyclically (``kl_cycle_epochs``), and the penalty
    applies in full; Adam with weight decay and an exponential learning-rate decay per epoch.
    From scvi-tools: the validation ELBO (``elbo_validation``, unweighted, so comparable across
    the annealing) logged every epoch for early stopping.

    Parameters
    ----------
    module
        A module with ``invariance`` and ``invariance_inputs`` (see :mod:`scgexp.nn`), whose
        ``loss`` takes ``kl_weight``.
    lr
        Learning rate of the encoder/decoder optimiser (SAILER: 1e-3).
    weight_decay
        Adam weight decay (SAILER: 5e-4).
    n_epochs_warmup
        Epochs of reconstruction-only training (SAILER: 10).
    n_epochs_kl_warmup
        Epochs over which the KL weight rises linearly from 0 to ``max_kl_weight`` after the
        warm-up. ``None`` or 0: scvi-tools' ``n_steps_kl_warmup`` (minibatches) if given, else
        full weight at once.
    kl_cycle_epochs
        Period of cyclical KL annealing (SAILER: 100): in each cycle the weight rises over the
        first half and stays at its maximum over the second. Overrides ``n_epochs_kl_warmup``
        and ``n_steps_kl_warmup``.
    lr_decay
        Multiply the learning rate by this each epoch (SAILER: 0.995); ``None``: constant.
    discriminator_lr
        Learning rate of the discriminator heads' Adam optimiser. ``None``: ten times ``lr``.
        A discriminator that learns faster than the encoder (the two time-scale rule of
        Heusel et al., 2017) keeps up with the latent as it moves. On the simulated scATAC-seq
        of the SAILER benchmark (one seed), ``"both"`` reached a mutual information with read
        depth of 0.022 nats with 1e-2 against 0.032 with 1e-3 (3e-2: 0.028).
    gradient_clip_val
        Clip the encoder/decoder gradients to this norm (or value); ``None``: no clipping.
    gradient_clip_algorithm
        ``"norm"`` or ``"value"``, as Lightning's ``Trainer`` takes it.
    **kwargs
        Other :class:`scvi.train.TrainingPlan` arguments (``optimizer``, ``eps``,
        ``max_kl_weight``, ...) and keyword arguments of the module's ``loss``.

    Examples
    --------
    >>> model.train(plan_kwargs={"n_epochs_warmup": 5, "kl_cycle_epochs": 100})
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        n_epochs_warmup: int = 10,
        n_epochs_kl_warmup: int | None = 50,
        kl_cycle_epochs: int | None = None,
        lr_decay: float | None = 0.995,
        discriminator_lr: float | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        **kwargs,
    ):
        if gradient_clip_algorithm not in (None, "norm", "value"):
            raise InputError(
                "gradient_clip_algorithm must be 'norm' or 'value', not "
                f"{gradient_clip_algorithm!r}."
            )
        plateau = [k for k in _PLATEAU_ARGS if k in kwargs]
        if kwargs.pop("reduce_lr_on_plateau", False) or plateau:
            raise InputError(
                "This model schedules its learning rate with lr_decay (× lr_decay per epoch; "
                "None: constant), not on a plateau; remove "
                f"{', '.join(plateau) or 'reduce_lr_on_plateau'} from plan_kwargs."
            )
        super().__init__(
            module,
            lr=lr,
            weight_decay=weight_decay,
            n_epochs_kl_warmup=n_epochs_kl_warmup,
            reduce_lr_on_plateau=False,
            **kwargs,
        )
        self.n_epochs_warmup = int(n_epochs_warmup)
        self.kl_cycle_epochs = kl_cycle_epochs
        self.lr_decay = lr_decay
        self.discriminator_lr = 10.0 * lr if discriminator_lr is None else discriminator_lr
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm or "norm"
        self.automatic_optimization = False
        self._batch_in_epoch = 0

    @property
    def invariance(self):
        """The module's invariance component, or ``None``."""
        return getattr(self.module, "invariance", None)

    def _batches_per_epoch(self) -> float:
        """Training minibatches per epoch (1 before the trainer knows)."""
        n_batches = getattr(getattr(self, "_trainer", None), "num_training_batches", 1) or 1
        return n_batches if math.isfinite(n_batches) and n_batches >= 1 else 1

    def _progress(self) -> float:
        """Epochs since the reconstruction warm-up ended, counting partial epochs by minibatch."""
        warmup = getattr(self, "n_epochs_warmup", 0)
        if getattr(self, "_trainer", None) is None:  # not attached yet: the start of training
            return -float(warmup) if warmup else 0.0
        n_batches = self._batches_per_epoch()
        # The minibatch index, not global_step: manual optimisation counts one step per
        # optimiser, i.e. two per minibatch when a discriminator is trained.
        epoch = self.current_epoch + min(self._batch_in_epoch, n_batches) / n_batches
        return epoch - warmup

    @property
    def kl_weight(self) -> float:
        """KL weight: 0 in the warm-up, then linear or cyclical annealing."""
        progress = self._progress()
        low, high = self.min_kl_weight, self.max_kl_weight
        if progress < 0:
            return 0.0
        cycle = getattr(self, "kl_cycle_epochs", None)
        if cycle:
            position = (progress % cycle) / cycle
            return low + (high - low) * min(1.0, 2.0 * position)
        if self.n_epochs_kl_warmup:
            return low + (high - low) * min(1.0, progress / self.n_epochs_kl_warmup)
        if self.n_steps_kl_warmup:  # scvi-tools' ramp by minibatch (after the warm-up)
            steps = progress * self._batches_per_epoch()
            return low + (high - low) * min(1.0, steps / self.n_steps_kl_warmup)
        return high

    @property
    def invariance_factor(self) -> float:
        """0 during the reconstruction warm-up, 1 afterwards."""
        return 0.0 if self._progress() < 0 else 1.0

    def _invariance_terms(self, batch, inference_outputs, loss_output, mode: str):
        invariance = self.invariance
        if invariance is None:
            return None, None
        inputs = self.module.invariance_inputs(batch, inference_outputs)
        reconstruction = loss_output.reconstruction_loss_sum / loss_output.n_obs_minibatch
        terms = invariance.penalty(inputs, reconstruction)
        self._add_to_epoch_means(
            mode,
            {f"invariance_{name}_{mode}": value for name, value in terms.items()},
            loss_output.n_obs_minibatch,
        )
        return inputs, terms["penalty"]

    def training_step(self, batch, batch_idx):
        """Encoder/decoder step on ``loss + factor * penalty``, then a discriminator step."""
        self._batch_in_epoch = batch_idx
        kl_weight = self.kl_weight
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs.update({"kl_weight": kl_weight})
        optimizers = self.optimizers()
        if isinstance(optimizers, list):
            optimizer, discriminator_optimizer = optimizers
        else:
            optimizer, discriminator_optimizer = optimizers, None

        inference_outputs, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._add_to_epoch_means("train", {"kl_weight": kl_weight}, loss_output.n_obs_minibatch)
        loss = loss_output.loss
        inputs, penalty = self._invariance_terms(batch, inference_outputs, loss_output, "train")
        factor = self.invariance_factor
        if penalty is not None and factor > 0:
            loss = loss + factor * penalty
            self._check_finite(loss)
        self._add_to_epoch_means("train", {"train_loss": loss}, loss_output.n_obs_minibatch)
        self.compute_and_log_metrics(loss_output, self.train_metrics, "train")
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.gradient_clip_val is not None:
            # Under "16-mixed" the gradients are still scaled here (Lightning unscales inside
            # optimizer.step()): scale the bound with them, or every step shrinks to nothing.
            # (Reading the scale costs one host-device sync per step, under 16-mixed only.)
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            scale = 1.0 if scaler is None else scaler.get_scale()
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val * scale,
                gradient_clip_algorithm=self.gradient_clip_algorithm,
            )
        optimizer.step()

        if discriminator_optimizer is not None:
            discriminator_loss = self.invariance.discriminator_loss(inputs.detach())
            self._check_finite(discriminator_loss)
            discriminator_optimizer.zero_grad()
            self.manual_backward(discriminator_loss)
            self._average_across_processes(self.invariance.discriminator_parameters())
            discriminator_optimizer.step()
            self._add_to_epoch_means(
                "train",
                {"discriminator_loss_train": discriminator_loss},
                loss_output.n_obs_minibatch,
            )
        self._log_epoch_at_last_batch("train", batch_idx)
        return loss.detach()

    def _average_across_processes(self, parameters) -> None:
        """Average gradients over the processes of a distributed job.

        DDP averages gradients once per step, in the first backward pass; the discriminator's
        backward pass comes second, so its gradients are averaged here, keeping the heads
        identical on every process.
        """
        if self.trainer.world_size <= 1:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= self.trainer.world_size

    def validation_step(self, batch, batch_idx):
        """Validation loss and ELBO, plus the invariance terms."""
        inference_outputs, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._invariance_terms(batch, inference_outputs, loss_output, "validation")
        self._add_to_epoch_means(
            "validation", {"validation_loss": loss_output.loss}, loss_output.n_obs_minibatch
        )
        self.compute_and_log_metrics(loss_output, self.val_metrics, "validation")
        self._log_epoch_at_last_batch("validation", batch_idx)

    def on_train_epoch_end(self):
        """Log and check the epoch's losses; decay the learning rate once per epoch."""
        super().on_train_epoch_end()
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    def configure_optimizers(self):
        """Adam for the encoder/decoder (weight decay, decay schedule) and for the heads."""
        invariance = self.invariance
        discriminator_ids = set()
        if invariance is not None:
            discriminator_ids = {id(p) for p in invariance.discriminator_parameters()}
        params = [
            p
            for p in self.module.parameters()
            if p.requires_grad and id(p) not in discriminator_ids
        ]
        optimizer = self.get_optimizer_creator()(params)
        optimizers = [optimizer]
        if discriminator_ids:
            optimizers.append(
                torch.optim.Adam(
                    [p for p in invariance.discriminator_parameters() if p.requires_grad],
                    lr=self.discriminator_lr,
                )
            )
        schedulers = []
        if self.lr_decay is not None:
            schedulers.append(ExponentialLR(optimizer, gamma=self.lr_decay))
        if len(optimizers) == 1 and not schedulers:
            return optimizer
        return optimizers, schedulers
