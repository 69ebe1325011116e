"""Lightning callbacks shared by scgexp models."""

from __future__ import annotations

import copy
import logging
import math

import lightning.pytorch as pl
import torch

from scgexp._warn import warn_user

logger = logging.getLogger(__name__)


# A frozen scArches query model trains only its new entries: a best first epoch means more
# often that there was little to learn than a high learning rate.
QUERY_FIRST_EPOCH_CAUSE = (
    "The query's new entries may have had little left to learn (the reference already fits "
    "it), or the learning rate is too high for them: try a lower one (train(lr=...))."
)


class RestoreBestWeights(pl.Callback):
    """Keep the module's weights from the epoch with the best ``monitor`` value, restore at end.

    Kept in memory (no checkpoint files), so it costs one copy of the weights.

    Parameters
    ----------
    monitor
        Logged metric to watch, e.g. ``"mae_validation"``: read after each validation if its
        name contains "validation", else at the end of each training epoch.
    mode
        ``"min"`` or ``"max"``.
    first_epoch_cause
        The model's likely cause of a best first epoch, said instead of a high learning rate
        (e.g. :data:`QUERY_FIRST_EPOCH_CAUSE`, or DGEX's ridge start that training cannot
        improve on).
    warmup_epochs
        Epochs never restored, as scvi-tools' ``early_stopping_warmup_epochs`` leaves them out
        of early stopping (e.g. those of KL annealing, whose loss is not the final one's).
    min_delta
        Smallest change of ``monitor`` that counts as an improvement
        (``early_stopping_min_delta``).

    Examples
    --------
    Every scgexp model adds it when it trains with early stopping; an scvi-tools model can too:

    >>> scvi_model = scvi.model.SCVI(adata)
    >>> scvi_model.train(max_epochs=100, callbacks=[RestoreBestWeights("elbo_validation")])
    """

    def __init__(
        self,
        monitor: str,
        mode: str = "min",
        first_epoch_cause: str | None = None,
        warmup_epochs: int = 0,
        min_delta: float = 0.0,
    ):
        super().__init__()
        self.monitor = monitor
        self.first_epoch_cause = first_epoch_cause
        self.sign = 1.0 if mode == "min" else -1.0
        self.warmup_epochs = int(warmup_epochs)
        self.min_delta = abs(float(min_delta))
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        # Validation metrics are read after each validation; training metrics at the end of
        # the training epoch, when Lightning has published that epoch's values (after
        # validation: read there, they would be the previous epoch's).
        self._validation_metric = "validation" in monitor or monitor.startswith("val_")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._validation_metric:
            self._keep_if_best(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_metric:
            self._keep_if_best(trainer, pl_module)

    def _keep_if_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        if trainer.current_epoch < self.warmup_epochs:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(score):
            return  # a diverged epoch is never the best one
        if (
            self.best_score is None
            or self.sign * score < self.sign * self.best_score - self.min_delta
        ):
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self._best_state = copy.deepcopy(pl_module.module.state_dict())

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Keep the best weights when training stops with an error (e.g. it diverged)."""
        if self._best_state is not None:
            pl_module.module.load_state_dict(self._best_state)
            error = type(exception).__name__
            logger.info("Restored weights of epoch %d after %s.", self.best_epoch + 1, error)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._best_state is not None:
            pl_module.module.load_state_dict(self._best_state)
            logger.info(
                "Restored weights of epoch %d (%s = %.4g).",
                self.best_epoch + 1,  # counted from 1, as the progress bar does
                self.monitor,
                self.best_score,
            )
            if self.best_epoch == 0 and trainer.current_epoch >= 3:
                cause = self.first_epoch_cause or (
                    "The learning rate may be too high: try a lower one (train(lr=...))."
                )
                warn_user(
                    f"{self.monitor} was best after the first epoch and got worse in the "
                    f"{trainer.current_epoch - 1} epochs after it, so the model restored has had "
                    f"one epoch of training. {cause}"
                )


class KeepReferenceEntries(pl.Callback):
    """Train only the new entries of partly frozen parameters (scArches query models).

    Gradients of the other entries are zeroed after each backward pass (so gradient clipping,
    Lightning's or a plan's own, and the optimiser see only the new ones), and their values are
    put back after each minibatch, so weight decay or any optimiser leaves them exactly as they
    were. Kept in the callback, not as tensor hooks, so it survives copies and spawned
    processes.

    Parameters
    ----------
    entries
        Per parameter name of the module: a boolean mask of its trainable entries and the
        values of the others.

    Examples
    --------
    >>> query_model = ZINBAutoencoder.load_query_data(query, "reference_model")
    >>> query_model.train()  # adds KeepReferenceEntries(query_model._reference_entries)
    """

    def __init__(self, entries: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.entries = entries
        self._on_device: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        parameters = dict(pl_module.module.named_parameters())
        self._on_device = []
        for name, (new, kept) in self.entries.items():
            parameter = parameters[name]
            self._on_device.append(
                (parameter, new.to(parameter.device), kept.to(parameter.device, parameter.dtype))
            )

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for parameter, new, _ in self._on_device:
            if parameter.grad is not None:
                parameter.grad.mul_(new)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            for parameter, new, kept in self._on_device:
                parameter.copy_(torch.where(new, parameter, kept))
