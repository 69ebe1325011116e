"""scvi-tools' training plan, made safe for distributed training with extra metrics."""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan as ScviTrainingPlan

from scgexp.train._callbacks import RestoreBestWeights

# scvi-tools logs metrics under ``torch.inference_mode``; with ``sync_dist`` (DDP) Lightning
# later averages those tensors in place outside inference mode and crashes. Running the same
# code under ``no_grad`` instead keeps every metric and works with any strategy.
_log_metrics = ScviTrainingPlan.compute_and_log_metrics.__wrapped__

_ON_PROGRESS_BAR = ("train_loss",)


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss stops being finite; the message says what to change.

    Examples
    --------
    >>> try:
    ...     model.train(max_epochs=100)
    ... except scgexp.train.TrainingDivergedError as error:
    ...     print(error)  # e.g. a lower learning rate: model.train(plan_kwargs={"lr": ...})
    """


class TrainingPlan(ScviTrainingPlan):
    """:class:`scvi.train.TrainingPlan` that also works under distributed data parallel.

    scvi-tools 1.4 logs a module's ``extra_metrics`` inside ``torch.inference_mode``, which
    breaks DDP's metric synchronisation (``Inplace update to inference tensor outside
    InferenceMode``). This plan logs the same metrics under ``torch.no_grad``. A learning-rate
    plateau on a validation metric steps after each validation, so it also works with
    ``check_val_every_n_epoch`` above 1 (scvi-tools' stopped training after the first epoch).
    On one device the losses and metrics are summed over the epoch and logged once, in its last
    step (the same means as scvi-tools' per-minibatch logging, without Lightning's cost per
    step).

    Examples
    --------
    Every scgexp model trains with it (``_training_plan_cls``); so can another scvi-tools
    model class:

    >>> class MyModel(scvi.model.SCVI):
    ...     _training_plan_cls = scgexp.train.TrainingPlan
    >>> MyModel.setup_anndata(adata)
    >>> MyModel(adata).train(max_epochs=10)
    >>> MyModel(adata).train(  # doctest: +SKIP
    ...     devices=2, strategy="ddp_find_unused_parameters_true"
    ... )
    """

    def forward(self, *args, **kwargs):
        """The module's forward pass; in fitting, a loss that is not finite stops training.

        Without this check a deterministic model (ZINB, DGEX) would train on through NaN
        weights and return NaN outputs; a VAE would fail in torch with no hint of the cause.
        Training and validation losses count (weights can turn NaN in an epoch's last step).
        The check is read at the end of each epoch, so steps need no host-device sync.
        """
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        try:
            outputs = super().forward(*args, **kwargs)
        except ValueError as error:  # torch.distributions refusing NaN parameters
            if fitting and "invalid values" in str(error):
                raise TrainingDivergedError(self._divergence_message()) from error
            raise
        if fitting:
            self._check_finite(outputs[2].loss)
        return outputs

    def _check_finite(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self._finite = finite if getattr(self, "_finite", None) is None else self._finite & finite

    def on_train_end(self):
        """Refuse weights that are not finite at the end (no loss reads the last step's)."""
        super().on_train_end()  # scvi-tools 1.5: undoes compile=True's process-wide dynamo setting
        if not all(torch.isfinite(p).all() for p in self.module.parameters()):
            raise TrainingDivergedError(self._divergence_message())

    def on_train_epoch_end(self):
        """Stop with advice if a loss of this epoch was not finite.

        Under DDP every process decides alone, with no collective here (Lightning syncs its
        metrics lazily, in an order a collective would break): a non-finite gradient reaches
        every process's weights through DDP's averaging, so all see a non-finite loss in the same
        epoch. (A validation loss made non-finite by one process's data alone would stop that
        process only; setup refuses NaN and infinite values, so it takes extreme finite ones.)
        """
        self._log_epoch("train")
        finite, self._finite = getattr(self, "_finite", None), None
        if finite is not None and not bool(finite):
            raise TrainingDivergedError(self._divergence_message())

    def _divergence_message(self) -> str:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else 0
        kept = any(
            isinstance(c, RestoreBestWeights) and c.best_epoch is not None
            for c in self.trainer.callbacks
        )
        return (
            f"Training diverged in epoch {self.current_epoch + 1}: the loss became NaN or "
            f"infinite. Lower the learning rate (train(lr=...); it is {lr:g} now), keep "
            "gradient clipping on (train(gradient_clip_val=...)), or look for extreme values in "
            "the input. "
            + (
                "The model keeps the weights of its best epoch so far and can be used as trained."
                if kept
                else "Then train a new model."
            )
        )

    def training_step(self, batch, batch_idx):
        """scvi-tools' training step, with the loss logged as an epoch mean (see below)."""
        if self.on_step or not self.on_epoch:
            return super().training_step(batch, batch_idx)
        if "kl_weight" in self.loss_kwargs:
            kl_weight = self.kl_weight
            self.loss_kwargs.update({"kl_weight": kl_weight})
            self.log("kl_weight", kl_weight, on_step=True, on_epoch=False)
        return self._epoch_mean_step(batch, batch_idx, "train")

    def validation_step(self, batch, batch_idx):
        """scvi-tools' validation step, with the loss logged as an epoch mean (see below)."""
        if self.on_step or not self.on_epoch:
            return super().validation_step(batch, batch_idx)
        self._epoch_mean_step(batch, batch_idx, "validation")

    def _epoch_mean_step(self, batch, batch_idx, mode: str):
        """Forward a minibatch; add its loss and metrics to the epoch's means."""
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        n_cells = loss_output.n_obs_minibatch
        self._add_to_epoch_means(mode, {f"{mode}_loss": loss_output.loss}, n_cells)
        metrics = self.train_metrics if mode == "train" else self.val_metrics
        self.compute_and_log_metrics(loss_output, metrics, mode)
        if loss_output.extra_metrics:  # scvi-tools' autotune with scib-metrics reads these
            stage = "training" if mode == "train" else "validation"
            self.prepare_scib_autotune(loss_output.extra_metrics, stage)
        self._log_epoch_at_last_batch(mode, batch_idx)
        return loss_output.loss

    def compute_and_log_metrics(self, loss_output, metrics, mode: str):
        """Add a minibatch to the epoch's ELBO and extra metrics, logged in its last step.

        scvi-tools logs each metric on every step; Lightning's bookkeeping of a logged value
        costs more than a small network's step (about 40% of the ZINB autoencoder's epoch on
        2,000 cells), so this plan sums the values and logs the same epoch means once. With
        ``on_step=True``, or across processes (where Lightning syncs its logged values in its
        own order, which a collective here could break), it logs as scvi-tools does (under
        ``no_grad``, see the class note).
        """
        with torch.no_grad():
            if self.on_step or not self.on_epoch or self.use_sync_dist:
                _log_metrics(self, loss_output, metrics, mode)
                return
            n_cells = loss_output.n_obs_minibatch
            metrics[f"elbo_{mode}"].update(
                reconstruction_loss=loss_output.reconstruction_loss_sum,
                kl_local=loss_output.kl_local_sum,
                kl_global=loss_output.kl_global_sum,
                n_obs_minibatch=n_cells,
            )
            self._epoch_metrics[mode] = metrics
            extra = {
                f"{key}_{mode}": value
                for key, value in loss_output.extra_metrics.items()
                if not isinstance(value, torch.Tensor) or value.dim() == 0  # as scvi-tools
            }
            self._add_to_epoch_means(mode, extra, n_cells)

    @property
    def _epoch_metrics(self) -> dict:
        """Per mode: the ELBO metric objects updated this epoch."""
        return self.__dict__.setdefault("_elbo_metrics_of_epoch", {})

    @property
    def _epoch_sums(self) -> dict:
        """Per mode and name: the sum of value × cells this epoch, and the cells."""
        return self.__dict__.setdefault("_sums_of_epoch", {})

    def _add_to_epoch_means(self, mode: str, values: dict, n_cells: int) -> None:
        """Add a minibatch's values to the means logged at the end of the epoch.

        The same as ``self.log(name, value, on_step=False, on_epoch=True)`` for each value
        (a mean weighted by minibatch size), without Lightning's work on every step.
        """
        # float32, as Lightning logs them (under bf16-mixed a bf16 sum would lose small terms);
        # Python numbers (the KL weight) stay on the host: a copy to a GPU would wait for it.
        values = {
            k: v.detach().float() if torch.is_tensor(v) else float(v) for k, v in values.items()
        }
        if self.use_sync_dist:  # see compute_and_log_metrics
            for name, value in values.items():
                self.log(
                    name,
                    value,
                    on_step=False,
                    on_epoch=True,
                    prog_bar=name in _ON_PROGRESS_BAR,
                    batch_size=n_cells,
                    sync_dist=True,
                )
            return
        sums = self._epoch_sums.setdefault(mode, {})
        for name, value in values.items():
            total, cells = sums.get(name, (0.0, 0))
            sums[name] = (total + value * n_cells, cells + n_cells)

    def _log_epoch_at_last_batch(self, mode: str, batch_idx: int) -> None:
        """Log the epoch's values in its last step.

        Lightning runs callbacks' epoch-end hooks (the progress bar's too) before the plan's;
        logged here, they see this epoch's values. Where the last batch is not known, the
        plan's epoch-end hook logs them.
        """
        trainer = self.trainer
        if mode == "train":
            last = trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        else:
            sanity = trainer.sanity_checking
            n_batches = trainer.num_sanity_val_batches if sanity else trainer.num_val_batches
            last = bool(n_batches) and batch_idx + 1 >= n_batches[0]
        if last:
            self._log_epoch(mode)

    def _log_epoch(self, mode: str) -> None:
        """Log the epoch's means and ELBO metrics of ``mode`` (if any left), and start new ones."""
        sums = self._epoch_sums.pop(mode, {})
        values = {name: total / cells for name, (total, cells) in sums.items()}
        metrics = self._epoch_metrics.pop(mode, {})
        with torch.no_grad():
            values.update({name: metric.compute() for name, metric in metrics.items()})
        for metric in metrics.values():
            metric.reset()
        for name, value in values.items():
            self.log(name, value, on_step=False, on_epoch=True, prog_bar=name in _ON_PROGRESS_BAR)

    def _clear_epoch(self, mode: str) -> None:
        """Drop what an interrupted epoch (or a sanity check) left."""
        self._epoch_sums.pop(mode, None)
        for metric in self._epoch_metrics.pop(mode, {}).values():
            metric.reset()

    def on_train_epoch_start(self):
        self._clear_epoch("train")

    def on_validation_epoch_start(self):
        self._clear_epoch("validation")

    def on_validation_epoch_end(self):
        """Log the epoch's validation metrics."""
        self._log_epoch("validation")

    def get_optimizer_creator(self):
        """scvi-tools' optimiser, not fused when gradients are clipped under a gradient scaler.

        scvi-tools 1.5 builds fused Adam/AdamW by default (``fused_optimizer=True``); a fused
        optimiser unscales inside ``step()``, so under "16-mixed" Lightning refuses to clip its
        gradients. (scvi-tools 1.4 has no fused optimiser and ignores the attribute.)
        """
        trainer = self._trainer
        if (
            trainer is not None
            and getattr(trainer.precision_plugin, "scaler", None) is not None
            and (trainer.gradient_clip_val or getattr(self, "gradient_clip_val", None))
        ):
            self.fused_optimizer = False
        return super().get_optimizer_creator()

    def configure_optimizers(self):
        """scvi-tools' optimiser and scheduler; a validation plateau steps when validation runs."""
        config = super().configure_optimizers()
        scheduler = config.get("lr_scheduler")
        if scheduler is not None and "validation" in scheduler["monitor"]:
            scheduler["frequency"] = getattr(self.trainer, "check_val_every_n_epoch", None) or 1
        return config
