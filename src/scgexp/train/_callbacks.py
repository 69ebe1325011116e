"""Lightning callbacks shared by scgexp models."""

from __future__ import annotations

import copy
import logging
import math

import lightning.pytorch as pl
import torch

from scgexp._warn import warn_user

logger = logging.getLogger(__name__)


class RestoreBestWeights(pl.Callback):
    """Keep the module's weights from the epoch with the best ``monitor`` value, restore at end.

    Kept in memory (no checkpoint files), so it costs one copy of the weights.

    Parameters
    ----------
    monitor
        Logged metric to watch, e.g. ``"mae_validation"``.
    mode
        ``"min"`` or ``"max"``.
    """

    def __init__(self, monitor: str, mode: str = "min"):
        super().__init__()
        self.monitor = monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(score):
            return  # a diverged epoch is never the best one
        if self.best_score is None or self.sign * score < self.sign * self.best_score:
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
                warn_user(
                    f"{self.monitor} was best after the first epoch and got worse in the "
                    f"{trainer.current_epoch - 1} epochs after it, so the model restored has had "
                    "one epoch of training. The learning rate may be too high: try a lower one "
                    "(train(lr=...))."
                )
