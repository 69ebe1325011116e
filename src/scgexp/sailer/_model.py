"""SAILER as an scvi-tools model: a batch- and depth-invariant latent space for scATAC-seq."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
)
from scvi.model.base import BaseModelClass, VAEMixin
from scvi.utils import de_dsp, setup_anndata_dsp

from scgexp._compat import scatac_raw_counts_properties
from scgexp._differential import (
    accessibility_change,
    accessibility_table,
    differential,
    draw_indices,
)
from scgexp._io import SafeSaveMixin
from scgexp._query_mapping import QueryMappingMixin
from scgexp._warn import warn_user
from scgexp.data._checks import (
    InputError,
    batch_codes,
    cell_positions,
    check_architecture,
    check_count_setup,
    check_invariance_kwargs,
    check_model_arguments,
    check_option,
    check_query,
    check_setup_arguments,
    feature_positions,
    refuse_unknown_arguments,
    registered_n_cats_per_cov,
    warn_outside_training,
)
from scgexp.data._fields import CategoricalJointObsField
from scgexp.data._matrix import mean_and_scale, row_and_column_sums, row_chunks
from scgexp.nn import InvarianceMethod
from scgexp.nn._tensors import copy_into
from scgexp.sailer._module import SAILERModule
from scgexp.train import InvarianceTrainingPlan, TrainingMixin
from scgexp.train._plans import warn_if_annealing_unfinished

logger = logging.getLogger(__name__)

_DEPTH = "log_open_peaks"


class SAILER(QueryMappingMixin, SafeSaveMixin, VAEMixin, TrainingMixin, BaseModelClass):
    """SAILER: scATAC-seq latent space invariant to read depth, batch and covariates.

    A conditional VAE :cite:p:`Cao2021` whose decoder is given every confounder: the read depth
    (log number of open peaks per cell, standardised with the training cells' statistics, always
    included), the batch, and any categorical and continuous covariates (e.g. TSS enrichment,
    FRiP). Because the decoder knows them, the latent ``z`` need not encode them, and an
    invariance penalty (:class:`scgexp.nn.Invariance`) makes sure it does not:

    - ``"mi"`` (SAILER's): the non-adversarial bound on the mutual information between ``z`` and
      the confounders of :cite:t:`Moyer2018`, i.e. a ``(1 + λ)``-weighted reconstruction plus
      ``λ`` times the mean pairwise KL between the posteriors of a minibatch;
    - ``"adversarial"``: discriminators predicting each confounder from ``z`` (classifier or
      regressor), trained in alternation, the encoder paying for their success;
    - ``"both"``, or ``None`` (a plain conditional VAE).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (peak counts).
    n_hidden
        Units of the outer hidden layers (SAILER: 1000). ``None``: the square root of the number
        of peaks, between 128 and 1000, which keeps an epoch no slower than PEAKVI's at its
        default sizes (PEAKVI has three such layers; SAILER two).
    n_hidden_inner
        Units of the inner hidden layers (SAILER: 100).
    n_latent
        Latent dimensions (SAILER: 10). With 1,000–2,000 cells, 20 found cell types better by
        nearest neighbours on SNARE-seq; not so with fewer or more cells (see the docs).
    dropout_rate
        Dropout on hidden units.
    likelihood
        ``"bernoulli"`` on binarised peaks (the paper's) or ``"poisson"`` on fragment counts.
    invariance
        ``"mi"``, ``"adversarial"``, ``"both"`` (default) or ``None``. On simulated data with
        depth confounded with batch, the adversary (alone or with ``"mi"``) leaves no depth
        that nearest neighbours can read from the latent, while ``"mi"`` alone leaves more
        than no penalty (also on SNARE-seq; it separates cell types best after ``"both"``;
        it widens the posteriors, and the means of cells with fewer open peaks shrink more);
        by SAILER's metric, the mean information per dimension, only the two together remove
        most of it (see the docs' ablation).
    invariance_weight
        Weight ``λ`` of the penalty, with the loss written per cell (SAILER's 1 sums the
        ELBO over the minibatch but averages the pairwise term: about 1 / batch size here;
        at λ = 1 the simulator keeps least depth information, see the docs). The adversary's
        weight is ``λ × n_latent`` unless ``invariance_kwargs={"adversarial_weight": w}``
        sets it, so λ = 0 turns both penalties off.
    encoder_input
        What the encoder reads: ``"peaks"`` (default), each cell's open peaks as shares of
        their number; or ``"lsi"``, the cell's LSI (TF-IDF of the binarised peaks projected on
        the training cells' first ``n_lsi_components=20`` SVD components, the first, which
        follows depth, dropped), as GLUE :cite:p:`Cao2022` encodes scATAC-seq. The LSI input has
        far fewer weights to fit, which helps with a few thousand cells or fewer (see the docs).
    **model_kwargs
        Passed to :class:`~scgexp.sailer.SAILERModule` (e.g. ``invariance_kwargs``).

    Examples
    --------
    >>> adata = scgexp.data.simulate_scatac(n_cells=1000)
    >>> SAILER.setup_anndata(adata, batch_key="batch")
    >>> model = SAILER(adata, invariance="both")
    >>> model.train(max_epochs=100)
    >>> adata.obsm["X_sailer"] = model.get_latent_representation()
    >>> model.confounder_information()
    >>> small_data_model = SAILER(adata, encoder_input="lsi")  # a few thousand cells or fewer
    """

    _module_cls = SAILERModule
    _training_plan_cls = InvarianceTrainingPlan
    # Early stopping keeps the last epoch's weights, as the published benchmark was measured.
    _restore_best_weights = False

    def __init__(
        self,
        adata: AnnData | None = None,
        *,
        registry: dict | None = None,
        n_hidden: int | None = None,
        n_hidden_inner: int = 100,
        n_latent: int = 10,
        dropout_rate: float = 0.0,
        likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        invariance: InvarianceMethod | None = "both",
        invariance_weight: float = 1.0,
        encoder_input: Literal["peaks", "lsi"] = "peaks",
        **model_kwargs,
    ):
        check_model_arguments(type(self), self._module_cls, model_kwargs)
        check_architecture(
            dropout_rate,
            loading=registry is not None,
            n_hidden=n_hidden,
            n_hidden_inner=n_hidden_inner,
            n_latent=n_latent,
        )
        check_option("likelihood", likelihood, ("bernoulli", "poisson"))
        check_option("invariance", invariance, (None, "mi", "adversarial", "both"))
        if registry is None:  # saved models load as built
            check_invariance_kwargs(invariance, model_kwargs.get("invariance_kwargs"))
        if not invariance_weight >= 0:
            raise InputError(f"invariance_weight must be 0 or more, not {invariance_weight!r}.")
        super().__init__(adata, registry)
        n_peaks = self.summary_stats.n_vars
        if n_hidden is None:
            n_hidden = int(np.clip(np.sqrt(n_peaks), 128, 1000))
        n_cats_per_cov = registered_n_cats_per_cov(self.registry_)
        n_continuous_cov = len(self.registry_["setup_args"].get("continuous_covariate_keys") or [])
        self.module = self._module_cls(
            n_input=n_peaks,
            n_batch=self.summary_stats.n_batch,
            n_cats_per_cov=n_cats_per_cov,
            n_continuous_cov=n_continuous_cov,
            n_hidden=n_hidden,
            n_hidden_inner=n_hidden_inner,
            n_latent=n_latent,
            dropout_rate=dropout_rate,
            likelihood=likelihood,
            invariance=invariance,
            invariance_weight=invariance_weight,
            encoder_input=encoder_input,
            **model_kwargs,
        )
        if adata is not None:
            self._fit_confounder_scaling()
        if adata is not None and registry is None and encoder_input == "lsi":
            self._fit_lsi()  # a loaded model keeps its training cells' projection
        self._model_summary_string = (
            f"SAILER: {n_peaks} peaks, {n_hidden}-{n_hidden_inner}-{n_latent} units, likelihood "
            f"{likelihood}, invariance {invariance} (weight {invariance_weight}), confounders: "
            f"{', '.join(self.confounder_names)}"
        )
        self.init_params_ = self._get_init_params(locals())

    @property
    def confounder_names(self) -> list[str]:
        """Names of the confounders, continuous first (read depth), then categorical."""
        setup_args = self.registry_["setup_args"]
        names = [_DEPTH, *(setup_args.get("continuous_covariate_keys") or [])]
        if setup_args.get("batch_key") is not None:
            names.append(setup_args["batch_key"])
        return names + list(setup_args.get("categorical_covariate_keys") or [])

    def _raw_continuous(
        self, adata: AnnData | None = None, n_open: np.ndarray | None = None
    ) -> np.ndarray:
        """Log open peaks per cell and the continuous covariates, one row per cell."""
        adata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        if n_open is None:
            n_open = row_and_column_sums(
                manager.get_from_registry(REGISTRY_KEYS.X_KEY), binary=True
            )[0]
        columns = [np.log(np.maximum(n_open, 1.0))[:, None]]
        if REGISTRY_KEYS.CONT_COVS_KEY in manager.data_registry:
            columns.append(np.asarray(manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY)))
        return np.concatenate(columns, axis=1).astype(np.float64)

    def _fit_confounder_scaling(self) -> None:
        """Training statistics of the confounders and the log total count; output biases.

        The output biases start at each peak's marginal log-odds of being open (Poisson: its
        log rate at the reference total), so the decoder need not first learn how rare most
        peaks are, which on small data sets took the whole training budget.
        """
        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        n_open, cells_open = row_and_column_sums(matrix, binary=True)
        values = self._raw_continuous(n_open=n_open)
        mean, scale = mean_and_scale(values)
        totals, peak_totals = row_and_column_sums(matrix)
        log_reference = np.log(np.maximum(totals, 1.0)).mean()
        if self.module.likelihood == "bernoulli":
            frequency = np.clip(cells_open / len(totals), 1e-5, 1 - 1e-5)
            bias = np.log(frequency / (1 - frequency))
            input_total = np.exp(values[:, 0]).mean()
        else:  # rate_ij = exp(bias_j) * total_i / reference total
            exposure = np.sum(np.maximum(totals, 1.0) / np.exp(log_reference))
            bias = np.log(np.maximum(peak_totals / exposure, 1e-5))
            input_total = row_and_column_sums(matrix, log1p=True)[0].mean()
        copy_into(
            self.module,
            {
                "confounder_mean": mean,
                "confounder_scale": scale,
                "mean_log_total": log_reference,
                "output.bias": bias,
                "mean_input_total": input_total,
            },
        )

    def _fit_lsi(self) -> None:
        """The encoder's LSI: IDF and SVD components of the training cells' TF-IDF.

        As scikit-learn's ``TfidfTransformer`` (smooth IDF, each cell scaled to unit length) and
        ``TruncatedSVD``; the first component, which follows depth, is dropped.
        """
        from scipy import sparse
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfTransformer

        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        n_components = self.module.lsi_components.shape[0]
        if min(matrix.shape) <= n_components + 1:
            raise InputError(
                f'encoder_input="lsi" needs more than {n_components + 1} cells and peaks '
                f"(here {matrix.shape[0]} cells, {matrix.shape[1]} peaks); use fewer "
                'components (n_lsi_components=...) or encoder_input="peaks".'
            )
        binary = sparse.vstack(
            [sparse.csr_matrix(chunk > 0, dtype=np.float32) for chunk in row_chunks(matrix)]
        )
        tfidf = TfidfTransformer().fit(binary)
        svd = TruncatedSVD(n_components + 1, random_state=0).fit(tfidf.transform(binary))
        copy_into(self.module, {"lsi_idf": tfidf.idf_, "lsi_components": svd.components_[1:]})

    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        **kwargs,
    ) -> None:
        """%(summary)s.

        Read depth (log number of open peaks per cell) is always a confounder; it is computed
        from the data and needs no key.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
            Must hold peak counts (non-negative integers: fragment counts or binary peaks).
        %(param_batch_key)s
            A confounder: given to the decoder, removed from the latent. A batch key with a
            single category is accepted (with a warning); it then carries no information and
            only depth and the covariates are confounders.
        %(param_cat_cov_keys)s
            Extra categorical confounders.
        %(param_cont_cov_keys)s
            Extra continuous confounders (e.g. TSS enrichment, FRiP); finite numbers required.
            They are standardised with the training cells' mean and standard deviation.

        Examples
        --------
        >>> SAILER.setup_anndata(adata, layer="counts", batch_key="batch")
        """
        check_setup_arguments(cls.setup_anndata, kwargs, adata)
        setup_method_args = cls._get_setup_method_args(**locals())
        query = check_count_setup(
            adata,
            layer,
            setup_method_args["setup_args"],
            kwargs,
            continuous=continuous_covariate_keys,
            encoder_reads_covariates=False,
        )
        if not query:
            for key in [k for k in [batch_key, *(categorical_covariate_keys or [])] if k]:
                if adata.obs[key].nunique() < 2:
                    warn_user(
                        f"obs[{key!r}] has a single category, so there is nothing to remove "
                        "for it; SAILER still removes read depth and the other confounders.",
                    )
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _check_new_data(self, adata: AnnData) -> None:
        # scvi-tools' wording for unknown categories names no fix.
        check_query(adata, self.registry_, encoder_reads_covariates=False)
        self._warn_outside_training(adata)

    def _warn_outside_training(self, adata: AnnData) -> None:
        warn_outside_training(
            adata.obs,
            self.registry_["setup_args"].get("continuous_covariate_keys") or [],
            self.module.confounder_mean[1:].cpu().numpy(),
            self.module.confounder_scale[1:].cpu().numpy(),
        )

    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        early_stopping: bool = True,
        early_stopping_patience: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        n_epochs_warmup: int = 10,
        n_epochs_kl_warmup: int | None = 50,
        train_size: float | None = 0.9,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train with SAILER's schedule and scvi-tools' validation and early stopping.

        ``n_epochs_warmup`` epochs on reconstruction alone, then the KL weight rises linearly
        over ``n_epochs_kl_warmup`` epochs (``plan_kwargs={"kl_cycle_epochs": 100}`` gives the
        paper's cyclical annealing) while the invariance penalty applies in full. Adam with
        weight decay; the learning rate decays by 0.5% per epoch. 10% of the cells are held out;
        training stops when the validation ELBO has not improved for
        ``early_stopping_patience + n_epochs_warmup + n_epochs_kl_warmup`` epochs (while the
        KL weight rises the ELBO worsens, which must not stop training), and the last epoch's
        weights are kept.

        Parameters
        ----------
        max_epochs
            Upper bound on epochs. ``None``: 400 (SAILER's) for up to 5,000 cells, fewer for
            more cells (``2e6 / n_cells``), but at least the warm-ups and the patience (80 by
            default, reached from 25,000 cells), so that the KL weight is annealed in full.
        batch_size
            Minibatch size (SAILER: 100–400). The ``"mi"`` penalty compares all pairs of cells
            in a minibatch.
        early_stopping
            Stop on the validation ELBO.
        early_stopping_patience
            Epochs without improvement before stopping, beyond the warm-up's length.
        lr, weight_decay
            Adam's learning rate and weight decay (SAILER: 1e-3, 5e-4).
        n_epochs_warmup
            Epochs of reconstruction-only training (SAILER: 10).
        n_epochs_kl_warmup
            Epochs of linear KL annealing after the warm-up (``None``: scvi-tools'
            ``plan_kwargs={"n_steps_kl_warmup": ...}`` minibatches if given, else none).
        train_size
            Share of cells used for training; the rest validate (1.0: no validation, no early
            stopping).
        plan_kwargs
            Other :class:`scgexp.train.InvarianceTrainingPlan` arguments.
        **trainer_kwargs
            Passed to :meth:`scgexp.train.TrainingMixin.train` (``data_mode``) and on to
            Lightning; ``gradient_clip_val`` (a norm) goes to the plan, which clips itself.

        Examples
        --------
        >>> model.train(max_epochs=200, early_stopping=True)
        >>> model.history["elbo_validation"].tail()
        """
        plan_kwargs = self._plan_settings(
            {
                "lr": lr,
                "weight_decay": weight_decay,
                "n_epochs_warmup": n_epochs_warmup,
                "n_epochs_kl_warmup": n_epochs_kl_warmup,
            },
            plan_kwargs,
        )
        # (plan_kwargs may set the warm-ups too)
        warmups = plan_kwargs["n_epochs_warmup"] + (plan_kwargs["n_epochs_kl_warmup"] or 0)
        if max_epochs is None:
            max_epochs = int(min(400, round(2e6 / max(self.summary_stats.n_cells, 1))))
            max_epochs = max(max_epochs, warmups + early_stopping_patience)
        if early_stopping:
            # Longer by the warm-ups' length, over which the rising KL weight worsens the ELBO.
            early_stopping_patience += warmups
            early_stopping_patience = min(early_stopping_patience, max_epochs)
        if self._trains_encoder():  # else the KL weight changes nothing
            warn_if_annealing_unfinished(max_epochs, plan_kwargs)
        trainer_kwargs.setdefault("early_stopping_monitor", "elbo_validation")
        return super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            plan_kwargs=plan_kwargs,
            **trainer_kwargs,
        )

    def get_normalized_expression(self, *args, **kwargs):
        """Not available: SAILER models peaks; see :meth:`get_normalized_accessibility`."""
        raise NotImplementedError(
            "SAILER models accessibility: use model.get_normalized_accessibility() (imputed open "
            "probabilities, at one depth and batch if asked)."
        )

    @refuse_unknown_arguments(
        threshold="Binarise the values yourself, e.g. `values > 0.5`.",
        normalize_cells="depth='median' decodes every cell at one depth (PEAKVI's "
        "normalize_cells=True); depth=None at each cell's own.",
        normalize_regions="Region effects are part of the decoded probability.",
        n_samples="use_z_mean=False decodes one posterior sample per cell.",
    )
    @torch.inference_mode()
    def get_normalized_accessibility(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        transform_batch: str | Sequence[str] | None = None,
        depth: float | Literal["median"] | None = None,
        batch_size: int | None = None,
        return_numpy: bool = False,
        use_z_mean: bool = True,
        region_list: Sequence[str] | None = None,
    ) -> pd.DataFrame | np.ndarray:
        """Imputed accessibility of every peak, decoded with the confounders held fixed.

        Parameters
        ----------
        adata
            Data organised like the training data; ``None``: the training data.
        indices
            Cells to use; ``None``: all.
        transform_batch
            Decode every cell as this batch, or average the values decoded as each of several
            batches; ``None``: each cell's own. With few cells per batch (a few hundred), the
            decoder's batch weights also carry that batch's sampling noise, so the values
            decoded as one batch differ from another's by more than its biology: average over
            all batches (``model.adata.obs[batch_key].unique()``) for values of none in
            particular.
        depth
            Number of open peaks to decode every cell at; ``"median"``: a typical training
            cell's depth (the geometric mean of their open peaks, which is close to the median);
            ``None``: each cell's own depth. With a depth, continuous covariates are held at
            their training means too: covariates such as FRiP or TSS enrichment follow depth,
            so each cell's own values would bring its depth back.
        batch_size
            Cells per forward pass.
        return_numpy
            Return an array instead of a DataFrame (cells × peaks, with names).
        use_z_mean
            Decode each cell's posterior mean; ``False``: one sample of its posterior.
        region_list
            Return these peaks only, in this order; ``None``: all. (PEAKVI's keeps the data's
            order and skips names it does not know; this refuses them.)

        Returns
        -------
        ``"bernoulli"``: the probability that each peak is detected as open in a cell of that
        depth (not the chromatin's own openness, which binarised reads cannot tell apart from
        capture: a deeper cell detects more); ``"poisson"``: the expected fragment count at
        each cell's own total count (``depth=None``), or at a typical training cell's total
        count scaled by ``depth`` over that cell's open peaks. Shape ``(n_cells, n_peaks)``.

        Examples
        --------
        >>> acc = model.get_normalized_accessibility(transform_batch="batch_0", depth="median")
        """
        self._check_if_trained(warn=False)
        adata = self._validate_anndata(adata)
        codes = batch_codes(transform_batch, self.registry_)
        peaks, columns = adata.var_names, slice(None)
        if region_list is not None:
            columns = feature_positions(peaks, region_list, "region_list")
            peaks = peaks[columns]
        bernoulli = self.module.likelihood == "bernoulli"
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        module = self.module
        module.eval()
        if depth == "median":
            log_depth = float(module.confounder_mean[0])
        elif depth is not None:
            if isinstance(depth, str | bool | np.bool_) or not (np.isfinite(depth) and depth > 0):
                raise InputError(
                    f"depth must be a positive number of open peaks, 'median' or None, not "
                    f"{depth!r}."
                )
            if depth > adata.n_vars:
                raise InputError(
                    f"depth is a number of open peaks, at most the {adata.n_vars} peaks of the "
                    f"data, not {depth!r}."
                )
            log_depth = float(np.log(depth))
        out = []
        for tensors in loader:
            inference_outputs = module.inference(**module._get_inference_input(tensors))
            generative_inputs = module._get_generative_input(tensors, inference_outputs)
            if use_z_mean:
                generative_inputs["z"] = inference_outputs["qz"].loc
            if depth is not None:  # covariates at their training means (log depth's too)
                generative_inputs["cont_confounders"][:] = module.confounder_mean
                generative_inputs["cont_confounders"][:, 0] = log_depth
                # Poisson's count offset: a typical training cell's total, scaled with depth
                # (total counts in proportion to open peaks); None keeps each cell's own.
                log_total = module.mean_log_total + log_depth - module.confounder_mean[0]
                generative_inputs["log_total"] = torch.full_like(
                    generative_inputs["log_total"], float(log_total)
                )
            values = 0.0
            own_batch = generative_inputs["batch_index"]
            for code in codes:
                generative_inputs["batch_index"] = (
                    own_batch if code is None else torch.full_like(own_batch, code)
                )
                logits = module.generative(**generative_inputs)["px"]
                values += torch.sigmoid(logits) if bernoulli else logits.exp()
            out.append((values / len(codes))[:, columns].cpu().numpy())
        result = np.concatenate(out)
        if return_numpy:
            return result
        names = adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
        return pd.DataFrame(result, index=names, columns=peaks)

    @de_dsp.dedent
    def differential_accessibility(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.05,
        *,
        depth: float | Literal["median"] | None = "median",
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        **kwargs,
    ) -> pd.DataFrame:
        r"""Differential accessibility between two groups of cells, as scvi-tools' PEAKVI.

        Posterior samples of :meth:`get_normalized_accessibility` (one latent sample per
        cell), decoded at one read depth (and continuous covariates at their training means),
        so that groups sequenced to different depths do not differ for that reason alone.
        Columns as :meth:`scvi.model.PEAKVI.differential_accessibility`.

        Parameters
        ----------
        %(de_adata)s
        %(de_groupby)s
        %(de_group1)s
        %(de_group2)s
        %(de_idx1)s
        %(de_idx2)s
        %(de_mode)s
        delta
            Smallest change that counts (``mode="change"``): with the default ``change_fn`` a
            difference on the scale of :meth:`get_normalized_accessibility` (a probability for
            ``"bernoulli"``; expected fragments for ``"poisson"``, often about 0.1, so choose a
            smaller ``delta`` there), with ``change_fn="log-fold"`` a log2 fold change.
        depth
            Number of open peaks every cell is decoded at; ``"median"``: a typical training
            cell's; ``None``: each cell's own (depth and covariate differences then count).
        %(de_batch_size)s
        %(de_all_stats)s
        %(de_batch_correction)s
        %(de_batchid1)s
        %(de_batchid2)s
        %(de_fdr_target)s
        %(de_silent)s
        **kwargs
            Passed to :meth:`scvi.model.base.DifferentialComputation.get_bayes_factors`.
            ``change_fn`` is the difference in accessibility unless given, as in earlier
            scvi-tools releases' PEAKVI; 1.4's takes the log2 fold change, with the same
            ``delta``.

        Returns
        -------
        :class:`~pandas.DataFrame` indexed by peak: ``prob_da`` (``mode="change"``: probability
        that the effect's size exceeds ``delta``; ``"vanilla"``: probability that group 1's
        accessibility exceeds group 2's, as PEAKVI's, so values near 0 are differences too),
        ``is_da_fdr`` (passes the FDR target; empty with ``mode="vanilla"``, as
        PEAKVI), ``bayes_factor``, ``effect_size`` (group 2 minus group 1, estimated),
        ``emp_effect`` (the same in observed detection rates), ``est_prob1``/``est_prob2``
        (estimated, as :meth:`get_normalized_accessibility`) and ``emp_prob1``/``emp_prob2`` (share
        of the group's cells where the peak has reads); ``emp_*`` with ``all_stats=True`` only.
        With ``groupby``, the ``comparison``, ``group1`` and ``group2`` of each row: one block per
        group of ``group1`` (``group1=None``: each group against the rest).

        Examples
        --------
        >>> da = model.differential_accessibility(groupby="cell_type", group1="type_0")
        >>> da.sort_values("prob_da", ascending=False).head()
        """
        adata = self._validate_anndata(adata)
        rng = np.random.default_rng(settings.seed)

        def accessibility(adata, indices, transform_batch, n_samples_overall=None):
            return self.get_normalized_accessibility(
                adata,
                indices=draw_indices(indices, n_samples_overall, rng),
                transform_batch=transform_batch,
                depth=depth,
                batch_size=batch_size,
                return_numpy=True,
                use_z_mean=False,
            )

        arguments = dict(locals(), kwargs=accessibility_change(kwargs))
        manager = self.get_anndata_manager(adata, required=True)
        result = differential(
            manager, accessibility, scatac_raw_counts_properties, adata.var_names, arguments
        )
        return accessibility_table(result, mode, fdr_target)

    def confounder_information(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        max_cells: int | None = 10_000,
        n_neighbors: int = 3,
        random_state: int = 0,
        shuffle: bool = False,
    ) -> pd.Series:
        """Mean mutual information (nats) between each latent dimension and each confounder.

        The mean over latent dimensions of scikit-learn's ``mutual_info_regression`` (continuous
        confounders) or ``mutual_info_classif`` (categorical ones), SAILER's invariance metric.
        Read depth is the log number of open peaks plus uniform(0, 1) noise on the integer
        count (without it, ties inflate the nearest-neighbour estimate). Close to 0: no single
        dimension carries information about the confounder. It is not the mutual information
        of the whole latent space (dimensions together can predict more), and it falls as
        uninformative dimensions are added: compare models of the same ``n_latent``, or check
        with a predictor of the confounder from all dimensions (e.g. scikit-learn's
        ``KNeighborsRegressor`` under cross-validation).

        Parameters
        ----------
        adata
            Data organised like the training data; ``None``: the training data.
        indices
            Cells to use; ``None``: all.
        max_cells
            Subsample to this many cells (the estimator is quadratic-ish); ``None``: all.
        n_neighbors
            Neighbours of the Kraskov estimator.
        random_state
            Seed for the subsample, the depth noise and the estimator. The noise is drawn in
            row order, so the same cells in another order (or another seed) give values a few
            thousandths of a nat apart: compare latents on the same data and seed.
        shuffle
            Shuffle the confounders across cells first: the estimator's floor for this latent,
            what it returns for unrelated values (more for tightly clustered latents). Subtract
            it to compare latents by what they really hold.

        Returns
        -------
        :class:`~pandas.Series` indexed by confounder name (``"log_open_peaks"`` first).

        Examples
        --------
        >>> model.confounder_information()  # doctest: +SKIP
        log_open_peaks    0.012
        batch             0.004
        Name: mutual_information, dtype: float64
        """
        from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

        adata = self._validate_anndata(adata)
        cells = np.arange(adata.n_obs) if indices is None else cell_positions(indices, adata.n_obs)
        rng = np.random.default_rng(random_state)
        if max_cells is not None and len(cells) > max_cells:
            cells = np.sort(rng.choice(cells, max_cells, replace=False))
        latent = self.get_latent_representation(adata, indices=cells)
        continuous = self._raw_continuous(adata)[cells]
        n_open = np.round(np.exp(continuous[:, 0]))
        continuous[:, 0] = np.log(n_open + rng.uniform(0, 1, size=len(n_open)))
        order = rng.permutation(len(cells)) if shuffle else np.arange(len(cells))
        continuous = continuous[order]
        manager = self.get_anndata_manager(adata, required=True)
        categorical = []
        if self.registry_["setup_args"].get("batch_key") is not None:
            categorical.append(np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)))
        if REGISTRY_KEYS.CAT_COVS_KEY in manager.data_registry:
            cat_covs = np.asarray(manager.get_from_registry(REGISTRY_KEYS.CAT_COVS_KEY))
            categorical += list(cat_covs.T)
        kwargs = {"n_neighbors": n_neighbors, "random_state": random_state}
        values = []
        for column in continuous.T:
            values.append(float(np.mean(mutual_info_regression(latent, column, **kwargs))))
        for codes in categorical:
            codes = np.asarray(codes).reshape(-1)[cells][order]
            if len(np.unique(codes)) < 2:
                values.append(0.0)
                continue
            values.append(float(np.mean(mutual_info_classif(latent, codes, **kwargs))))
        return pd.Series(values, index=self.confounder_names, name="mutual_information")
