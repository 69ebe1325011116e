"""MultiVAE: a multimodal VAE over MuData (RNA, ATAC, protein) with missing modalities."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data.fields import (
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataNumericalObsField,
)
from scvi.model.base import BaseModelClass, VAEMixin
from scvi.utils import de_dsp, setup_anndata_dsp

from scgexp._differential import (
    accessibility_change,
    accessibility_table,
    column_means,
    count_statistics,
    differential,
    draw_indices,
    read_rows,
)
from scgexp._io import SafeSaveMixin
from scgexp._query_mapping import _OBS_ARGS, QueryMappingMixin
from scgexp._warn import warn_user
from scgexp.data._checks import (
    InputError,
    batch_code,
    batch_codes,
    check_architecture,
    check_batch_size,
    check_distinct_keys,
    check_feature_names,
    check_known_categories,
    check_library_size,
    check_matrix,
    check_model_arguments,
    check_obs_keys,
    check_option,
    check_setup_arguments,
    check_size_factors,
    feature_positions,
    get_matrix,
    only_the_type_differs,
    refuse_unknown_arguments,
    registered_n_cats_per_cov,
    warn_outside_training,
)
from scgexp.data._fields import MuDataCategoricalJointObsField
from scgexp.data._matrix import (
    dense,
    mean_and_scale,
    positions_among,
    read_dense,
    row_and_column_sums,
    take_columns,
)
from scgexp.data._mudata import _presence_flag
from scgexp.multivae._module import DATA_KEYS, MODALITIES, PRESENCE_KEYS, MultiVAEModule
from scgexp.nn._tensors import as_tensor, copy_into
from scgexp.train import (
    InvarianceTrainingPlan,
    TrainingMixin,
    TrainingPlan,
)
from scgexp.train._plans import warn_if_annealing_unfinished

if TYPE_CHECKING:
    from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: What an scvi-tools user's use_z_mean / return_mean does here.
_POSTERIOR_MEAN = "n_samples=1 decodes the posterior mean; n_samples > 1 averages that many draws."

_LAYER_ARGS = {m: f"{m}_layer" for m in MODALITIES}
_MODALITY_ARGS = (*_LAYER_ARGS.values(), *_OBS_ARGS)
_STAT_KEYS = {"rna": "n_vars", "atac": "n_atac", "protein": "n_proteins"}
_MULTIVI_MODALITIES = {"joint": None, "expression": "rna", "accessibility": "atac"}


def _obs(mdata: MuData | AnnData, modalities: dict, arg: str) -> MuData | AnnData:
    """Whose ``obs`` holds the columns of setup argument ``arg``: a modality or the MuData."""
    if isinstance(mdata, MuData) and modalities.get(arg) is not None:
        return mdata.mod[modalities[arg]]
    return mdata


def _check_keys_in_modalities(mdata, modalities: dict, setup_args: dict, query: bool) -> None:
    """Refuse a key missing where it is read but held elsewhere in ``mdata``, naming the fix."""
    if not isinstance(mdata, MuData):
        return
    for arg in _OBS_ARGS:
        keys = setup_args.get(arg) or []
        keys = [keys] if isinstance(keys, str) else keys
        reader = modalities.get(arg)
        if reader is not None:  # read from a modality's obs
            for key in keys:
                if reader in mdata.mod and key not in mdata.mod[reader].obs and key in mdata.obs:
                    raise InputError(
                        f"mdata[{reader!r}].obs has no column {key!r}, where the model reads "
                        f"its {arg} (modalities={{..., {arg!r}: {reader!r}}} at setup), but "
                        f"mdata.obs has: copy it, `mdata[{reader!r}].obs[{key!r}] = "
                        f"mdata.obs[{key!r}]`."
                    )
            continue
        for key in keys:
            owners = [m for m in mdata.mod if key not in mdata.obs and key in mdata.mod[m].obs]
            if owners:
                column = f"mdata[{owners[0]!r}].obs[{key!r}]"
                for other in owners[1:]:  # each cell's value from the modality that has it
                    column += f".combine_first(mdata[{other!r}].obs[{key!r}])"
                copy = f"`mdata.obs[{key!r}] = {column}`"
                fix = (
                    f"copy it: {copy}"  # the model reads mdata.obs, as set up
                    if query or len(owners) > 1
                    else f"pass modalities={{..., {arg!r}: {owners[0]!r}}} to read it there, or "
                    f"copy it: {copy}"
                )
                holders = ", ".join(repr(m) for m in owners)
                raise InputError(
                    f"mdata.obs has no column {key!r}, but modality {holders} "
                    f"{'has' if len(owners) == 1 else 'have'}: {fix}."
                )


def _check_cells_aligned(mdata: MuData, names: dict[str, str], query: bool = False) -> None:
    """Every used modality holds the MuData's cells in its order (cells are read by position).

    Training data whose modalities share no cell name cannot be padded into pairs: that is
    said (new cells may have one modality each).
    """
    for data_type, name in names.items():
        mod = mdata.mod[name]
        if mod.n_obs != mdata.n_obs or not mod.obs_names.equals(mdata.obs_names):
            others = [mdata.mod[n].obs_names for n in names.values() if n != name]
            shared = (mod.obs_names.isin(o).any() for o in others)
            if not query and mod.n_obs and others and all(map(len, others)) and not any(shared):
                raise InputError(
                    f"modality {name!r} ({data_type}) shares no cell name with the other "
                    f"modalities (e.g. {mod.obs_names[0]!r} vs {others[0][0]!r}), so no cell "
                    "would have both and the model could not learn how they relate. If they "
                    "are the same cells, make the names match (e.g. strip a prefix or suffix), "
                    "then `mdata.update()`."
                )
            reordered = mod.n_obs == mdata.n_obs and mod.obs_names.sort_values().equals(
                mdata.obs_names.sort_values()
            )
            shared = int(mod.obs_names.isin(mdata.obs_names).sum())
            found = (
                "the same cells in another order"
                if reordered
                else f"{mod.n_obs} cells, {shared} of them among the MuData's {mdata.n_obs}"
            )
            raise InputError(
                f"modality {name!r} ({data_type}): its cells do not match the MuData's "
                f"({found}). MultiVAE needs every modality to hold every cell in the MuData's "
                "order: `mdata = scgexp.data.pad_modalities(mdata)` puts them in that order and "
                "gives cells missing a modality an all-zero row there, flagged in "
                "obs['has_<modality>'] (for presence_keys)."
            )


def _check_modalities_linked(presence: dict[str, np.ndarray], names: dict[str, str]) -> None:
    """Cells with two modalities must tie every modality to the others (directly or via one).

    Without such cells the joint latent, cross-modal prediction and imputation are untrained:
    each modality's encoder would place cells on its own.
    """
    presence = {t: p for t, p in presence.items() if p.any()}  # (none: refused in training)
    if len(presence) < 2:
        return
    linked, rest = [next(iter(presence))], set(list(presence)[1:])
    while rest:
        new = {t for t in rest if any((presence[t] & presence[u]).any() for u in linked)}
        if not new:
            pairs = ", ".join(f"{t!r} ({names[t]!r})" for t in sorted(rest))
            raise InputError(
                f"No cell has {pairs} together with any of {linked}: the model could not learn "
                "how they relate, so its joint latent and cross-modal predictions would mean "
                "nothing. Paired cells (measured in both) are needed; check that the same "
                "cells have the same names in every modality before padding, and the "
                "presence_keys flags."
            )
        linked += sorted(new)
        rest -= new


def _warn_unmeasured_proteins(matrix, proteins, batches: np.ndarray, present: np.ndarray) -> None:
    """Warn about proteins without a count in a batch whose other batches detect them often.

    A panel that lacked an antibody gives zeros that read as true absence (totalVI masks such
    proteins per batch; MultiVAE does not).
    """
    unmeasured = []
    detected = row_and_column_sums(matrix, binary=True, column_rows=present)[1]
    for batch in pd.unique(batches[present]):
        in_batch = present & (batches == batch)
        others = present & ~in_batch
        if not others.any():
            continue
        detected_in = row_and_column_sums(matrix, binary=True, column_rows=in_batch)[1]
        rate = (detected - detected_in) / others.sum()
        # At least 10 detections expected in the batch: none by chance has odds below 1e-4.
        absent = (detected_in == 0) & (rate >= 0.1) & (rate * in_batch.sum() >= 10)
        unmeasured += [f"{proteins[j]!r} in {batch!r}" for j in np.flatnonzero(absent)]
    if unmeasured:
        more = f" and {len(unmeasured) - 5} more" if len(unmeasured) > 5 else ""
        warn_user(
            "Proteins without a count in any cell of a batch, while the other batches detect "
            "them in at least 10% of their cells (10 or more expected in this batch): "
            f"{', '.join(unmeasured[:5])}"
            f"{more}. Their zeros are read as true absence (and differential_protein calls "
            "them changed). If those batches' panels lacked them, keep only the proteins every "
            "batch measured: mdata.mod[<protein modality>] = prot[:, measured].copy()."
        )


def _check_modalities(mdata: MuData, modalities: dict | None) -> dict[str, str]:
    if not isinstance(mdata, MuData):
        obsm = list(getattr(mdata, "obsm", {}))
        protein = next((k for k in obsm if "protein" in k.lower()), None)
        example = (
            "`mudata.MuData({'rna': adata, 'prot': anndata.AnnData(adata.obsm"
            f"[{protein!r}])}})` (the proteins as their own modality, as counts)"
            if protein
            else "`mudata.MuData({'rna': rna, 'atac': atac})`"
        )
        raise InputError(
            f"MultiVAE needs a MuData, not {type(mdata).__name__}. Build one with {example}."
        )
    if not modalities:
        raise InputError(
            "Pass modalities= naming the MuData modality of each data type, e.g. "
            "modalities={'rna_layer': 'rna', 'atac_layer': 'atac'}."
        )
    unknown = sorted(set(modalities) - set(_MODALITY_ARGS))
    if unknown:
        raise InputError(
            f"modalities has unknown keys {unknown}; allowed: {list(_MODALITY_ARGS)}."
        )
    for arg, name in modalities.items():
        if name is not None and name not in mdata.mod:
            raise InputError(
                f"modalities[{arg!r}] = {name!r}, but the MuData has no modality {name!r} "
                f"(modalities: {list(mdata.mod)})."
            )
    used = [m for m in MODALITIES if modalities.get(_LAYER_ARGS[m]) is not None]
    if not used:
        raise InputError(
            "modalities names no data: give at least one of 'rna_layer', 'atac_layer', "
            "'protein_layer'."
        )
    names = [modalities[_LAYER_ARGS[m]] for m in used]
    if len(set(names)) != len(names):
        raise InputError(
            f"Each data type needs its own modality; got {dict(zip(used, names, strict=True))}."
        )
    return {m: modalities[_LAYER_ARGS[m]] for m in used}


class _CategoryTypeError(InputError):
    """Categories that match the model's as text but not in type (``"0"`` against ``0``)."""


class MultiVAE(QueryMappingMixin, SafeSaveMixin, VAEMixin, TrainingMixin, BaseModelClass):
    """Multimodal VAE: a joint latent space of RNA, ATAC and protein, with mosaic cells.

    Each modality has its own encoder; the experts of the modalities a cell has are combined
    into one posterior (a product of experts by default, see ``joint``), and one decoder per
    modality reconstructs what the cell has: RNA with a (zero-inflated) negative binomial,
    ATAC with the detection of a Poisson fragment count (cell and region factors as in
    :cite:p:`Ashuach2022`, with a learned per-region depth slope), protein with a
    negative binomial (default) or a background/foreground negative binomial mixture
    (:cite:p:`GayosoSteier2021`). Cells missing a modality simply have no expert and no
    reconstruction term for it (mosaic integration). Cells with several modalities also learn
    to predict each modality from the others (cross-reconstruction) and pull each expert
    towards the joint posterior (alignment), so each encoder works alone, for per-modality
    latents and cross-modal prediction (see :class:`~scgexp.multivae.MultiVAEModule`).

    Parameters
    ----------
    adata
        MuData registered with :meth:`setup_mudata`.
    n_hidden
        Units of the hidden layers of every encoder and decoder.
    n_latent
        Dimension of the joint latent space.
    n_layers_encoder, n_layers_decoder
        Hidden layers of the encoders and decoders.
    dropout_rate
        Dropout of the encoders.
    gene_likelihood
        ``"zinb"`` or ``"nb"``.
    protein_likelihood
        ``"nb"`` (default): negative binomial at the observed protein library size;
        ``"mixture"``: background/foreground negative binomial mixture (background learned per
        protein and batch, after totalVI). On CITE-seq the NB predicted held-out proteins from
        RNA better (mean per-protein Pearson 0.59 vs 0.38) and mixed batches better; see the
        docs.
    joint
        ``"poe"``: product of experts with the prior (precisions add); ``"mixture"``: the
        Gaussian matching the moments of the mixture of experts. See the docs for measurements.
    alignment_weight
        Weight of the term that pulls each modality's expert towards the joint posterior.
    encode_covariates
        Also give batch and categorical covariates to the encoders.
    invariance
        ``"auto"`` (default): ``"adversarial"`` on the batch alone when there are two or more
        batches (MULTIVI and totalVI have an adversary too, switched off after their KL
        warm-up; this one stays on), else ``None``. ``None``; ``"mi"``, ``"adversarial"`` or
        ``"both"``: keep the batch and each modality's sequencing depth (where its decoder is
        given it) out of the joint latent space with the shared :class:`~scgexp.nn.Invariance`
        penalties, trained by :class:`~scgexp.train.InvarianceTrainingPlan` (module argument
        ``invariance_depth=False``: batch only).
    invariance_weight
        Weight of the invariance penalty (see :class:`~scgexp.nn.Invariance`).
    **module_kwargs
        Passed to :class:`~scgexp.multivae.MultiVAEModule` (``alignment``,
        ``cross_reconstruction_weight``, ``cross_reconstruction_targets``, ...).

    Examples
    --------
    >>> mdata = scgexp.data.simulate_multiome(n_cells=500, missing_fraction=0.2)
    >>> MultiVAE.setup_mudata(
    ...     mdata,
    ...     batch_key="batch",
    ...     presence_keys={"rna": "has_rna", "atac": "has_atac"},
    ...     modalities={"rna_layer": "rna", "atac_layer": "atac"},
    ... )
    >>> model = MultiVAE(mdata)
    >>> model.train(max_epochs=50)
    >>> mdata.obsm["X_multivae"] = model.get_latent_representation()
    >>> rna_from_atac = model.predict(mdata, source="atac", target="rna")
    """

    _module_cls = MultiVAEModule

    def __init__(
        self,
        adata: MuData | None = None,
        *,
        registry: dict | None = None,
        n_hidden: int = 128,
        n_latent: int = 20,
        n_layers_encoder: int = 2,
        n_layers_decoder: int = 2,
        dropout_rate: float = 0.1,
        gene_likelihood: Literal["zinb", "nb"] = "zinb",
        protein_likelihood: Literal["nb", "mixture"] = "nb",
        joint: Literal["poe", "mixture"] = "poe",
        alignment_weight: float = 1.0,
        encode_covariates: bool = False,
        invariance: Literal["auto", "mi", "adversarial", "both"] | None = "auto",
        invariance_weight: float = 1.0,
        **module_kwargs,
    ):
        check_model_arguments(type(self), self._module_cls, module_kwargs)
        check_architecture(
            dropout_rate,
            loading=registry is not None,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers_encoder=n_layers_encoder,
            n_layers_decoder=n_layers_decoder,
        )
        super().__init__(adata, registry)
        check_option("invariance", invariance, (None, "auto", "mi", "adversarial", "both"))
        if invariance == "auto":
            invariance = "adversarial" if self.summary_stats.n_batch > 1 else None
            module_kwargs.setdefault("invariance_depth", False)
        n_cats_per_cov = registered_n_cats_per_cov(self.registry_)
        stats = self.summary_stats
        n_features = {
            m: int(stats[_STAT_KEYS[m]]) for m in self.data_modalities if _STAT_KEYS[m] in stats
        }
        if n_features.get("protein") == 1 and protein_likelihood == "nb" and registry is None:
            raise InputError(
                "protein_likelihood='nb' shares each cell's protein total among the proteins, "
                "so with one protein every cell would get the same value. Use "
                "protein_likelihood='mixture' (background and foreground per protein)."
            )
        self.module = self._module_cls(
            n_features=n_features,
            n_batch=stats.n_batch,
            n_cats_per_cov=n_cats_per_cov,
            n_continuous_cov=int(stats.get("n_extra_continuous_covs", 0)),
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers_encoder=n_layers_encoder,
            n_layers_decoder=n_layers_decoder,
            dropout_rate=dropout_rate,
            gene_likelihood=gene_likelihood,
            protein_likelihood=protein_likelihood,
            joint=joint,
            alignment_weight=alignment_weight,
            encode_covariates=encode_covariates,
            use_size_factor_key=self.registry_["setup_args"].get("size_factor_key") is not None,
            invariance=invariance,
            invariance_weight=invariance_weight,
            **module_kwargs,
        )
        self._modalities_without_cells: list[str] = []
        if adata is not None:
            self._init_depth()
            self._init_continuous_covariates()
            if "atac" in n_features:
                self._init_atac()
            if "protein" in n_features:
                self._init_protein()
        sizes = ", ".join(f"{m} {n}" for m, n in n_features.items())
        likelihoods = {
            "rna": f"RNA {gene_likelihood}",
            "atac": "ATAC bernoulli",
            "protein": f"protein {protein_likelihood}",
        }
        likelihoods = ", ".join(likelihoods[m] for m in likelihoods if m in n_features)
        self._model_summary_string = (
            f"MultiVAE: {sizes} features; {n_latent} latent dims, {n_hidden} hidden units; "
            f"joint posterior {joint}; {likelihoods}; "
            f"{stats.n_batch} batch(es); invariance {invariance}"
        )
        self.init_params_ = self._get_init_params(locals())

    @property
    def data_modalities(self) -> list[str]:
        """Data types the model uses, in the order ``"rna"``, ``"atac"``, ``"protein"``."""
        modalities = self.registry_["setup_args"]["modalities"]
        return [m for m in MODALITIES if modalities.get(_LAYER_ARGS[m]) is not None]

    def _modality_name(self, modality: str) -> str:
        return self.registry_["setup_args"]["modalities"][_LAYER_ARGS[modality]]

    def _flagged_present(self, modality: str, manager=None) -> np.ndarray | None:
        """The registered presence flag of ``modality`` (> 0.5), or ``None``.

        ``manager``: the data's :class:`~scvi.data.AnnDataManager`; ``None``: training data's.
        """
        manager = manager or self.adata_manager
        key = PRESENCE_KEYS[modality]
        if key not in manager.data_registry:
            return None
        flag = np.asarray(manager.get_from_registry(key), dtype=np.float64)
        return flag.reshape(-1) > 0.5

    def _has_counts(self, modality: str, row_sums: np.ndarray, manager=None) -> np.ndarray:
        """Cells that have ``modality`` and counts in it: rows flagged missing are never read."""
        flag = self._flagged_present(modality, manager)
        return row_sums > 0 if flag is None else (row_sums > 0) & flag

    def _init_depth(self) -> None:
        """Mean and scale of ``log1p(total counts)`` per modality (ATAC: of open regions)."""
        for i, m in enumerate(self.module.modalities):
            matrix = self.adata_manager.get_from_registry(DATA_KEYS[m])
            totals = row_and_column_sums(matrix, binary=m == "atac")[0]
            cells = self._has_counts(m, totals)
            if not cells.any():  # refused by train(); a query given to load() may lack it
                self._modalities_without_cells.append(self._modality_name(m))
            log_total = np.log1p(totals[cells] if cells.any() else totals)
            self.module.depth_mean[i] = float(log_total.mean())
            self.module.depth_scale[i] = float(max(log_total.std(), 1e-3))

    def _init_continuous_covariates(self) -> None:
        """Training mean and scale of each continuous covariate (the decoders standardise)."""
        if not self.module.n_continuous_cov:
            return
        mean, scale = mean_and_scale(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY)
        )
        copy_into(self.module, {"cont_cov_mean": mean, "cont_cov_scale": scale})

    def _init_atac(self) -> None:
        """Region factors that detect each region as often as in training; median open regions."""
        matrix = self.adata_manager.get_from_registry(REGISTRY_KEYS.ATAC_X_KEY)
        flag = self._flagged_present("atac")
        n_open, cells_open = row_and_column_sums(matrix, binary=True, column_rows=flag)
        cells = self._has_counts("atac", n_open)
        frequency = cells_open / max(int(cells.sum()), 1)  # over the cells with ATAC
        frequency = np.clip(frequency, 1e-5, 1 - 1e-5)
        copy_into(
            self.module,
            {
                # complementary log-log: the inverse of p = 1 - exp(-exp(x))
                "region_factor": np.log(-np.log1p(-frequency)),
                "atac_median_open": np.median(n_open[cells] if cells.any() else n_open),
            },
        )

    def _init_protein(self) -> None:
        """Protein background at a low quantile of each protein's counts; median library size."""
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.PROTEIN_EXP_KEY)
        counts = read_dense(counts).astype(np.float64)  # float16 sums would overflow
        present = self._has_counts("protein", counts.sum(1))
        counts = counts[present] if present.any() else counts
        totals = counts.sum(1)
        self.module.protein_median_total.fill_(float(np.median(totals)) if len(totals) else 1.0)
        if self.module.protein_likelihood == "mixture":
            low = np.quantile(counts, 0.2, axis=0) if len(counts) else np.ones(counts.shape[1])
            copy_into(self.module, {"protein_log_background": np.log1p(low)[:, None]})

    def _start_untrainable_entries(self, new_parts: dict) -> None:
        """A query's new batch without protein data: the reference batches' mean background.

        Started from the query's (absent) counts, its background would stay at 1 count and its
        denoised protein would come out many times too low.
        """
        new = new_parts.get("protein_log_background")
        if new is None or not new.any():
            return
        new = new.any(0).cpu().numpy()  # per batch
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.PROTEIN_EXP_KEY)
        has_protein = self._has_counts("protein", row_and_column_sums(counts)[0])
        batches = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY))
        unmeasured = new & ~np.isin(np.arange(len(new)), batches.reshape(-1)[has_protein])
        background = self.module.protein_log_background
        with torch.no_grad():
            background[:, unmeasured] = background[:, ~new].mean(1, keepdim=True)

    @classmethod
    def setup_anndata(cls, adata: AnnData, *args, **kwargs) -> None:
        """Not available: MultiVAE reads a MuData; use :meth:`setup_mudata`.

        Examples
        --------
        >>> MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
        """
        raise InputError(
            "MultiVAE reads a MuData with one modality per data type; use "
            "MultiVAE.setup_mudata(mdata, modalities={'rna_layer': 'rna', 'atac_layer': 'atac'})."
        )

    # -- setup ----------------------------------------------------------------------------------
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_mudata(
        cls,
        mdata: MuData,
        rna_layer: str | None = None,
        atac_layer: str | None = None,
        protein_layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        *,
        presence_keys: dict[str, str] | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs,
    ) -> None:
        """%(summary_mdata)s.

        Which data types the model uses is set by ``modalities``: any one, two or three of
        RNA, ATAC and protein. The MuData is never reordered or reassigned.

        Cells missing a modality (mosaic data) must still have a row in it, all zeros, so every
        modality has the cells of the MuData in the same order. Either flag them explicitly
        with ``presence_keys`` (boolean ``mdata.obs`` columns), or leave ``presence_keys``
        unset: then a cell whose row of a modality is all zero counts as missing it.

        Parameters
        ----------
        %(param_mdata)s
        rna_layer, atac_layer, protein_layer
            Layer of the modality with raw counts; ``None``: its ``X``.
        batch_key
            Column with each cell's batch, in ``mdata.obs`` or, if ``modalities`` names one
            for ``"batch_key"``, in that modality's ``obs``. ``None``: one batch.
        size_factor_key
            Numerical ``obs`` column with each cell's RNA size factor: its library size in
            counts, as in scvi-tools (a warning says so when the values look relative, e.g.
            about 1); ``None``: total RNA counts.
        %(param_cat_cov_keys)s
        %(param_cont_cov_keys)s
        presence_keys
            For each data type, a boolean ``mdata.obs`` column that is ``True`` where the cell
            has that modality, e.g. ``{"rna": "has_rna", "atac": "has_atac"}``. Data types left
            out count as missing where their row is all zero.
        modalities
            Modality of ``mdata`` for each data type and ``obs`` key, e.g.
            ``{"rna_layer": "rna", "atac_layer": "atac", "batch_key": "rna"}``. Keys:
            ``rna_layer``, ``atac_layer``, ``protein_layer`` (the data types to use),
            ``batch_key``, ``size_factor_key``, ``categorical_covariate_keys``,
            ``continuous_covariate_keys`` (whose ``obs`` to read; absent: ``mdata.obs``).

        Examples
        --------
        >>> MultiVAE.setup_mudata(
        ...     mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"}
        ... )
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_setup_arguments(cls.setup_mudata, kwargs, mdata)
        layers = {"rna": rna_layer, "atac": atac_layer, "protein": protein_layer}
        unread = [
            f"{data_type}_layer={layer!r}"
            for data_type, layer in layers.items()
            if layer is not None and f"{data_type}_layer" not in (modalities or {})
        ]
        # (not for the setup of a saved model, which may hold one from before this check)
        if modalities is not None and unread and kwargs.get("source_registry") is None:
            raise InputError(
                f"{', '.join(unread)}: given, but modalities names no modality for "
                f"{'it' if len(unread) == 1 else 'them'}, so not read (modalities: {modalities}). "
                "Name the layers by keyword, "
                "e.g. protein_layer='counts' (TOTALVI's setup_mudata takes protein_layer second; "
                "here atac_layer is)."
            )
        if kwargs.get("source_registry") is None:  # models saved before may repeat one
            check_distinct_keys(setup_method_args["setup_args"])
        query = kwargs.get("source_registry") is not None
        names = cls._check_data(mdata, setup_method_args["setup_args"], query=query)
        if query:
            cls._check_known_categories(
                mdata,
                kwargs["source_registry"],
                allow_new_categories=kwargs.get("extend_categories", False),
            )
        modalities = dict(modalities)
        presence_keys = dict(presence_keys or {})
        fields = [
            MuDataCategoricalObsField(
                REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities.get("batch_key")
            ),
            MuDataCategoricalJointObsField(
                REGISTRY_KEYS.CAT_COVS_KEY,
                categorical_covariate_keys,
                mod_key=modalities.get("categorical_covariate_keys"),
            ),
            MuDataNumericalJointObsField(
                REGISTRY_KEYS.CONT_COVS_KEY,
                continuous_covariate_keys,
                mod_key=modalities.get("continuous_covariate_keys"),
            ),
        ]
        if size_factor_key is not None:
            fields.append(
                MuDataNumericalObsField(
                    REGISTRY_KEYS.SIZE_FACTOR_KEY,
                    size_factor_key,
                    mod_key=modalities.get("size_factor_key"),
                )
            )
        for data_type, name in names.items():
            fields.append(
                MuDataLayerField(
                    DATA_KEYS[data_type],
                    layers[data_type],
                    mod_key=name,
                    is_count_data=True,
                    mod_required=True,
                )
            )
            if data_type in presence_keys:
                fields.append(
                    MuDataNumericalObsField(
                        PRESENCE_KEYS[data_type], presence_keys[data_type], mod_key=None
                    )
                )
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def _check_data(cls, mdata: MuData, setup_args: dict, query: bool = False) -> dict:
        """Checks shared by setup and new data: cells aligned, counts, ``obs`` columns.

        Returns the modality name of each data type (as :func:`_check_modalities`).

        Only training data must give every cell some data: a query cell without any is encoded
        from nothing, as in scvi-tools.
        """
        modalities = setup_args["modalities"]
        names = _check_modalities(mdata, modalities)
        for where, data in [
            ("MuData", mdata),
            *((f"modality {n!r}", mdata.mod[n]) for n in names.values()),
        ]:
            if not data.obs_names.is_unique:  # (mudata cannot match such cells across modalities)
                raise InputError(
                    f"{where}: cell names (obs_names) repeat, so cells cannot be matched across "
                    "modalities; make them unique, the same name for the same cell in every "
                    "modality (where the modalities list the cells in the same order: `for mod "
                    "in mdata.mod.values(): mod.obs_names_make_unique()`), then `mdata.update()`."
                )
        layers = {m: setup_args.get(_LAYER_ARGS[m]) for m in MODALITIES}
        _check_cells_aligned(mdata, names, query)
        row_sums = {}
        for data_type, name in names.items():
            mod = mdata.mod[name]
            where = f"modality {name!r} ({data_type}): "
            if mod.n_vars == 0:
                raise InputError(f"{where}it has no features; drop it from modalities.")
            row_sums[data_type] = check_matrix(
                mod,
                layers[data_type],
                counts=True,
                allow_empty_cells=True,
                allow_empty_features=query or "warn",
                where=where,
                layer_argument=None if query else _LAYER_ARGS[data_type],
            )
        presence_keys = dict(setup_args.get("presence_keys") or {})
        unknown = sorted(set(presence_keys) - set(names))
        if unknown:
            raise InputError(
                f"presence_keys names data types the model does not use: {unknown} "
                f"(used: {list(names)})."
            )
        for data_type, key in presence_keys.items():
            if key not in mdata.obs:
                raise InputError(
                    f"MuData: obs has no column {key!r} (presence_keys[{data_type!r}]). Add it: "
                    f"True for cells with {data_type} data, False for the others."
                )
            _presence_flag(mdata.obs, key, data_type)  # refuses flags it cannot read
        presence = cls._check_presence(mdata, names, row_sums, presence_keys, query)
        batch_key = setup_args.get("batch_key")
        _check_keys_in_modalities(mdata, modalities, setup_args, query)
        check_obs_keys(
            _obs(mdata, modalities, "batch_key"),
            categorical=[batch_key] if batch_key else [],
            allow_unused_categories=query,
            in_mudata=True,
        )
        if batch_key and "protein" in names and not query:
            protein = mdata.mod[names["protein"]]
            _warn_unmeasured_proteins(
                get_matrix(protein, layers["protein"]),
                protein.var_names,
                _obs(mdata, modalities, "batch_key").obs[batch_key].to_numpy(),
                presence["protein"],
            )
        check_obs_keys(
            _obs(mdata, modalities, "categorical_covariate_keys"),
            categorical=setup_args.get("categorical_covariate_keys"),
            allow_unused_categories=query,
            in_mudata=True,
        )
        check_obs_keys(
            _obs(mdata, modalities, "continuous_covariate_keys"),
            continuous=setup_args.get("continuous_covariate_keys"),
        )
        size_factor_key = setup_args.get("size_factor_key")
        source = _obs(mdata, modalities, "size_factor_key")
        totals = row_sums.get("rna")
        check_size_factors(source, size_factor_key, None if totals is None else totals == 0)
        if size_factor_key is not None and totals is not None and (totals > 0).any():
            factor = float(np.median(source.obs[size_factor_key].to_numpy()[totals > 0]))
            total = float(np.median(totals[totals > 0]))
            if not 0.1 < factor / total < 10:
                warn_user(
                    f"obs[{size_factor_key!r}] has median {factor:.3g}, but cells hold a median "
                    f"of {total:.3g} RNA counts. MultiVAE's size factor is the library size in "
                    "counts, as in scvi-tools; multiply relative size factors (about 1) by the "
                    "median total count."
                )
        return names

    @classmethod
    def _get_most_recent_anndata_manager(cls, adata, required: bool = False):
        """scvi-tools' look-up, with a message that names ``setup_mudata``."""
        try:
            return super()._get_most_recent_anndata_manager(adata, required)
        except ValueError as error:  # scvi-tools' message names setup_anndata
            message = str(error).replace(
                "AnnData with MultiVAE.setup_anndata", "MuData with MultiVAE.setup_mudata"
            )
            raise InputError(message) from None

    @staticmethod
    def _check_known_categories(
        mdata: MuData,
        registry: dict,
        encoder_reads_covariates: bool | None = None,
        allow_new_categories: bool = False,
    ) -> None:
        modalities = registry["setup_args"]["modalities"]
        sources = {
            arg: _obs(mdata, modalities, arg)
            for arg in ("batch_key", "categorical_covariate_keys")
        }
        check_known_categories(
            mdata, registry, sources, encoder_reads_covariates, allow_new_categories
        )

    @staticmethod
    def _check_presence(mdata, names, row_sums, presence_keys, query: bool) -> dict:
        """Warn where presence flags contradict the counts; training cells need some data.

        Returns which cells have each data type.
        """
        has_any = np.zeros(mdata.n_obs, dtype=bool)
        presence = {}
        for data_type, name in names.items():
            has_counts = row_sums[data_type] > 0
            present = has_counts
            if data_type in presence_keys:
                key = presence_keys[data_type]
                present = _presence_flag(mdata.obs, key, data_type)
                # Shallow query cells may have no reads in the peaks: for queries only counts
                # that a flag makes the model ignore warn (on every call that reads them), and
                # a data type flagged present in 10 or more cells without any counts there
                # (e.g. flags set anew on an added modality).
                n_empty = int((present & ~has_counts).sum())
                for n, what, warn in (
                    (
                        n_empty,
                        "flagged present have an all-zero row",
                        not query or n_empty == int(present.sum()) >= 10,
                    ),
                    (
                        int((~present & has_counts).sum()),
                        "flagged missing hold counts (ignored)",
                        True,
                    ),
                ):
                    if n:
                        message = (
                            f"{n} cells {what} in {data_type} ({name!r}); check obs[{key!r}]."
                        )
                        if warn:
                            warn_user(message)
                        else:
                            logger.info(message)
            n_missing = int((~present).sum())
            if n_missing and not query:
                how = (
                    f"flag {presence_keys[data_type]!r}"
                    if data_type in presence_keys
                    else ("all-zero rows")
                )
                logger.info(
                    "%d cells miss %s (%s); they train on their other data.",
                    n_missing,
                    data_type,
                    how,
                )
            has_any |= present
            presence[data_type] = present
        if not query:
            _check_modalities_linked(presence, names)
        if not query and not has_any.all():
            raise InputError(
                f"{int((~has_any).sum())} cells have none of the modalities {list(names)} "
                "(all-zero rows or flagged missing everywhere). Remove them first."
            )
        return presence

    # -- training -------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 128,
        early_stopping: bool = True,
        early_stopping_patience: int = 15,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        n_epochs_kl_warmup: int | None = 20,
        train_size: float | None = 0.9,
        gradient_clip_val: float | None = 10.0,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train with Adam on minibatches, stopping on the validation loss.

        Parameters
        ----------
        max_epochs
            Upper bound on epochs. ``None``: ``2e6 / n_cells``, between 50 and 500.
        batch_size
            Minibatch size.
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience``
            epochs and restore the weights of the best epoch, counting only the epochs after
            the KL warm-up (whose rising KL weight worsens the loss; scvi-tools'
            ``early_stopping_warmup_epochs``, which may be passed to change it).
        early_stopping_patience
            Epochs without improvement before stopping.
        lr, weight_decay
            Learning rate and weight decay of Adam.
        n_epochs_kl_warmup
            Epochs over which the weight of the KL term rises linearly from 0 to 1 (``None``:
            scvi-tools' ``plan_kwargs={"n_steps_kl_warmup": ...}`` minibatches if given, else
            none).
        train_size
            Share of cells used for training; the rest validate (1.0: no validation, no early
            stopping).
        gradient_clip_val
            Clip gradients to this norm; ``None`` to turn off.
        plan_kwargs
            Other arguments of the training plan: :class:`scgexp.train.TrainingPlan`, or
            :class:`~scgexp.train.InvarianceTrainingPlan` when the model has ``invariance``
            (e.g. ``n_epochs_warmup``, ``lr_decay``).
        **trainer_kwargs
            Passed to :meth:`scgexp.train.TrainingMixin.train` (``data_mode``) and on to
            Lightning.

        Examples
        --------
        >>> model.train(max_epochs=100)
        >>> model.history["validation_loss"].tail()
        """
        if self._modalities_without_cells and not (self.is_trained_ or self.mapped_query_):
            names = ", ".join(map(repr, self._modalities_without_cells))
            raise InputError(
                f"No training cell has {names} data (all rows are empty or flagged absent); set "
                "the model up without that modality."
            )
        if max_epochs is None:
            max_epochs = int(min(500, max(50, round(2e6 / max(self.summary_stats.n_cells, 1)))))
        plan_kwargs = self._plan_settings(
            {
                "lr": lr,
                "weight_decay": weight_decay,
                "n_epochs_kl_warmup": n_epochs_kl_warmup,
            },
            plan_kwargs,
        )
        self._training_plan_cls = TrainingPlan
        if self.module.invariance is not None:
            self._training_plan_cls = InvarianceTrainingPlan
            plan_kwargs.setdefault("n_epochs_warmup", 0)
        if gradient_clip_val is not None:  # TrainingMixin routes it to an invariance plan
            trainer_kwargs.setdefault("gradient_clip_val", gradient_clip_val)
        if self._trains_encoder():  # else the KL weight changes nothing
            warn_if_annealing_unfinished(max_epochs, plan_kwargs)
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        warmups = plan_kwargs.get("n_epochs_warmup", 0) + (plan_kwargs["n_epochs_kl_warmup"] or 0)
        trainer_kwargs.setdefault("early_stopping_warmup_epochs", warmups)
        return super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            plan_kwargs=plan_kwargs,
            **trainer_kwargs,
        )

    def _check_registered_data(self) -> None:
        # Cells are read by position: a modality reordered or cut in place since setup would
        # pair one cell's RNA with another's ATAC.
        names = {data_type: self._modality_name(data_type) for data_type in self.data_modalities}
        try:
            _check_cells_aligned(self.adata, names)
        except InputError as error:
            raise InputError(
                f"The data registered with this model changed after setup: {error}"
            ) from None
        super()._check_registered_data()

    def _check_new_data(self, adata: MuData) -> None:
        # scvi-tools compares only feature counts and reads cells by position: check names,
        # cell alignment, counts, obs columns and categories first.
        check_feature_names(adata, self.registry_)
        setup_args = self.registry_["setup_args"]
        self._check_data(adata, setup_args, query=True)
        self._check_known_categories(adata, self.registry_, self.module.encode_covariates)
        self._warn_outside_training(adata)

    def _warn_outside_training(self, adata: MuData) -> None:
        setup_args = self.registry_["setup_args"]
        keys = setup_args.get("continuous_covariate_keys") or []
        if keys:
            warn_outside_training(
                _obs(adata, setup_args["modalities"], "continuous_covariate_keys").obs,
                keys,
                self.module.cont_cov_mean.cpu().numpy(),
                self.module.cont_cov_scale.cpu().numpy(),
            )

    # -- outputs on registered data -------------------------------------------------------------
    def _check_modality(
        self, modality: str | None, allow_none: bool = True, argument: str = "modality"
    ) -> None:
        if modality is None and allow_none:
            return
        if modality not in self.data_modalities:
            raise InputError(
                f"{argument}={modality!r} is not a data type of this model; it uses "
                f"{self.data_modalities}{' (None: all of them)' if allow_none else ''}."
            )

    def _batches(
        self,
        mdata: MuData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        use_modalities: Sequence[str] | None = None,
        dataloader: Iterator[dict] | None = None,
    ) -> Iterator[tuple[dict, dict]]:
        self._check_if_trained(warn=False)
        loader = dataloader
        if loader is None:
            mdata = self._validate_anndata(mdata)
            loader = self._make_data_loader(adata=mdata, indices=indices, batch_size=batch_size)
        self.module.eval()
        for tensors in loader:
            inputs = self.module._get_inference_input(tensors)
            outputs = self.module.inference(**inputs, use_modalities=use_modalities)
            yield tensors, outputs

    @refuse_unknown_arguments()
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        modality: Literal["rna", "atac", "protein"] | None = None,
        *,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader: Iterator[dict] | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Joint (or one modality's) latent representation, one row per cell.

        Parameters
        ----------
        adata
            MuData organised like the training data; ``None``: the training data.
        modality
            ``None``: the joint posterior of all the modalities each cell has. ``"rna"``,
            ``"atac"`` or ``"protein"``: the posterior from that modality alone (as for a cell
            that had only it); cells missing it get rows of NaN. MULTIVI's names work too:
            ``"joint"``, ``"expression"``, ``"accessibility"``; second, as in MULTIVI.
        indices
            Cells to use; ``None``: all.
        give_mean
            Posterior mean; ``False``: one draw.
        batch_size
            Cells per forward pass.
        return_dist
            Return the posterior's means and variances instead, as scvi-tools' models do.
        dataloader
            Minibatches to encode instead of ``adata`` / ``indices`` (scvi-tools'
            ``get_aggregated_posterior`` and ``differential_abundance`` pass one).

        Returns
        -------
        Array of shape ``(n_cells, n_latent)``, or two (means, variances).

        Examples
        --------
        >>> mdata.obsm["X_multivae"] = model.get_latent_representation()
        >>> mdata.obsm["X_multivae_atac"] = model.get_latent_representation(modality="atac")
        """
        if isinstance(modality, str) and _MULTIVI_MODALITIES.get(modality, "") in (
            None,
            *self.data_modalities,
        ):  # MULTIVI's name of a data type this model has
            modality = _MULTIVI_MODALITIES[modality]
        self._check_modality(modality)
        use = [modality] if modality is not None else None
        keys = ("qzm", "qzv") if return_dist else ("qzm" if give_mean else "z",)
        latent = {key: [] for key in keys}
        n_without = 0
        for _, outputs in self._batches(adata, indices, batch_size, use, dataloader):
            if modality is not None:
                without = ~outputs["masks"][modality].cpu().numpy()
                n_without += int(without.sum())
            for key in keys:
                z = outputs[key].cpu().numpy().astype(np.float32)
                if modality is not None:
                    z[without] = np.nan
                latent[key].append(z)
        if n_without:
            warn_user(
                f"{n_without} cells have no {modality} data; their rows are NaN, which "
                "sc.pp.neighbors refuses. The joint latent (modality=None) has every cell."
            )
        arrays = tuple(np.concatenate(parts) for parts in latent.values())
        return arrays if return_dist else arrays[0]

    @torch.inference_mode()
    def _decoded(
        self,
        target: str,
        adata: MuData | None,
        indices: Sequence[int] | None,
        transform_batch,
        batch_size: int | None,
        n_samples: int,
        draw: bool = False,
    ) -> np.ndarray:
        """Normalised output of ``target`` (see the public methods), averaged over draws.

        ``draw``: decode one posterior draw per cell instead (``n_samples`` is ignored).
        """
        self._check_modality(target, allow_none=False)
        codes = batch_codes(transform_batch, self.registry_)  # several: averaged, as MULTIVI
        out = []
        for tensors, inference in self._batches(adata, indices, batch_size):
            generative_input = self.module._get_generative_input(tensors, inference)
            generative_input["library"] = {}
            draws = []
            for _ in range(1 if draw else max(n_samples, 1)):
                z = inference["qzm"] if n_samples <= 1 and not draw else inference["qz"].sample()
                generative_input["z"] = z
                for code in codes:
                    outputs = self.module.generative(
                        **generative_input, transform_batch=code, modalities=[target]
                    )
                    draws.append(self._normalised(target, outputs[f"p_{target}"]))
            out.append(torch.stack(draws).mean(0).cpu().numpy())
        return np.concatenate(out)

    def _normalised(self, target: str, dist) -> torch.Tensor:
        if target == "rna":
            return dist.scale
        if target == "atac":
            return dist.probs
        if self.module.protein_likelihood == "nb":
            return dist.mu
        return (1.0 - torch.sigmoid(dist.mixture_logits)) * dist.mu2  # foreground only

    def _frame(self, values, target, feature_list, adata, indices, return_numpy):
        names = self._var_names(target)
        argument = {"rna": "gene_list", "atac": "region_list"}.get(target, "protein_list")
        if feature_list is not None:
            known_at = f"model.training_var_names[{self._modality_name(target)!r}]"
            position = feature_positions(names, feature_list, argument, known_at)
            values, names = values[:, position], pd.Index(names)[position]
        if return_numpy:
            return values
        obs_names = (adata if adata is not None else self.adata).obs_names
        if indices is not None:
            obs_names = obs_names[np.asarray(indices)]
        return pd.DataFrame(values, index=obs_names, columns=names)

    @refuse_unknown_arguments(
        use_z_mean=_POSTERIOR_MEAN,
        return_mean=_POSTERIOR_MEAN,
        n_samples_overall="Choose cells with indices= (e.g. a random subset).",
        include_protein_background="Proteins come from get_normalized_protein.",
    )
    def get_normalized_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float = 1.0,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Expected RNA expression per cell, decoded from the joint posterior.

        For cells without RNA this is RNA imputed from their other modalities.

        Parameters
        ----------
        adata
            MuData organised like the training data; ``None``: the training data.
        indices
            Cells to use; ``None``: all.
        transform_batch
            Decode every cell as this batch (batch-corrected values), or average the values
            decoded as each of several batches; ``None``: its own.
        gene_list
            Return these genes only, in this order (scvi-tools keeps the data's order).
        library_size
            Scale the expression proportions to this total (e.g. ``1e4``).
        n_samples
            Average over this many posterior draws; 1: decode the posterior mean.
        batch_size
            Cells per forward pass.
        return_numpy
            Return an array instead of a DataFrame.

        Returns
        -------
        Cells × genes :class:`~pandas.DataFrame` (or array).

        Examples
        --------
        >>> mdata["rna"].layers["multivae"] = model.get_normalized_expression(
        ...     library_size=1e4, return_numpy=True
        ... )
        """
        check_library_size(library_size)
        values = self._decoded("rna", adata, indices, transform_batch, batch_size, n_samples)
        return self._frame(values * library_size, "rna", gene_list, adata, indices, return_numpy)

    @refuse_unknown_arguments(
        use_z_mean=_POSTERIOR_MEAN,
        threshold="Binarise the values yourself, e.g. `values > 0.5`.",
        normalize_cells="Every cell is already decoded at a typical training cell's depth.",
        normalize_regions="Region effects are part of the decoded probability.",
    )
    def get_normalized_accessibility(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        transform_batch: str | Sequence[str] | None = None,
        region_list: Sequence[str] | None = None,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Probability that each region is detected as open, for a cell of median depth.

        It is decoded without the cell factor (the log of the cell's open regions over the
        median), so cells are comparable whatever their depth (and cells without ATAC get
        imputed values).

        Parameters
        ----------
        adata, indices, transform_batch, n_samples, batch_size, return_numpy
            As in :meth:`get_normalized_expression`.
        region_list
            Return these regions only, in this order (scvi-tools keeps the data's order).

        Returns
        -------
        Cells × regions :class:`~pandas.DataFrame` (or array) of probabilities.

        Examples
        --------
        >>> accessibility = model.get_normalized_accessibility(return_numpy=True)
        """
        values = self._decoded("atac", adata, indices, transform_batch, batch_size, n_samples)
        return self._frame(values, "atac", region_list, adata, indices, return_numpy)

    @refuse_unknown_arguments(
        use_z_mean=_POSTERIOR_MEAN,
        include_protein_background="Mixture values are the foreground (background removed).",
    )
    def get_normalized_protein(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        transform_batch: str | Sequence[str] | None = None,
        protein_list: Sequence[str] | None = None,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised protein counts per cell.

        With the mixture likelihood: the expected foreground counts (background removed);
        with ``"nb"``: the expected counts at the median protein library size of training.

        Parameters
        ----------
        adata, indices, transform_batch, n_samples, batch_size, return_numpy
            As in :meth:`get_normalized_expression`.
        protein_list
            Return these proteins only, in this order (scvi-tools keeps the data's order).

        Returns
        -------
        Cells × proteins :class:`~pandas.DataFrame` (or array).

        Examples
        --------
        >>> proteins = model.get_normalized_protein()
        """
        values = self._decoded("protein", adata, indices, transform_batch, batch_size, n_samples)
        return self._frame(values, "protein", protein_list, adata, indices, return_numpy)

    # -- differential expression and accessibility --------------------------------------------
    def _differential(
        self, target: str, method: str, args: dict, prior_count: float = 0.0
    ) -> pd.DataFrame:
        """scvi-tools' DE on one posterior draw per cell of ``target``'s normalised output.

        ``args``: the public method's arguments; ``prior_count`` is added to the output.
        Observed statistics come from the cells that have ``target``'s data.
        """
        if target not in self.data_modalities:
            raise InputError(
                f"{method} needs {target} data; this model uses {self.data_modalities}."
            )
        manager = self.get_anndata_manager(self._validate_anndata(args["adata"]), True)
        batch_size = args["batch_size"]
        # As MULTIVI: scvi-tools would estimate it from X, which holds RNA (or nothing).
        args = dict(args, kwargs={"pseudocounts": 1e-6, **args["kwargs"]})
        rng = np.random.default_rng(settings.seed)

        key = DATA_KEYS[target]
        matrix = manager.get_from_registry(key)
        totals = row_and_column_sums(matrix)[0]  # in row blocks: backed data too
        has_data = self._has_counts(target, totals, manager)
        # NB protein outputs are at the median library; the test compares counts at the mean
        # library of each group's cells (scvi-tools decodes a group's cells in each call).
        median = None
        if target == "protein" and self.module.protein_likelihood == "nb":
            median = float(self.module.protein_median_total)

        def decoded(data, indices, transform_batch, n_samples_overall=None):
            factor = 1.0
            if median is not None:
                cells = np.asarray(indices)
                cells = cells[has_data[cells]]
                if not len(cells):
                    raise InputError(
                        "A group holds no cell with protein data, so its protein counts have "
                        "no library size to be compared at; compare cells that have protein data."
                    )
                factor = totals[cells].mean() / median
            indices = draw_indices(indices, n_samples_overall, rng)
            values = self._decoded(
                target, data, indices, transform_batch, batch_size, n_samples=1, draw=True
            )
            return values * factor + prior_count

        def observed(adata_manager, idx1, idx2):
            # scvi-tools' scrna/scatac_raw_counts_properties on the cells that have the data,
            # without caching 1e4 / total in obs (infinite for cells without RNA); NaN for a
            # group with no such cell.
            rows = [read_rows(matrix, np.asarray(i, dtype=bool) & has_data) for i in (idx1, idx2)]
            if target != "atac":  # protein: as TOTALVI's protein rows
                return count_statistics(*rows, normalized=target == "rna")
            stats = {f"emp_mean{n}": column_means(r > 0) for n, r in enumerate(rows, start=1)}
            stats["emp_effect"] = stats["emp_mean1"] - stats["emp_mean2"]
            return stats

        return differential(manager, decoded, observed, self._var_names(target), args)

    @de_dsp.dedent
    def differential_expression(
        self,
        adata: MuData | None = None,
        groupby: str | None = None,
        group1: Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        **kwargs,
    ) -> pd.DataFrame:
        r"""Differential expression between two groups of cells, as scvi-tools' MULTIVI.

        On one posterior draw per cell of :meth:`get_normalized_expression` (the joint
        posterior of the modalities each cell has, so cells without RNA count with their
        imputed expression); the observed statistics use the cells that have RNA.

        Parameters
        ----------
        %(de_adata)s
        %(de_groupby)s
        %(de_group1)s
        %(de_group2)s
        %(de_idx1)s
        %(de_idx2)s
        %(de_mode)s
        %(de_delta)s
        %(de_batch_size)s
        %(de_all_stats)s
        %(de_batch_correction)s
        %(de_batchid1)s
        %(de_batchid2)s
        %(de_fdr_target)s
        %(de_silent)s
        **kwargs
            Passed to :meth:`scvi.model.base.DifferentialComputation.get_bayes_factors`
            (e.g. ``pseudocounts``, 1e-6 by default as in MULTIVI).

        Returns
        -------
        scvi-tools' differential expression :class:`~pandas.DataFrame`, indexed by gene.

        Examples
        --------
        >>> markers = model.differential_expression(groupby="cell_type", group1="type_0")
        >>> markers.sort_values("lfc_mean", ascending=False).head()
        """
        return self._differential("rna", "differential_expression", locals())

    @de_dsp.dedent
    def differential_accessibility(
        self,
        adata: MuData | None = None,
        groupby: str | None = None,
        group1: Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.05,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        **kwargs,
    ) -> pd.DataFrame:
        r"""Differential accessibility between two groups of cells, as scvi-tools' MULTIVI.

        On one posterior draw per cell of :meth:`get_normalized_accessibility` (decoded at
        the median depth, so groups sequenced to different depths do not differ for that
        reason alone); the observed rates use the cells that have ATAC.

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
            Smallest change that counts (``mode="change"``): a difference in the probability
            of detection with the default ``change_fn``, a log2 fold change with
            ``change_fn="log-fold"``.
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
        :class:`~pandas.DataFrame` indexed by region, with the columns of
        :meth:`scgexp.model.SAILER.differential_accessibility`.

        Examples
        --------
        >>> da = model.differential_accessibility(groupby="cell_type", group1="type_0")
        >>> da.sort_values("prob_da", ascending=False).head()
        """
        arguments = dict(locals(), kwargs=accessibility_change(kwargs))
        result = self._differential("atac", "differential_accessibility", arguments)
        return accessibility_table(result, mode, fdr_target)

    @de_dsp.dedent
    def differential_protein(
        self,
        adata: MuData | None = None,
        groupby: str | None = None,
        group1: Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        protein_prior_count: float = 0.1,
        **kwargs,
    ) -> pd.DataFrame:
        r"""Differential protein abundance between two groups of cells, as scvi-tools' TOTALVI.

        On one posterior draw per cell of the expected protein counts plus
        ``protein_prior_count``, so the test compares how much of each protein the cells carry:
        with ``protein_likelihood="nb"`` (the default) the expected counts at the mean protein
        library size of the group's cells that have protein data (a group without any is
        refused), not at one library size for all as :meth:`get_normalized_protein`, whose
        shares of the library a few abundant proteins dominate; with ``"mixture"`` the
        expected foreground counts, background removed, as TOTALVI's. The observed statistics
        use the cells that have protein data. TOTALVI lists the proteins in its
        ``differential_expression`` table, after the genes.

        Parameters
        ----------
        %(de_adata)s
        %(de_groupby)s
        %(de_group1)s
        %(de_group2)s
        %(de_idx1)s
        %(de_idx2)s
        %(de_mode)s
        %(de_delta)s
        %(de_batch_size)s
        %(de_all_stats)s
        %(de_batch_correction)s
        %(de_batchid1)s
        %(de_batchid2)s
        %(de_fdr_target)s
        %(de_silent)s
        protein_prior_count
            Counts added to every decoded value (TOTALVI's default), so that proteins with
            almost no foreground in both groups do not get large fold changes.
        **kwargs
            Passed to :meth:`scvi.model.base.DifferentialComputation.get_bayes_factors`.

        Returns
        -------
        scvi-tools' differential expression :class:`~pandas.DataFrame`, indexed by protein,
        with the observed ``raw_mean1``/``2`` and ``non_zeros_proportion1``/``2``.

        Examples
        --------
        >>> markers = model.differential_protein(groupby="cell_type", group1="type_0")
        >>> markers.sort_values("lfc_mean", ascending=False).head()
        """
        if not (
            isinstance(protein_prior_count, numbers.Real)
            and 0 <= protein_prior_count < np.inf  # not NaN either
        ):
            raise InputError(
                f"protein_prior_count must be a number, 0 or more, not {protein_prior_count!r}."
            )
        return self._differential(
            "protein", "differential_protein", locals(), prior_count=protein_prior_count
        )

    # -- cross-modal prediction on new data -----------------------------------------------------
    def _var_names(self, data_type: str) -> pd.Index:
        # The registry's training features: the registered data may have changed since setup.
        return pd.Index(self.training_var_names[self._modality_name(data_type)])

    def _source_data(self, data: MuData | AnnData, source: str) -> tuple[AnnData, object]:
        """The source modality's AnnData and its count matrix in training feature order."""
        name = self._modality_name(source)
        if isinstance(data, MuData):
            if name not in data.mod:
                raise InputError(
                    f"The MuData has no modality {name!r} (the {source} of training); "
                    f"it has {list(data.mod)}."
                )
            adata = data.mod[name]
        elif isinstance(data, AnnData):
            adata = data
        else:
            raise InputError(f"predict needs a MuData or an AnnData, not {type(data).__name__}.")
        layer = self.registry_["setup_args"][_LAYER_ARGS[source]]
        check_matrix(
            adata,
            layer,
            counts=True,
            allow_empty_cells=True,
            allow_fortran=True,  # read here in row blocks, never handed to scvi-tools
            where=f"{source} ({name!r}): ",
            layer_argument=None,  # the model's own layer
        )
        matrix = get_matrix(adata, layer)
        trained = self._var_names(source)
        if not adata.var_names.equals(trained):
            repeated = adata.var_names.duplicated(keep=False)  # only extra features may repeat
            clash = trained[trained.isin(adata.var_names[repeated])]
            if len(clash):
                raise InputError(
                    f"{source} ({name!r}) holds trained features more than once: "
                    f"{', '.join(map(str, clash[:10]))}. Make var names unique first."
                )
            position = positions_among(adata.var_names, ~repeated, trained)
            if (position < 0).any():
                absent = ", ".join(map(str, trained[position < 0][:5]))
                raise InputError(
                    f"{source} ({name!r}) lacks {int((position < 0).sum())} of the "
                    f"{len(trained)} features the model was trained on (first: {absent}). Add "
                    f"them; the list is model.training_var_names[{source!r}]."
                )
            logger.info("Reordering the %s features to the training order.", source)
            matrix = take_columns(matrix, position)
        return adata, matrix

    def _codes(self, data, obs: pd.DataFrame, setup_arg: str, registry_key: str, keys) -> list:
        """Integer codes of categorical ``obs`` columns, in the training mappings."""
        if not keys:
            return []
        fields = self.registry_["field_registries"][registry_key]["state_registry"]
        mappings = (
            {keys[0]: fields["categorical_mapping"]}
            if registry_key == REGISTRY_KEYS.BATCH_KEY
            else fields["mappings"]
        )
        codes = []
        for key in keys:
            column = self._column(data, obs, setup_arg, key)
            if column.isna().any():  # e.g. a modality pad_modalities filled: its added rows
                raise InputError(self._missing_values_message(data, setup_arg, key, column))
            known = pd.Index(np.asarray(mappings[key]))
            position = known.get_indexer(column)
            if (position < 0).any():
                unknown = pd.unique(column[position < 0])[:10]
                if pd.Index(map(str, unknown)).isin(known.map(str)).all():
                    modality = self.registry_["setup_args"]["modalities"].get(setup_arg)
                    in_modality = isinstance(data, MuData) and modality is not None
                    where = f"query[{modality!r}].obs" if in_modality else "query.obs"
                    raise _CategoryTypeError(
                        f"obs[{key!r}] holds {pd.Series(unknown).tolist()}; the model knows "
                        f"{known.tolist()}. " + only_the_type_differs(known, where, key)
                    )
                fix = "Relabel those cells to known categories"
                if not self.module.encode_covariates:
                    fix += (
                        " (this model's encoder does not read the batch or covariates, so any "
                        "known category gives these cells the same latent representation)"
                    )
                if setup_arg == "batch_key":  # predict then encodes them as that batch
                    fix += f", pass a known batch as transform_batch (e.g. {known.tolist()[0]!r})"
                raise InputError(
                    f"obs[{key!r}] has categories the model was not trained with: "
                    f"{pd.Series(unknown).tolist()}; it knows {known.tolist()}. {fix}, add "
                    "theirs to the model with `MultiVAE.load_query_data(query_mdata, model)` and "
                    "train it on them, or train a model that includes them."
                )
            codes.append(position)
        return codes

    def _missing_values_message(self, data, setup_arg: str, key: str, column) -> str:
        """Where ``column`` (read for ``setup_arg``) lacks values, and how to fill them in."""
        n = int(column.isna().sum())
        if not isinstance(data, MuData):
            fix = f"Give those cells theirs, or leave them out: `adata = adata[adata.obs[{key!r}]"
            fix += ".notna()].copy()`."
        else:
            modality = self.registry_["setup_args"]["modalities"].get(setup_arg)
            where = "mdata.obs" if modality is None else f"mdata[{modality!r}].obs"
            fix = f"Fill in {where}[{key!r}] for those cells first."
        return (
            f"obs[{key!r}] is missing for {n} cells (rows that pad_modalities added to a "
            f"modality have none). {fix}"
        )

    def _column(self, data, obs: pd.DataFrame, setup_arg: str, key: str) -> pd.Series:
        modalities = self.registry_["setup_args"]["modalities"]
        if isinstance(data, MuData):
            if modalities.get(setup_arg) not in (None, *data.mod):
                raise InputError(
                    f"The model reads {setup_arg} from modality {modalities[setup_arg]!r}, which "
                    f"this MuData lacks (it has {list(data.mod)}). Add that modality, or pass "
                    f"the source AnnData with obs[{key!r}]."
                )
            frame = _obs(data, modalities, setup_arg).obs
        else:
            frame = obs
        if key not in frame:
            _check_keys_in_modalities(data, modalities, {setup_arg: key}, query=True)
            fix = (
                "Add it, or pass transform_batch= to decode every cell as one batch."
                if setup_arg == "batch_key"
                else "Add it with each cell's value (pass a MuData if it lives in mdata.obs)."
            )
            message = f"obs has no column {key!r}, which the model needs ({setup_arg}). "
            raise InputError(message + fix)
        if not isinstance(data, MuData) or frame.index.equals(obs.index):
            return frame[key]
        if obs.index.has_duplicates or frame.index.has_duplicates:
            raise InputError(
                f"obs[{key!r}] is matched to the source cells by name, but the cell names are "
                "not unique. Make them unique, the same name for the same cell in every "
                "modality (e.g. `mod.obs_names_make_unique()` for each modality whose cells "
                "come in the same order), then `mdata.update()`."
            )
        column = frame[key].reindex(obs.index)  # the source cells' values, matched by name
        if column.isna().any():
            raise InputError(
                f"obs[{key!r}] has no value for {int(column.isna().sum())} cells of the source "
                "modality (missing values, or cells absent from where the column is read). Fill "
                "them in before predicting."
            )
        return column

    @refuse_unknown_arguments()
    @torch.inference_mode()
    def predict(
        self,
        mdata_new: MuData | AnnData,
        source: Literal["rna", "atac", "protein"],
        target: Literal["rna", "atac", "protein"],
        transform_batch: str | None = None,
        n_samples: int = 25,
        batch_size: int = 256,
    ) -> AnnData:
        """Predict one modality from another (cross-modal prediction), with uncertainty.

        Only the ``source`` modality of the new cells is read: it is encoded alone and the
        ``target`` decoder turns the posterior into normalised values of the target modality.
        New cells need not have the target modality, and features of the source may come in
        another order or with extra features (they are matched by name). The result has one row
        per cell of the source modality; batch and covariate values are matched to those cells
        by name, wherever they are read from.

        Parameters
        ----------
        mdata_new
            MuData with the source modality under its training name, or the source AnnData.
            Its batch (and covariate) columns are read from the same places as in training.
        source, target
            Data types, e.g. ``source="atac", target="rna"``.
        transform_batch
            Decode every cell as this batch; ``None``: each cell's own batch. Cells are encoded
            with their own batch, or as this batch where the data have no batch column or
            batches the model has not seen.
        n_samples
            Posterior draws used for the uncertainty (``layers["std"]``); 0 or 1 skips it.
        batch_size
            Cells per forward pass.

        Returns
        -------
        AnnData (cells of the source modality × target features): ``X`` is decoded from the
        posterior mean — RNA: expression per 10k counts; ATAC: probability open (typical depth);
        protein: as in :meth:`get_normalized_protein`. ``layers["std"]``: standard deviation over
        ``n_samples`` posterior draws, the model's uncertainty about each value. Cells without
        source data (no counts, or flagged absent by the presence key) get NaN rows, with a
        warning.

        Examples
        --------
        >>> rna = model.predict(mdata_query, source="atac", target="rna")
        >>> rna.layers["std"]  # uncertainty of each predicted value
        """
        self._check_if_trained(warn=False)
        self._check_modality(source, allow_none=False, argument="source")
        self._check_modality(target, allow_none=False, argument="target")
        check_batch_size(batch_size)
        if source == target:
            raise InputError(
                "source and target are the same data type; for denoised values of one data type "
                "use get_normalized_expression / _accessibility / _protein."
            )
        adata, matrix = self._source_data(mdata_new, source)
        obs = adata.obs  # one row per cell of the source modality, matched by name below
        setup_args = self.registry_["setup_args"]
        code = batch_code(transform_batch, self.registry_)
        n_obs = matrix.shape[0]
        batch = np.full(n_obs, code or 0)
        if setup_args.get("batch_key") is not None:
            try:  # the encoder sees each cell's own batch; transform_batch is the decoder's
                (batch,) = self._codes(
                    mdata_new, obs, "batch_key", REGISTRY_KEYS.BATCH_KEY, [setup_args["batch_key"]]
                )
            except _CategoryTypeError:  # the cells' own batches, in another type
                raise
            except InputError:  # no batch column, or batches the model has not seen
                if code is None:
                    raise
                # then every cell is encoded as transform_batch (what the message advises)
        decode_batch = batch if code is None else np.full(n_obs, code)
        cat_keys = setup_args.get("categorical_covariate_keys") or []
        cats = self._codes(
            mdata_new, obs, "categorical_covariate_keys", REGISTRY_KEYS.CAT_COVS_KEY, cat_keys
        )
        cont_keys = setup_args.get("continuous_covariate_keys") or []
        cont = [
            self._column(mdata_new, obs, "continuous_covariate_keys", key).to_numpy(float)
            for key in cont_keys
        ]
        for key, values in zip(cont_keys, cont, strict=True):
            if not np.all(np.isfinite(values)):
                raise InputError(
                    f"obs[{key!r}] has NaN or infinite values; fill or drop those cells first."
                )
        # Cells without source data (flagged absent, or no counts) have nothing to predict from.
        absent = np.zeros(n_obs, dtype=bool)
        presence_key = (setup_args.get("presence_keys") or {}).get(source)
        flags = mdata_new.obs if isinstance(mdata_new, MuData) else obs
        if presence_key in flags:  # as in training: present if the flag is above 0.5
            absent |= ~_presence_flag(flags.reindex(obs.index), presence_key, source)
        self.module.eval()
        device = self.device
        to_device = lambda a: as_tensor(a, device=device)  # noqa: E731
        means, stds = [], []
        for start in range(0, n_obs, batch_size):
            block = slice(start, min(start + batch_size, n_obs))
            x = matrix[block]
            x = dense(x)
            absent[block] |= ~np.any(x != 0, axis=1)
            batch_index = to_device(batch[block]).reshape(-1, 1).long()
            cat_covs = (
                torch.stack([to_device(c[block]).long() for c in cats], dim=1) if cats else None
            )
            cont_covs = (
                torch.stack([to_device(c[block]).float() for c in cont], dim=1) if cont else None
            )
            inference = self.module.inference(
                batch_index=batch_index,
                cat_covs=cat_covs,
                **{f"x_{source}": to_device(x).float()},
                **{f"has_{source}": torch.ones(x.shape[0], device=device)},
            )
            decode_index = to_device(decode_batch[block]).reshape(-1, 1).long()
            covariates = (decode_index, cat_covs, cont_covs)
            scale = 1e4 if target == "rna" else 1.0
            mean = self._decode(target, inference["qzm"], *covariates) * scale
            means.append(mean.cpu().numpy())
            if n_samples > 1:  # the draws' standard deviation, updated as they come (Welford)
                draw_mean, squares = torch.zeros_like(mean), torch.zeros_like(mean)
                for count in range(1, n_samples + 1):
                    draw = self._decode(target, inference["qz"].sample(), *covariates) * scale
                    delta = draw - draw_mean
                    draw_mean += delta / count
                    squares += delta * (draw - draw_mean)
                stds.append(torch.sqrt(squares / (n_samples - 1)).cpu().numpy())
        var = pd.DataFrame(index=self._var_names(target).copy())
        if isinstance(mdata_new, MuData) and mdata_new.obs.index.is_unique:
            obs = mdata_new.obs.reindex(obs.index)  # cell types, batches: for scanpy
        result = AnnData(np.concatenate(means).astype(np.float32), obs=obs.copy())
        result.var_names = var.index
        if stds:
            result.layers["std"] = np.concatenate(stds).astype(np.float32)
        if absent.any():
            warn_user(
                f"{int(absent.sum())} cells have no {source} data (no counts, or flagged absent); "
                "their predictions are NaN.",
            )
            result.X[absent] = np.nan
            if stds:
                result.layers["std"][absent] = np.nan
        result.uns["multivae_prediction"] = {"source": source, "target": target}
        return result

    def _decode(self, target, z, batch_index, cat_covs, cont_covs) -> torch.Tensor:
        outputs = self.module.generative(
            z, {}, batch_index, cat_covs, cont_covs, modalities=[target]
        )
        return self._normalised(target, outputs[f"p_{target}"])

    # -- save / load ----------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        dir_path: str,
        mdata: MuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        *,
        adata: MuData | None = None,
        prefix: str | None = None,
        **scvi_kwargs,
    ):
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        mdata
            MuData organised like the training data. ``None``: the MuData saved with the model
            if any, else no data (enough for :meth:`predict`).
        accelerator, device
            Where to put the model.
        adata
            Alias of ``mdata`` (the scvi-tools name).
        prefix
            The ``prefix`` the model was saved with.
        **scvi_kwargs
            Refused by name, as in the other models' ``load``.

        Examples
        --------
        >>> model = MultiVAE.load("multivae_model", mdata=mdata)
        """
        return super().load(
            dir_path,
            adata=mdata if mdata is not None else adata,
            accelerator=accelerator,
            device=device,
            prefix=prefix,
            **scvi_kwargs,
        )
