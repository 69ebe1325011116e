"""D-GEX as an scvi-tools model: infer target genes from landmark genes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy.stats import rankdata
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField
from scvi.model.base import BaseModelClass
from scvi.utils import setup_anndata_dsp

from scgexp._io import SafeSaveMixin
from scgexp._warn import warn_user
from scgexp.data._checks import (
    InputError,
    cell_positions,
    check_architecture,
    check_batch_size,
    check_matrix,
    check_model_arguments,
    check_setup_arguments,
    get_matrix,
    refuse_unknown_arguments,
)
from scgexp.data._matrix import dense, positions_among, take_columns
from scgexp.dgex._fields import LANDMARK_REGISTRY_KEY, LandmarkField
from scgexp.dgex._module import N_QUANTILES, DGEXModule
from scgexp.nn._tensors import copy_into
from scgexp.train import TrainingMixin

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

logger = logging.getLogger(__name__)

_CHUNK = 4096
_MAX_QUANTILE_ROWS = 50_000


class _RidgeStart(pl.Callback):
    """Fit the linear path on the training split once the split is known."""

    def __init__(self, model: DGEX):
        self.model = model

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = np.asarray(trainer.datamodule.train_idx)
        self.model._initialise_linear_skip(rows)
        self.model.module.to(pl_module.device)


class DGEX(SafeSaveMixin, TrainingMixin, BaseModelClass):
    """D-GEX: infer the expression of target genes from landmark genes :cite:p:`Chen2016`.

    A multilayer perceptron maps the (standardised) landmark genes to every target gene. Each
    gene is standardised inside the model, so predictions come back in the units of the
    training data (e.g. log2 expression or log1p-normalised counts).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden
        Units per hidden layer.
    n_layers
        Hidden layers (1–3 in the paper).
    dropout_rate
        Dropout on hidden units.
    activation
        ``"tanh"`` (the paper's), ``"relu"``, ``"gelu"`` or ``"leaky_relu"``.
    loss
        ``"mse"`` (the paper's; the variance head is trained beside it without changing the
        mean) or ``"gaussian"`` (mean and variance fitted jointly).
    variance
        ``"value"`` (a standard deviation for each prediction) or ``"gene"`` (one per gene).
    linear_skip
        Add a linear path from landmarks to targets beside the hidden layers (not in the
        original D-GEX); the network then learns only the nonlinear remainder. On by default:
        it keeps DGEX at least as good as linear regression on small data.
    **model_kwargs
        None accepted: every setting of :class:`~scgexp.dgex.DGEXModule` is an
        argument above or comes from setup; others are refused with the closest name.

    Examples
    --------
    >>> adata = scgexp.data.simulate_bulk_expression()
    >>> scgexp.model.DGEX.setup_anndata(adata, landmark_key="landmark")
    >>> model = scgexp.model.DGEX(adata)
    >>> model.train(max_epochs=20)
    >>> predicted = model.predict(adata[:, adata.var["landmark"]])
    >>> adata.obsm["X_dgex"] = model.get_latent_representation()
    """

    _module_cls = DGEXModule
    _load_hint = (
        " To predict from the landmark genes alone, load the model without data "
        "(`DGEX.load(dir)`) and call `model.predict(adata)`."
    )

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_hidden: int = 2000,
        *,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        activation: Literal["tanh", "relu", "gelu", "leaky_relu"] = "tanh",
        loss: Literal["mse", "gaussian"] = "mse",
        variance: Literal["gene", "value"] = "value",
        linear_skip: bool = True,
        **model_kwargs,
    ):
        check_model_arguments(type(self), self._module_cls, model_kwargs)
        check_architecture(
            dropout_rate, loading=registry is not None, n_hidden=n_hidden, n_layers=n_layers
        )
        super().__init__(adata, registry)
        state = self.get_state_registry(LANDMARK_REGISTRY_KEY)
        self.landmark_names = pd.Index(state["landmark_names"])
        self.target_names = pd.Index(state["target_names"])
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            landmark_index=state["landmark_index"],
            target_index=state["target_index"],
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            activation=activation,
            loss=loss,
            variance=variance,
            linear_skip=linear_skip,
            **model_kwargs,
        )
        if adata is not None and registry is None:  # (load() brings the saved statistics)
            self._fit_standardisation(state["landmark_index"], state["target_index"])
        self._model_summary_string = (
            f"DGEX: {len(self.landmark_names)} landmarks -> {len(self.target_names)} targets, "
            f"{n_layers} x {n_hidden} {activation} units, dropout {dropout_rate}, loss {loss}, "
            f"variance per {variance}, linear skip {linear_skip}"
        )
        self.ridge_alpha_ = None
        self.init_params_ = self._get_init_params(locals())

    def _first_epoch_cause(self) -> str | None:
        if self.module.skip is None:
            return None
        return (
            "Training starts from ridge regression on the landmarks (linear_skip=True): on "
            "these data the network found nothing to add to it, and the model restored is "
            "about that linear fit. Expected when the targets depend on the landmarks about "
            "linearly or the samples are few; a lower learning rate (train(lr=...)) may still "
            "let the network find a nonlinear part."
        )

    def get_state_registry(self, registry_key: str) -> dict:
        """State of a registered field, also for a model loaded without data."""
        return self.registry_["field_registries"][registry_key]["state_registry"]

    def _fit_standardisation(self, landmark_index: list[int], target_index: list[int]) -> None:
        """Per-gene mean and scale, and landmark quantiles.

        The scale is the standard deviation + 1e-3, as in D-GEX, for log expression; for data
        in smaller units (a typical gene's deviation under 0.1) + 1% of that deviation, so that
        the standardised values keep their spread.
        """
        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        n_obs = matrix.shape[0]
        total = np.zeros(matrix.shape[1])
        total_sq = np.zeros(matrix.shape[1])
        low, high = np.full(matrix.shape[1], np.inf), np.full(matrix.shape[1], -np.inf)
        whole_numbers = True
        for start in range(0, n_obs, _CHUNK):
            block = dense(matrix[start : start + _CHUNK]).astype(np.float64)
            total += block.sum(0)
            total_sq += (block**2).sum(0)
            low, high = np.minimum(low, block.min(0)), np.maximum(high, block.max(0))
            whole_numbers = whole_numbers and bool(np.all(block == np.round(block)))
        if whole_numbers and high.max() > 1:
            warn_user(
                "Every training value is a whole number (raw counts?). DGEX fits expression on "
                "a log scale, as D-GEX did; on counts the most expressed genes dominate its loss. "
                "Log-normalise first (sc.pp.normalize_total, then sc.pp.log1p), unless these "
                "are the units to predict."
            )
        mean = total / n_obs
        std = np.sqrt(np.maximum(total_sq / n_obs - mean**2, 0.0))
        typical = float(np.median(std[std > 0])) if (std > 0).any() else 1.0
        scale = std + min(1e-3, 0.01 * typical)
        rows = np.arange(n_obs)
        if n_obs > _MAX_QUANTILE_ROWS:
            rows = np.sort(np.random.default_rng(0).choice(n_obs, _MAX_QUANTILE_ROWS, False))
        landmarks = np.concatenate(  # a block of rows at a time
            [
                dense(matrix[rows[start : start + _CHUNK]][:, landmark_index])
                for start in range(0, len(rows), _CHUNK)
            ]
        )
        quantiles = np.quantile(landmarks, np.linspace(0, 1, N_QUANTILES), axis=0).T
        # the range of all rows (the others may come from a subsample)
        quantiles[:, 0], quantiles[:, -1] = low[landmark_index], high[landmark_index]
        consequences = {
            "landmark": "the model cannot learn how they act, so it reads them at that value in "
            "new data too (their measured values do not change predictions).",
            "target": "the model predicts that value for them with a standard deviation of "
            "about 0, which no training sample tested. Leave them out of the data, or train on "
            "samples where they vary.",
        }
        for kind, index, names in (
            ("landmark", landmark_index, self.landmark_names),
            ("target", target_index, self.target_names),
        ):
            constant = low[index] == high[index]
            if constant.any():
                warn_user(
                    f"{int(constant.sum())} {kind} genes have one value in every training "
                    f"sample (e.g. {', '.join(map(repr, names[constant][:5]))}): "
                    + consequences[kind]
                )
        copy_into(
            self.module,
            {
                "landmark_mean": mean[landmark_index],
                "landmark_scale": scale[landmark_index],
                "target_mean": mean[target_index],
                "target_scale": scale[target_index],
                "landmark_quantiles": quantiles,
            },
        )

    def _initialise_linear_skip(self, rows: np.ndarray) -> None:
        """Start the linear path at the ridge regression fitted on ``rows``.

        Each target's penalty is chosen by generalised cross-validation; every statistic is
        accumulated over chunks of rows, so only ``n_landmarks × n_targets`` numbers are held at
        once. The hidden layers' output starts small, so training begins near the ridge fit, and
        early stopping restores the epoch best on validation data. The ridge fit itself is not
        a candidate: a learning rate far above the default (e.g. 0.5) can leave the best epoch
        worse than where training started.
        """
        module = self.module
        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        landmark_index = module.landmark_index.cpu().numpy()
        target_index = module.target_index.cpu().numpy()
        standardise = lambda block, name: (  # noqa: E731
            (block - getattr(module, f"{name}_mean").cpu().numpy())
            / getattr(module, f"{name}_scale").cpu().numpy()
        )
        n_landmarks = len(landmark_index)
        xtx = np.zeros((n_landmarks, n_landmarks))
        xty = np.zeros((n_landmarks, len(target_index)))
        yty = np.zeros(len(target_index))
        rows = np.sort(rows)
        for start in range(0, len(rows), _CHUNK):
            block = dense(matrix[rows[start : start + _CHUNK]]).astype(np.float64)
            x, y = (
                standardise(block[:, landmark_index], "landmark"),
                standardise(block[:, target_index], "target"),
            )
            xtx += x.T @ x
            xty += x.T @ y
            yty += (y**2).sum(0)
        eigenvalues, eigenvectors = np.linalg.eigh(xtx)
        eigenvalues = np.maximum(eigenvalues, 0.0)
        projected = eigenvectors.T @ xty  # rotate X'Y into the eigenbasis once
        n = len(rows)
        alphas = np.logspace(-3, 5, 33) * n / n_landmarks
        gcv = np.empty((len(alphas), len(target_index)))
        dofs = np.empty(len(alphas))
        for i, alpha in enumerate(alphas):
            shrink = 1.0 / (eigenvalues + alpha)
            # RSS = Y'Y - 2 B'X'Y + B'X'X B with B = (X'X + a)^-1 X'Y, in the eigenbasis.
            rss = yty - ((2 * shrink - eigenvalues * shrink**2)[:, None] * projected**2).sum(0)
            dof = float((eigenvalues * shrink).sum())
            dofs[i] = dof
            gcv[i] = rss / max(n - dof, 1e-8) ** 2
        best = gcv.argmin(0)  # one penalty per target gene, as RidgeCV(alpha_per_target=True)
        coefficients = np.empty_like(projected)
        for i in np.unique(best):
            genes = best == i
            coefficients[:, genes] = eigenvectors @ (
                projected[:, genes] / (eigenvalues + alphas[i])[:, None]
            )
        alpha = float(np.median(alphas[best]))
        # The variance starts at the ridge fit's prediction error per gene (GCV's estimate, n ×
        # score), not at the gene's whole variance: its gradients are small (averaged over the
        # targets) and early stopping on the mean ends training long before it would get there.
        # GCV runs low for fits that nearly interpolate (dof close to n, as with about as many
        # samples as landmarks): no fit with dof ≤ n / 2 may do better than the estimate.
        error = gcv[best, np.arange(len(best))]
        stable = dofs <= n / 2
        if stable.any():
            error = np.maximum(error, gcv[stable].min(0))
        log_error = np.log(np.maximum(n * error, 1e-4))
        with torch.no_grad():
            module.skip.weight.copy_(torch.as_tensor(coefficients.T, dtype=torch.float32))
            module.mean_head.weight.mul_(0.1)  # small: start near the ridge fit, yet learn
            module.mean_head.bias.zero_()
            if module.variance == "value":
                module.log_var_head.weight.mul_(0.1)
                module.log_var_head.bias.copy_(torch.as_tensor(log_error, dtype=torch.float32))
            else:
                module.log_var.copy_(torch.as_tensor(log_error, dtype=torch.float32))
        self.ridge_alpha_ = float(alpha)
        logger.info("Linear path initialised by ridge regression (median alpha %.3g).", alpha)

    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        *,
        landmark_key: str = "landmark",
        **kwargs,
    ) -> None:
        """%(summary)s.

        Parameters
        ----------
        %(param_adata)s
        layer
            Key in ``adata.layers`` of the values to use; ``None``: ``X``. Values can be in any
            units (log2 microarray intensities, log1p-normalised counts); predictions come back
            in the same units.
        landmark_key
            Boolean column of ``adata.var``: ``True`` for landmark (input) genes, ``False`` for
            target genes. See :func:`scgexp.data.mark_landmarks`.

        Examples
        --------
        >>> n_landmarks = scgexp.data.mark_landmarks(adata, landmark_genes)
        >>> scgexp.model.DGEX.setup_anndata(adata, layer="log1p", landmark_key="landmark")
        """
        check_setup_arguments(cls.setup_anndata, kwargs, adata)
        setup_method_args = cls._get_setup_method_args(**locals())
        check_matrix(adata, layer, allow_empty_cells=True)
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            LandmarkField(landmark_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def train(
        self,
        max_epochs: int | None = 200,
        *,
        batch_size: int = 256,
        early_stopping: bool = True,
        early_stopping_patience: int = 15,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train with Adam, halving the learning rate when validation MAE stalls.

        Training stops early when validation MAE (in the data's units) has not improved for
        ``early_stopping_patience`` epochs, and the weights of the best epoch are restored.

        Parameters
        ----------
        max_epochs
            Upper bound on epochs (``None``: the default, 200).
        batch_size
            Minibatch size.
        early_stopping
            Stop on validation MAE and restore the best epoch's weights.
        early_stopping_patience
            Epochs without improvement before stopping.
        lr, weight_decay
            Adam's learning rate and weight decay.
        plan_kwargs
            Other :class:`scvi.train.TrainingPlan` arguments.
        **trainer_kwargs
            Passed to :meth:`scgexp.train.TrainingMixin.train` (``data_mode``, ``train_size``:
            share of samples for training, 0.9 by default; 1.0 trains without validation or
            early stopping) and on to Lightning (``accelerator``, ``devices``, ``strategy``, ...).

        Examples
        --------
        >>> model.train(max_epochs=100)
        >>> model.train(max_epochs=100, accelerator="gpu", devices=1)  # doctest: +SKIP
        """
        plan_kwargs = self._plan_settings(
            {
                "lr": lr,
                "weight_decay": weight_decay,
                "reduce_lr_on_plateau": True,
                "lr_scheduler_metric": "mae_validation",
                "lr_patience": max(2, early_stopping_patience // 3),
                "lr_factor": 0.5,
            },
            plan_kwargs,
        )
        max_epochs = 200 if max_epochs is None else max_epochs  # not scvi-tools' heuristic
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if self.module.skip is not None and self.ridge_alpha_ is None:
            callbacks.append(_RidgeStart(self))
        trainer_kwargs.setdefault("early_stopping_monitor", "mae_validation")
        return super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            plan_kwargs=plan_kwargs,
            callbacks=callbacks,
            **trainer_kwargs,
        )

    def _landmark_positions(self, adata: AnnData) -> np.ndarray:
        """Column of each landmark in ``adata`` (-1: absent), names compared as text.

        (Integer gene IDs come back from an .h5ad file as strings.) Other genes may repeat
        (e.g. probes mapped to symbols); a landmark that does is refused, being ambiguous.
        """
        names, landmarks = adata.var_names.astype(str), self.landmark_names.astype(str)
        repeated = names[names.duplicated()].unique().intersection(landmarks)
        if len(repeated):
            raise InputError(
                f"{len(repeated)} landmark genes appear more than once in var_names (first: "
                f"{', '.join(repeated[:5])}); keep one column per landmark (e.g. average a "
                "gene's probes)."
            )
        return positions_among(names, ~names.duplicated(), landmarks)

    def _landmark_matrix(
        self, adata: AnnData | None, layer: str | None, fill_missing: bool
    ) -> tuple[object, np.ndarray]:
        """The data matrix and the column of each landmark in the model's order (-1: missing)."""
        if adata is None:
            if self.adata is None:
                raise InputError("This model was loaded without data; pass adata=.")
            adata = self.adata
            layer = layer or self.registry_["setup_args"].get("layer")
        elif layer is None:
            trained_layer = self.registry_["setup_args"].get("layer")
            if trained_layer is not None and trained_layer not in adata.layers:
                warn_user(
                    f"The model was trained on layer {trained_layer!r}, which this data lacks; "
                    "X is used. Pass layer= to choose another layer.",
                )
                trained_layer = None
            layer = trained_layer
        if adata.n_obs == 0:
            raise InputError("The data has no samples (0 rows); there is nothing to predict.")
        positions = self._landmark_positions(adata)
        missing = self.landmark_names[positions < 0].astype(str)
        if len(missing) == len(self.landmark_names):
            raise InputError(
                f"None of the {len(missing)} landmark genes is in the data (first: "
                f"{', '.join(missing[:5])}). Are the genes named the same way as in training "
                "(e.g. symbols vs Ensembl IDs; letter case; Ensembl version suffixes)? Rename "
                "var_names to match."
                + (
                    f" The data names its genes like {str(adata.var_names[0])!r}."
                    if adata.n_vars
                    else ""
                )
            )
        # Only the landmark values are read (other genes may hold NaN, e.g. unmeasured
        # targets), in row blocks, never registered with scvi-tools: any memory order will do.
        check_matrix(
            adata,
            layer,
            allow_empty_cells=True,
            allow_fortran=True,
            columns=np.sort(positions[positions >= 0]),
        )
        if len(missing):
            if not fill_missing:
                raise InputError(
                    f"{len(missing)} of {len(self.landmark_names)} landmark genes are missing "
                    f"from the data: {', '.join(missing[:100])}"
                    + (
                        f" and {len(missing) - 100} more (all: `model.landmark_names.difference("
                        "adata.var_names)`)"
                        if len(missing) > 100
                        else ""
                    )
                    + ". Add them, or pass fill_missing=True to use their training mean."
                )
            warn_user(
                f"{len(missing)} of {len(self.landmark_names)} landmark genes are missing; "
                "they are filled with their training mean.",
            )
        return get_matrix(adata, layer), positions

    def _landmark_batches(
        self,
        adata: AnnData | None,
        layer: str | None,
        fill_missing: bool,
        rank_map: bool | str,
        batch_size: int | None,
    ) -> tuple[int, Iterator[torch.Tensor]]:
        """The number of samples, and their landmarks in blocks of ``batch_size``.

        Arguments are checked now; the blocks are read as they are drawn.
        """
        if layer is not None and not isinstance(layer, str):
            raise InputError(
                f"layer must be a layer name or None, not {type(layer).__name__}. For some "
                "samples only, pass them as adata, e.g. model.predict(adata[indices])."
            )
        check_batch_size(batch_size, "samples")
        batch_size = 1024 if batch_size is None else batch_size
        mode = self._rank_mode(rank_map)
        matrix, positions = self._landmark_matrix(adata, layer, fill_missing)
        landmark_mean = self.module.landmark_mean.cpu().numpy()
        quantiles = self.module.landmark_quantiles.cpu().numpy()
        # Landmarks missing here, or constant in training (untrained weights would read any
        # other value), stay at their training mean.
        used = (positions >= 0) & (quantiles[:, 0] < quantiles[:, -1])
        if mode == "gene" and matrix.shape[0] < 10:
            raise InputError(
                f"rank_map={rank_map!r} ranks each landmark across samples, which needs at "
                f"least 10 samples (got {matrix.shape[0]}); pass rank_map='sample' (each sample's "
                "landmarks ranked among themselves) or predict without rank mapping."
            )
        if not used.any():
            mode = None  # nothing to map
        values = None
        if mode == "gene":  # ranks are taken over all samples: map the whole matrix once
            landmarks = dense(take_columns(matrix, positions[used]))
            values = self._rank_map(landmarks, quantiles[used])
        if mode == "sample":  # the pooled training distribution, once for all blocks
            n_used = int(used.sum())
            grid = np.linspace(0.0, 1.0, n_used) if n_used > 1 else np.array([0.5])
            reference = np.quantile(quantiles[used].ravel(), grid)

        def blocks() -> Iterator[torch.Tensor]:
            for start in range(0, matrix.shape[0], batch_size):
                block = np.tile(landmark_mean, (min(batch_size, matrix.shape[0] - start), 1))
                if values is not None:
                    block[:, used] = values[start : start + batch_size]
                else:
                    block[:, used] = dense(matrix[start : start + batch_size][:, positions[used]])
                    if mode == "sample":
                        block[:, used] = self._rank_map_samples(block[:, used], reference)
                    elif start == 0 and used.any():
                        self._check_units(block[:, used], used)
                yield torch.as_tensor(block, dtype=torch.float32, device=self.device)

        return matrix.shape[0], blocks()

    def _check_units(self, landmarks: np.ndarray, used: np.ndarray) -> None:
        """Warn when new landmark values are clearly not in the training units.

        Two signs: the median landmark's mean lies more than 2 training standard deviations
        from its training mean (other normalisations or platforms), or more than 5% of the
        values lie over a standard deviation outside the training range (e.g. raw counts for
        a model trained on their log). Data in the training units score far below both
        (``benchmarks/dgex_units_check.py``). A third: whole numbers only, for a model trained
        on values that are not (shallow counts, 0-3 per gene, fall inside a log1p range).
        """
        mean = self.module.landmark_mean.cpu().numpy()[used]
        scale = self.module.landmark_scale.cpu().numpy()[used]
        quantiles = self.module.landmark_quantiles.cpu().numpy()[used]
        highest = quantiles[:, -1]  # a training sample's value (the lowest is often 0)
        nonzero = landmarks[landmarks != 0]
        if (
            np.mean(highest != np.round(highest)) > 0.5
            and nonzero.size >= 10
            and np.all(nonzero == np.round(nonzero))
        ):
            warn_user(
                "These landmark values are all whole numbers (raw counts?), but the model was "
                "trained on values that are not (e.g. log-normalised). Transform them as the "
                "training data were."
            )
            return
        shift = float(np.median(np.abs(landmarks.mean(0) - mean) / scale))
        outside = float(
            np.mean((landmarks > quantiles[:, -1] + scale) | (landmarks < quantiles[:, 0] - scale))
        )
        if shift > 2 or outside > 0.05:
            warn_user(
                "These landmark values do not look like the training data's: the median "
                f"landmark lies {shift:.1f} training standard deviations from its training mean, "
                f"and {outside:.0%} of the values lie outside the training range. Transform them "
                "as the training data were (same normalisation and log), or pass rank_map=True "
                "for data from another platform."
            )

    @staticmethod
    def _rank_mode(rank_map) -> str | None:
        """``rank_map`` as ``"gene"``, ``"sample"`` or ``None`` (no mapping), checked."""
        if rank_map in (None, False):
            return None
        if rank_map in (True, "gene", "sample"):
            return "gene" if rank_map == 1 else rank_map
        raise InputError(f"rank_map must be False, True, 'gene' or 'sample', not {rank_map!r}.")

    @staticmethod
    def _rank_map(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
        """Map each gene's values onto the training distribution by rank (quantile mapping)."""
        mapped = np.empty_like(values, dtype=np.float32)
        grid = np.linspace(0.0, 1.0, quantiles.shape[1])
        fractions = (rankdata(values, method="average", axis=0) - 1) / max(len(values) - 1, 1)
        for j in range(values.shape[1]):
            mapped[:, j] = np.interp(fractions[:, j], grid, quantiles[j])
        return mapped

    @staticmethod
    def _rank_map_samples(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Quantile-normalise each sample onto ``reference`` (``rank_map="sample"``).

        ``reference``: the training landmarks' pooled distribution at as many points as landmarks.
        """
        n = values.shape[1]
        if n == 1:  # one landmark measured: the middle of the distribution
            return np.full(values.shape, reference[0], dtype=np.float32)
        fraction = (rankdata(values, method="average", axis=1) - 1) / (n - 1)
        return np.interp(fraction, np.linspace(0.0, 1.0, n), reference).astype(np.float32)

    @refuse_unknown_arguments(
        gene_list="predict returns every target gene: select with `result[:, genes]`.",
        indices="Pass the samples as `adata[indices]`.",
        return_numpy="The values are the result's `.X`.",
    )
    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        layer: str | None = None,
        return_std: bool = False,
        fill_missing: bool = False,
        rank_map: bool | Literal["gene", "sample"] = False,
        batch_size: int | None = None,
    ) -> AnnData:
        """Predict every target gene from the landmark genes of ``adata``.

        Parameters
        ----------
        adata
            Data with (at least) the landmark genes, matched by name in any order; other genes
            are ignored. ``None``: the training data.
        layer
            Layer holding the landmark values. ``None``: the training layer if ``adata`` has it,
            else ``X``.
        return_std
            Add ``layers["std"]``: the predictive standard deviation of each value (about 95%
            of held-out values lie within ± 1.96 std on the simulator with the default
            ``linear_skip=True`` and samples well beyond the landmarks; see the docs).
        fill_missing
            Fill absent landmarks with their training mean (with a warning) instead of raising.
        rank_map
            Map the landmark values onto the training distribution by rank before predicting,
            for data from another platform (e.g. RNA-seq input to a microarray-trained model).
            ``True`` or ``"gene"``: each landmark ranked across the samples and mapped onto its
            own training distribution (as D-GEX standardised each data set); this assumes the
            samples are as varied as the training data and needs at least 10. A homogeneous
            set (one cell line, one tissue) would be stretched over the training range: use
            ``"sample"`` then, which ranks each sample's landmarks among themselves and maps
            them onto the training landmarks' pooled distribution (quantile normalisation, as
            L1000 processing does), for any number of samples; it assumes the platform changes
            every gene along one shared curve and fails on gene-specific platform effects
            (see the docs' benchmark).
        batch_size
            Samples per forward pass (``None``: 1024).

        Returns
        -------
        AnnData with ``adata``'s ``obs`` and the target genes as ``var``, predictions in ``X``
        (training units), with ``return_std`` ``layers["std"]``, and ``uns["dgex"]``:
        ``rank_map``, ``n_landmarks`` and ``filled_landmarks`` (names filled with
        ``fill_missing``), as ``scgexp predict`` writes them.

        Examples
        --------
        >>> predicted = model.predict(l1000_profiles, rank_map=True, return_std=True)
        """
        batches = self._landmark_batches(adata, layer, fill_missing, rank_map, batch_size)
        outputs = self._outputs(batches, ("mean", "std") if return_std else ("mean",))
        source = self.adata if adata is None else adata
        predicted = AnnData(
            X=outputs["mean"],
            obs=source.obs.copy(),
            var=pd.DataFrame(index=self.target_names.copy()),
        )
        if return_std:
            predicted.layers["std"] = outputs["std"]
        predicted.uns["dgex"] = self._prediction_info(source, rank_map)
        return predicted

    def _prediction_info(self, adata: AnnData, rank_map) -> dict:
        """``uns["dgex"]`` of a prediction: its rank mapping and the landmarks filled."""
        filled = self.landmark_names[self._landmark_positions(adata) < 0]
        return {
            "rank_map": self._rank_mode(rank_map) or False,
            "n_landmarks": len(self.landmark_names),
            "filled_landmarks": np.asarray(filled, dtype=str),
        }

    @torch.inference_mode()
    def _outputs(
        self,
        batches: tuple[int, Iterator[torch.Tensor]],
        keep: tuple[str, ...],
        into: dict[str, np.ndarray] | None = None,
    ) -> dict:
        """``keep`` of the module's outputs (``mean``, ``std``, ``z``) and of the ``landmarks``.

        In one pass over the :meth:`_landmark_batches` ``batches`` (one rank mapping), each
        written into an array made for all samples, or into ``into``'s array (e.g. columns of
        a larger one), so that memory holds the outputs once.
        """
        self._check_if_trained(warn=False)
        self.module.eval()
        n_obs, blocks = batches
        widths = {
            "mean": len(self.target_names),
            "std": len(self.target_names),
            "landmarks": len(self.landmark_names),
            "z": self.module.mean_head.in_features,  # the last hidden layer
        }
        into = into or {}
        results = {
            key: into[key] if key in into else np.empty((n_obs, widths[key]), np.float32)
            for key in keep
        }
        start = 0
        for landmarks in blocks:
            outputs = self.module.predict(landmarks, keep) | {"landmarks": landmarks}
            for key in keep:
                results[key][start : start + len(landmarks)] = outputs[key].cpu().numpy()
            start += len(landmarks)
        return results

    @refuse_unknown_arguments()
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        layer: str | None = None,
        fill_missing: bool = False,
        rank_map: bool | Literal["gene", "sample"] = False,
        batch_size: int | None = None,
        give_mean: bool = True,
    ) -> np.ndarray:
        """Last hidden layer's activations, one row per sample (for ``obsm["X_dgex"]``).

        Parameters
        ----------
        adata
            As in :meth:`predict`.
        indices
            Samples to use, as ``adata[indices]`` (so ``rank_map`` ranks among these samples);
            ``None``: all.
        layer, fill_missing, rank_map, batch_size
            As in :meth:`predict`.
        give_mean
            Accepted as scvi-tools' models take it; the hidden layer is deterministic (dropout
            is off), so both values give the same activations.

        Examples
        --------
        >>> adata.obsm["X_dgex"] = model.get_latent_representation()
        >>> sc.pp.neighbors(adata, use_rep="X_dgex")
        """
        data = self.adata if adata is None else adata
        if indices is not None and data is not None:  # without data: the message to pass it
            adata = data[cell_positions(indices, data.n_obs)]
        batches = self._landmark_batches(adata, layer, fill_missing, rank_map, batch_size)
        return self._outputs(batches, ("z",))["z"]

    def get_normalized_expression(self, *args, **kwargs):
        """Not available: DGEX infers target genes from landmarks, with :meth:`predict`."""
        raise NotImplementedError(
            "DGEX infers the target genes from the landmarks: use model.predict(adata), an "
            "AnnData of the target genes in the training units (return_std=True adds their "
            "uncertainty)."
        )
