"""The ``train`` method every scgexp model shares: scvi-tools' own, with a choice of data path."""

from __future__ import annotations

import difflib
import inspect
import logging
import warnings

from lightning.pytorch import Trainer as TrainerBase
from scvi import settings
from scvi.model.base import UnsupervisedTrainingMixin
from scvi.train import SaveCheckpoint, Trainer

from scgexp._compat import SimpleLogger, validate_data_split
from scgexp._io import _load_weights, _read_saved_model
from scgexp._warn import warn_user
from scgexp.data._checks import InputError, cell_positions, check_batch_size
from scgexp.dataloaders import DataMode, DataSplitter
from scgexp.dataloaders._loaders import in_requested_order
from scgexp.train._callbacks import (
    QUERY_FIRST_EPOCH_CAUSE,
    KeepReferenceEntries,
    RestoreBestWeights,
)
from scgexp.train._plans import InvarianceTrainingPlan
from scgexp.train._trainingplan import TrainingDivergedError, TrainingPlan

logger = logging.getLogger(__name__)

#: Other libraries' names for training arguments, which difflib matches badly.
_OTHER_NAMES = {"learning_rate": ["lr"], "epochs": ["max_epochs"], "n_epochs": ["max_epochs"]}
_KL_WEIGHT = (
    "The KL weight follows the plan's warm-up schedule at every step: set its final value "
    "with plan_kwargs={'max_kl_weight': ...} (and n_epochs_kl_warmup= for the warm-up)."
)

# Lightning precisions that keep the weights in float32 ("-true" and 64 cast them).
_PRECISIONS = {"32", "32-true", "16", "16-mixed", "bf16", "bf16-mixed"}


class TrainingMixin(UnsupervisedTrainingMixin):
    """:class:`scvi.model.base.UnsupervisedTrainingMixin` with scgexp's fast data paths.

    Adds ``data_mode`` to ``train``: ``"auto"`` (default) loads data that fit in memory once
    as tensors on the training device, streams backed AnnData from disk, and falls back to
    scvi-tools' loader otherwise; ``"memory"``, ``"stream"`` and ``"standard"`` force one
    path. See :class:`scgexp.dataloaders.DataSplitter`. Its training plan,
    :class:`scgexp.train.TrainingPlan`, works under distributed data parallel. With early
    stopping, validation runs every epoch and the weights of the best epoch (by the early
    stopping metric) are restored at the end (:class:`scgexp.train.RestoreBestWeights`), unless
    a model sets ``_restore_best_weights = False``.

    Examples
    --------
    A model of one's own (with its ``setup_anndata``) trains on scgexp's data paths:

    >>> class MyModel(TrainingMixin, BaseModelClass):
    ...     def __init__(self, adata):
    ...         super().__init__(adata)
    ...         self.module = MyModule(n_input=self.summary_stats.n_vars)
    >>> MyModel(adata).train(max_epochs=50, data_mode="memory")
    """

    _data_splitter_cls = DataSplitter
    _training_plan_cls = TrainingPlan
    _restore_best_weights = True

    def _make_data_loader(self, adata, indices=None, batch_size=None, shuffle=False, **kwargs):
        """scvi-tools' inference loader; backed rows come in the order of ``indices``."""
        data = self.adata if adata is None else adata  # None: scvi-tools says what to pass
        check_batch_size(batch_size)
        if indices is not None and data is not None:
            indices = cell_positions(indices, data.n_obs)
        return in_requested_order(
            super()._make_data_loader(
                adata, indices=indices, batch_size=batch_size, shuffle=shuffle, **kwargs
            )
        )

    def _plan_parameters(self) -> set[str]:
        """Names the training plan or the module's loss reads from ``plan_kwargs``."""
        known = set()
        callables = [
            c.__dict__["__init__"]
            for c in self._training_plan_cls.__mro__
            if "__init__" in c.__dict__
        ]
        for function in [*callables, self.module.loss]:
            parameters = inspect.signature(function).parameters.values()
            known |= {
                p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            }
        # The loss's kl_weight is set by the plan's schedule at each step (max_kl_weight).
        internal = {"self", "module", "tensors", "inference_outputs", "generative_outputs"}
        return known - internal - {"kl_weight"}

    def _check_train_arguments(self, kwargs: dict) -> None:
        """Refuse what no part of training reads, before Lightning's bare ``TypeError``.

        Unknown ``plan_kwargs`` (scvi-tools would pass them to the loss, unread) and training
        arguments that are none of scvi-tools' or Lightning's. scvi-tools' models take some
        plan settings directly (MULTIVI's ``adversarial_mixing``, ``n_steps_kl_warmup``); here
        they go in ``plan_kwargs``.
        """
        plan = self._plan_parameters()
        has_kl_weight = "kl_weight" in inspect.signature(self.module.loss).parameters
        for key in kwargs.get("plan_kwargs") or {}:
            if key == "kl_weight" and has_kl_weight:
                raise InputError(_KL_WEIGHT)
            if key not in plan:
                close = difflib.get_close_matches(key, plan, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise InputError(f"plan_kwargs has an unknown argument {key!r}.{hint}")
        accepted = {"ckpt_path"}  # scvi-tools' TrainRunner takes it out for Trainer.fit
        for function in (UnsupervisedTrainingMixin.train, Trainer.__init__, TrainerBase.__init__):
            parameters = inspect.signature(function).parameters.values()
            accepted |= {p.name for p in parameters if p.kind != p.VAR_KEYWORD}
        name = type(self).__name__
        for key in kwargs:
            if key in accepted:
                continue
            if key == "kl_weight" and has_kl_weight:
                raise InputError(_KL_WEIGHT)
            if key.startswith("adversarial"):
                has_invariance = "invariance" in inspect.signature(type(self).__init__).parameters
                raise InputError(
                    f"train() has no {key!r}: "
                    + (
                        f"{name} chooses its latent penalty when built, "
                        f"{name}(adata, invariance=...)."
                        if has_invariance
                        else f"{name} has no adversarial penalty."
                    )
                )
            if key in plan:
                raise InputError(
                    f"{key!r} is a training-plan setting: pass it as "
                    f"train(plan_kwargs={{{key!r}: ...}})."
                )
            close = _OTHER_NAMES.get(key) or difflib.get_close_matches(key, accepted | plan, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InputError(f"train() has no argument {key!r}.{hint}")
        if issubclass(self._training_plan_cls, InvarianceTrainingPlan) and (
            kwargs.get("accumulate_grad_batches", 1) != 1
        ):
            raise InputError(
                f"{name} trains with Lightning's manual optimisation (for its invariance "
                "penalty), which cannot accumulate gradients over minibatches: pass a larger "
                "batch_size instead of accumulate_grad_batches."
            )

    def _plan_settings(self, own: dict, plan_kwargs: dict | None, given=()) -> dict:
        """The training plan's settings: the model's (``own``), updated by ``plan_kwargs``.

        A setting given to ``train`` itself (not at its default; ``given``: Lightning arguments
        ``train`` has no parameter for) and, with another value, in ``plan_kwargs`` is refused:
        scvi-tools keeps the ``train`` argument, this package had kept the ``plan_kwargs`` one,
        and neither is what every user expects.
        """
        parameters = inspect.signature(type(self).train).parameters.values()
        defaults = {p.name: p.default for p in parameters}
        for key, value in (plan_kwargs or {}).items():
            default = defaults.get(key, inspect.Parameter.empty if key in given else own.get(key))
            if key in own and own[key] not in (default, value):
                raise InputError(
                    f"{key} is given twice, {own[key]!r} to train() and {value!r} in "
                    f"plan_kwargs; pass it once, as train({key}=...)."
                )
        return {**own, **(plan_kwargs or {})}

    def _first_epoch_cause(self) -> str | None:
        """What a best first epoch most likely means for this model; ``None``: the default."""
        if getattr(self, "_reference_entries", None) is not None:
            return QUERY_FIRST_EPOCH_CAUSE
        return None

    def train(
        self,
        *args,
        data_mode: DataMode = "auto",
        datasplitter_kwargs: dict | None = None,
        **kwargs,
    ):
        """Train the model; ``data_mode`` picks the data path, the rest is scvi-tools'.

        A ``train_size`` that leaves no validation cells (e.g. 1.0) trains on every cell,
        without early stopping or a learning-rate schedule on the validation loss. Each call is
        a new run, as in scvi-tools: the weights carry over and ``history`` is appended to, but
        the optimiser and the schedules (warm-up, KL annealing, learning rate) start again.
        Arguments that no part of training reads (with the closest name, or where a
        training-plan setting goes), unknown ``plan_kwargs``, ``max_epochs < 1``,
        ``batch_size < 2``, splits with fewer than 2 training cells, and scvi-tools'
        ``trainer_config``/``plan_config`` (which rank below the models' own defaults; pass
        their settings as arguments) are refused.
        ``logger=False`` keeps an in-memory logger that writes nothing (a learning-rate schedule
        on the validation loss needs one), and scvi-tools'
        ``SaveCheckpoint(load_best_on_end=True)`` loads its best save at the end.

        Parameters
        ----------
        *args, **kwargs
            As for :meth:`scvi.model.base.UnsupervisedTrainingMixin.train` (``max_epochs``,
            ``batch_size``, ``accelerator``, ``devices``, ``strategy``, ...).
        data_mode
            ``"auto"``, ``"memory"``, ``"stream"`` or ``"standard"``
            (see :class:`scgexp.dataloaders.DataSplitter`).
        datasplitter_kwargs
            Other arguments of the data splitter (e.g. ``block_rows`` for streaming).

        Examples
        --------
        >>> model.train(max_epochs=50, data_mode="standard")  # scvi-tools' own loader
        """
        if self.adata is None:
            raise InputError(
                "This model was loaded without data and cannot train; load it with its data: "
                f"`{type(self).__name__}.load(dir, adata=...)`."
            )
        for name, instead in (("trainer_config", "**{}"), ("plan_config", "plan_kwargs={}")):
            # scvi-tools gives these the lowest precedence, below the model's own defaults
            if kwargs.get(name) is not None:
                raise InputError(
                    f"{name} is not read by scgexp models (the models' defaults would override "
                    f"it); pass its settings as train({instead.format(name)})."
                )
        self._validate_anndata()  # registered data changed since setup would train on moved genes
        self._check_train_arguments(kwargs)
        max_epochs, batch_size = kwargs.get("max_epochs"), kwargs.get("batch_size")
        precision = kwargs.get("precision")
        if precision is not None and str(precision) not in _PRECISIONS:
            raise InputError(
                f"precision={precision!r} would leave the model's weights and statistics in "
                "another number format after training, which its outputs cannot use. Use mixed "
                "precision (precision='bf16-mixed', or '16-mixed' on a GPU) or the default 32."
            )
        if max_epochs is not None and max_epochs < 1:
            raise InputError(f"max_epochs must be at least 1, not {max_epochs}.")
        if batch_size is not None and batch_size < 2:
            raise InputError(
                f"batch_size must be at least 2 cells (batch norm), not {batch_size}."
            )
        datasplitter_kwargs = {"data_mode": data_mode, **(datasplitter_kwargs or {})}
        train_size = kwargs.get("train_size")
        with warnings.catch_warnings(action="ignore"):  # scvi-tools warns again when it splits
            n_train, n_validation = validate_data_split(
                self.adata.n_obs,
                0.9 if train_size is None else train_size,
                kwargs.get("validation_size"),
                batch_size,
                train_size_is_none=train_size is None,
            )
        if n_train < 2:
            raise InputError(
                f"The split leaves {n_train} training cell(s) of {self.adata.n_obs}; training "
                "needs at least 2. "
                + (
                    "Raise train_size (1.0: no validation cells) or use more cells."
                    if self.adata.n_obs >= 2
                    else "Train on at least 2 cells."
                )
            )
        # Lightning warns on every small data set whose epoch has fewer steps than its interval.
        # (A one-cell last minibatch is left out by the splitter.)
        steps = n_train // (batch_size or settings.batch_size)
        steps += n_train % (batch_size or settings.batch_size) > 1
        kwargs.setdefault("log_every_n_steps", max(1, min(10, steps)))
        if n_validation == 0:
            # No validation cells: nothing to stop early on or to schedule the learning rate by.
            # (Lightning asks for validation batches whenever early stopping is on, so a
            # training monitor fails there too, as in scvi-tools.)
            if kwargs.get("early_stopping"):
                fix = (
                    "a train_size below 1"
                    if train_size is not None and train_size >= 1
                    else "a smaller train_size (e.g. 0.7) or more cells"
                )
                warn_user(
                    f"The split leaves no validation cells ({n_train} of {self.adata.n_obs} "
                    "cells train): training runs all epochs without early stopping or "
                    "learning-rate plateau. Pass early_stopping=False to say so, or "
                    f"{fix} for early stopping."
                )
            kwargs["early_stopping"] = False
            kwargs["plan_kwargs"] = {
                **(kwargs.get("plan_kwargs") or {}),
                "reduce_lr_on_plateau": False,
            }
        else:
            kwargs.setdefault("check_val_every_n_epoch", 1)
        if issubclass(self._training_plan_cls, InvarianceTrainingPlan) and (
            kwargs.get("gradient_clip_val") is not None
        ):  # Lightning cannot clip under manual optimisation: the plan clips itself
            clip = {"gradient_clip_val": kwargs.pop("gradient_clip_val")}
            if "gradient_clip_algorithm" in kwargs:
                clip["gradient_clip_algorithm"] = kwargs.pop("gradient_clip_algorithm")
            kwargs["plan_kwargs"] = self._plan_settings(clip, kwargs.get("plan_kwargs"), clip)
        # A copy: scvi-tools' Trainer appends its own callbacks to the list it is given.
        kwargs["callbacks"] = list(kwargs.get("callbacks") or [])
        restore = None
        if kwargs.get("early_stopping") and self._restore_best_weights:
            restore = RestoreBestWeights(
                kwargs.get("early_stopping_monitor", "elbo_validation"),
                mode=kwargs.get("early_stopping_mode", "min"),
                first_epoch_cause=self._first_epoch_cause(),
                warmup_epochs=kwargs.get("early_stopping_warmup_epochs", 0),
                min_delta=kwargs.get("early_stopping_min_delta", 0.0),
            )
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), restore]
        if getattr(self, "_reference_entries", None):  # a query model from load_query_data
            kwargs["callbacks"] = [
                *(kwargs.get("callbacks") or []),
                KeepReferenceEntries(self._reference_entries),
            ]
        if kwargs.get("logger") is False:  # the learning-rate monitor of a plateau schedule
            kwargs["logger"] = SimpleLogger()  # needs one; this one writes nothing to disk
        # scvi-tools' SaveCheckpoint reads its best save back (at the end, or after an error with
        # check_nan_gradients) in scvi-tools' own format: scgexp does it here, in its own.
        checkpoints = {
            callback: (callback.load_best_on_end, callback.check_nan_gradients)
            for callback in kwargs.get("callbacks") or []
            if isinstance(callback, SaveCheckpoint)
        }
        self.module.train()  # outputs and load() leave eval mode, which Lightning would keep
        try:
            for callback in checkpoints:
                callback.load_best_on_end = callback.check_nan_gradients = False
            with warnings.catch_warnings():
                # Lightning 2.6 on torch >= 2.10 warns about its own internals on every fit.
                warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`")
                # The streamed data set counts its minibatches and always loads in-process.
                warnings.filterwarnings("ignore", r"Your `IterableDataset` has `__len__`")
                runner = super().train(*args, datasplitter_kwargs=datasplitter_kwargs, **kwargs)
            self._load_best_saves([c for c, (at_end, _) in checkpoints.items() if at_end])
            return runner
        except Exception as error:
            if self._load_best_saves([c for c, (_, on_error) in checkpoints.items() if on_error]):
                self.is_trained_ = True
            elif (
                isinstance(error, TrainingDivergedError)
                and restore is not None
                and restore.best_epoch is not None
            ):
                # The best epoch's weights are back (and the history kept): usable as trained.
                self.is_trained_ = True
            raise
        finally:  # outputs run in eval mode (some of scvi-tools' never set it)
            for callback, (at_end, on_error) in checkpoints.items():
                callback.load_best_on_end, callback.check_nan_gradients = at_end, on_error
            self.module.eval()

    def _load_best_saves(self, checkpoints: list) -> bool:
        """Load the best save of each ``SaveCheckpoint`` that made one; whether any did."""
        loaded = False
        for callback in checkpoints:
            if callback.best_model_path:
                state = _read_saved_model(callback.best_model_path, None)[1]
                _load_weights(self.module, state, callback.best_model_path)
                logger.info("Loaded the best checkpoint, %s.", callback.best_model_path)
                loaded = True
        return loaded
