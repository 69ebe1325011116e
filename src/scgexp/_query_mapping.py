"""Reference mapping with scArches :cite:p:`Lotfollahi21`: fit a trained model to new batches.

scvi-tools' :class:`~scvi.model.base.ArchesMixin` loads the reference with pickle (not
``weights_only``) and picks the weights to train by scvi-tools' module names; this version reads
scgexp's safe saves and trains only what belongs to the new categories (see
``docs/query_mapping.md`` for the differences).
"""

from __future__ import annotations

import os
import warnings
from copy import deepcopy
from functools import reduce

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData
from scipy import sparse
from scvi.nn import FCLayers

from scgexp._compat import _initialize_model, parse_device_args
from scgexp._io import _file_names, _load_weights, _read_attributes, _read_saved_model
from scgexp._warn import warn_user
from scgexp.data._checks import (
    InputError,
    get_matrix,
    naming_hint,
    registered_features,
    rename_modalities_hint,
)
from scgexp.data._matrix import named_layers, positions_among, row_and_column_sums
from scgexp.data._mudata import _rows_at

#: Below this share of the reference's features a query is mapped with a warning (as scvi-tools).
MIN_SHARED_FEATURES = 0.8


class QueryMappingMixin:
    """``load_query_data``: a trained model extended to the query's new batches (scArches)."""

    #: Set by :meth:`load_query_data`: parameters of which only some entries train.
    _reference_entries: dict | None = None
    #: Set by :meth:`load_query_data` (and saved): lets MultiVAE train a query that lacks a
    #: modality.
    mapped_query_ = False

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData | MuData,
        reference_model,
        *,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        **scvi_arguments,
    ):
        """A copy of a trained model, extended to the query's batches, to train on the query.

        The scArches procedure :cite:p:`Lotfollahi21`, as scvi-tools'
        :meth:`~scvi.model.SCVI.load_query_data` (reading scgexp's weights-only saves): the
        query is registered with the reference's setup and its new batch (and categorical
        covariate) categories are added. Weights that read the categories get columns for the
        new ones, starting at zero; other parameters kept per category (MultiVAE's protein
        background, an invariance adversary's outputs) start from a fresh initialisation, except
        that a new batch whose cells have no protein data takes the mean protein background of
        the reference's batches (nothing in the query could train it).
        Training then changes only these new entries (the encoder's only with
        ``encode_covariates=True``) and any invariance adversary, which learns to recognise
        the new batches; everything else, batch-norm statistics included, stays the
        reference's. Query cells of known categories use the reference's weights, and the
        reference's categories decode as before (up to float rounding, about 1e-6). The new
        batches get decoder weights of their own, so decoded outputs (``get_normalized_*``,
        differential expression or accessibility) hold for them rather than for a known batch
        they were relabelled as.

        The reference model is left as it was. The freezing is not saved: a query model saved
        and loaded again trains in full (as in scvi-tools).

        Parameters
        ----------
        adata
            Query data: the reference's features in its order, its setup keys (``obs``
            columns, layers, modalities), any batch categories. Registered in place.
        reference_model
            A trained model of this class, or the folder it was saved to.
        accelerator, device
            Where to put the model, as in :meth:`scvi.model.base.BaseModelClass.load`.
        prefix
            The ``prefix`` the reference was saved with.
        unfrozen
            Train every weight (fine-tuning the whole network on the query alone), with batch
            norm as usual.
        freeze_dropout
            Switch dropout off (also with ``unfrozen``).
        **scvi_arguments
            scvi-tools' other arguments (``freeze_expression``, ...) are refused with what
            does their work here.

        Returns
        -------
        A model of this class on ``adata``, to ``train``: the frozen entries are zeroed in the
        gradients and put back after each minibatch
        (:class:`~scgexp.train.KeepReferenceEntries`), so any optimiser or weight decay leaves
        them as they were.

        Examples
        --------
        The same for each model with batches (ZINBAutoencoder shown; SAILER, MultiVAE):

        >>> query_model = ZINBAutoencoder.load_query_data(query, "reference_model")
        >>> query_model.train(max_epochs=100)
        >>> query.obsm["X_zinb"] = query_model.get_latent_representation()
        """
        for name, value in scvi_arguments.items():
            if name == "inplace_subset_query_vars" and value is False:
                continue  # scvi-tools' default: the query is used as given, as here
            if name == "inplace_subset_query_vars":
                prepare = "mudata" if isinstance(adata, MuData) else "anndata"
                fix = (
                    "give the query the reference's features first with "
                    f"{cls.__name__}.prepare_query_{prepare}(query, reference)"
                )
            elif name.startswith("freeze_"):
                fix = (
                    "here only the query's new entries train (scvi-tools' defaults also train "
                    "the decoder's batch norm); unfrozen=True trains every weight, "
                    "freeze_dropout=True turns dropout off"
                )
            else:
                raise InputError(f"load_query_data() has no argument {name!r}.")
            raise InputError(f"load_query_data() has no {name!r}: {fix}.")
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        if isinstance(reference_model, str | os.PathLike):
            source = os.fspath(reference_model)
            attr_dict, state = _read_saved_model(source, prefix)
        elif isinstance(reference_model, cls):
            source = f"The reference {cls.__name__}"
            attr_dict = deepcopy(reference_model._saved_attributes())
            state = {
                k: v.detach().cpu().clone() for k, v in reference_model.module.state_dict().items()
            }
        else:
            raise InputError(
                f"reference_model must be a trained {cls.__name__} or the folder it was saved "
                f"to, not {type(reference_model).__name__}."
            )
        registry = cls._pop_registry(attr_dict, source, prefix, "load_query_data")
        if not attr_dict.get("is_trained_", False):
            raise InputError(
                f"{source} was not trained; train it on the reference data before mapping a "
                "query onto it."
            )
        # The reference's network, to read which weight columns belong to which category.
        reference = _initialize_model(cls, False, deepcopy(registry), deepcopy(attr_dict), None)
        _load_weights(reference.module, state, f"{source} holds a {cls.__name__}")
        before = _registration_entries(adata)
        cls._set_up_like_reference(adata, registry, extend_categories=True)
        model = _initialize_model(cls, adata, registry, attr_dict, None)
        new_parts = _load_with_new_categories(reference.module, model.module)
        model._start_untrainable_entries(new_parts)
        if not unfrozen:
            if not any(mask.any() for mask in new_parts.values()):
                _put_back(adata, before)  # refused: the query as it was
                raise InputError(
                    "The query holds no batch or covariate category that the reference lacks "
                    "(or the reference reads none), so there is nothing to learn for it; "
                    f"use `{cls.__name__}.load(dir, adata=query)`, or load_query_data(..., "
                    "unfrozen=True) to fine-tune the whole model on the query."
                )
            model._reference_entries = _train_only_new_parts(model.module, new_parts)
        if freeze_dropout:
            for layer in model.module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.0
        model.mapped_query_ = True
        model._warn_outside_training(adata)
        model.is_trained_ = False
        model.to_device(torch_device)
        model.module.eval()
        return model

    def _trains_encoder(self) -> bool:
        """Whether training changes the encoder, so that the KL weight matters.

        Not in a frozen query model whose encoder reads no new category.
        """
        return self._reference_entries is None or any(
            parameter.requires_grad
            for name, parameter in self.module.named_parameters()
            if "encoder" in name.split(".")[0]
        )

    def _start_untrainable_entries(self, new_parts: dict) -> None:
        """Set new-category entries that the query's data cannot train (a model's hook)."""

    @classmethod
    def prepare_query_anndata(
        cls,
        adata: AnnData,
        reference_model,
        return_reference_var_names: bool = False,
        inplace: bool = True,
        prefix: str | None = None,
    ) -> AnnData | pd.Index | None:
        """Give a query the reference's features, in its order, for :meth:`load_query_data`.

        As scvi-tools' :meth:`~scvi.model.SCVI.prepare_query_anndata`: features the reference
        lacks are dropped, the others put in the reference's order, and features the query
        lacks are added as all-zero columns in ``X`` and every layer, read by the model as
        not detected (with a warning that names them; below 80% of the reference's features,
        mapping may be poor). Unlike scvi-tools, sparse stays sparse with its dtype, and
        ``uns``, ``raw``, ``varm`` (NaN rows for added features, zero if sparse) and ``varp``
        (zero rows and columns) are kept. Added features have missing values in ``var``, except
        in boolean columns, where they are ``False`` (as masks such as ``highly_variable``
        need).

        Parameters
        ----------
        adata
            Query data, in memory.
        reference_model
            A model of this class, or the folder it was saved to.
        return_reference_var_names
            Return only the reference's features, changing nothing.
        inplace
            Change ``adata`` (as scvi-tools does); ``False``: return a prepared copy and leave
            ``adata`` as it was.
        prefix
            The ``prefix`` the reference was saved with.

        Returns
        -------
        ``None`` (``inplace``), the prepared copy, or the reference's features.

        Examples
        --------
        For the models of AnnData (ZINBAutoencoder shown; SAILER alike; MultiVAE:
        :meth:`prepare_query_mudata`):

        >>> ZINBAutoencoder.prepare_query_anndata(query, "reference_model")
        >>> query_model = ZINBAutoencoder.load_query_data(query, "reference_model")
        """
        features = _features(
            cls._reference_registry(reference_model, prefix, "prepare_query_anndata")
        )
        if None not in features:
            raise InputError(
                f"{cls.__name__} reads MuData; use {cls.__name__}.prepare_query_mudata(mdata, "
                "reference_model)."
            )
        names = pd.Index(features[None])
        if return_reference_var_names:
            return names
        prepared = _with_features(adata, names, inplace, "")
        if not inplace:
            return prepared
        if prepared is not adata:
            adata._init_as_actual(prepared)  # as scvi-tools: anndata has no public way
        return None

    @classmethod
    def prepare_query_mudata(
        cls,
        mdata: MuData,
        reference_model,
        return_reference_var_names: bool = False,
        inplace: bool = True,
        prefix: str | None = None,
    ) -> MuData | dict[str, pd.Index] | None:
        """Give each of a query's modalities the reference's features, in its order.

        :meth:`prepare_query_anndata` for each modality the model was trained on (as
        scvi-tools' :meth:`~scvi.model.MULTIVI.prepare_query_mudata`); other modalities are
        left as they are. A modality the query lacks is added with all-zero rows, read as
        missing (with a warning), so that its cells are mapped from their other modalities;
        the ``obs`` columns the model reads there (``modalities={"batch_key": ...}``) are
        copied from the query's ``obs`` or other modalities, and a size factor the query lacks
        is 1 (it is not read for cells without RNA).
        Where the model reads ``presence_keys``, an added modality's flag is set to ``False``
        and a present modality without its flag column gets one from its counts (``True`` for
        cells with counts); a query with none of the model's modalities is refused.

        Parameters
        ----------
        mdata
            Query data, in memory (a modality holding only some cells:
            :func:`scgexp.data.pad_modalities` first gives it all-zero rows for the others).
        reference_model
            A model of this class, or the folder it was saved to.
        return_reference_var_names
            Return only the reference's features per modality, changing nothing.
        inplace
            Change ``mdata`` (as scvi-tools does); ``False``: return a prepared copy and leave
            ``mdata`` as it was.
        prefix
            The ``prefix`` the reference was saved with.

        Returns
        -------
        ``None`` (``inplace``), the prepared copy, or the reference's features per modality.

        Examples
        --------
        For MultiVAE, the model of MuData (the others: :meth:`prepare_query_anndata`):

        >>> MultiVAE.prepare_query_mudata(query, "reference_model")
        >>> query_model = MultiVAE.load_query_data(query, "reference_model")
        """
        registry = cls._reference_registry(reference_model, prefix, "prepare_query_mudata")
        features = _features(registry)
        if None in features:
            raise InputError(
                f"{cls.__name__} reads AnnData; use {cls.__name__}.prepare_query_anndata(adata, "
                "reference_model)."
            )
        if return_reference_var_names:
            return {key: pd.Index(names) for key, names in features.items()}
        if not isinstance(mdata, MuData):
            raise InputError(f"prepare_query_mudata takes a MuData; got {type(mdata).__name__}.")
        if mdata.isbacked:
            raise InputError("Read the query into memory first: `mudata.read_h5mu(path)`.")
        if inplace and mdata.is_view:
            raise InputError(
                "The query is a view of another MuData, which cannot be changed in place; pass "
                "`mdata.copy()`, or use inplace=False."
            )
        absent = [key for key in features if key not in mdata.mod]
        if len(absent) == len(features):
            raise InputError(
                f"The query has none of the model's modalities {list(features)} (it has "
                f"{list(mdata.mod)}). {rename_modalities_hint(features)}"
            )
        if absent:
            unused = [key for key in mdata.mod if key not in features]
            warn_user(
                f"The query has no modality {', '.join(map(repr, absent))}, which the model was "
                "trained on: added with all-zero rows, read as missing (the model infers it from "
                "the other modalities; its presence flag, if the model reads one, is False)."
                + (
                    f" The query's {', '.join(map(repr, unused))} "
                    f"{'is' if len(unused) == 1 else 'are'} not read. "
                    + rename_modalities_hint(absent)
                    if unused
                    else ""
                )
            )
        prepared = {
            key: _with_features(mdata.mod[key], pd.Index(names), False, f"modality {key!r}: ")
            for key, names in features.items()
            if key in mdata.mod
        }
        masks = mdata.var.iloc[:0].copy()  # the global var's columns and types, before update
        target = mdata if inplace else mdata.copy()
        for key, modality in prepared.items():
            target.mod[key] = modality
        setup_args = registry["setup_args"]
        for key in absent:
            target.mod[key] = _missing_modality(target.obs_names, features[key], key, setup_args)
            _copy_read_columns(target, key, setup_args)
        size_factor_key = setup_args.get("size_factor_key")
        in_obs = setup_args["modalities"].get("size_factor_key") is None
        if setup_args["modalities"].get("rna_layer") in absent and size_factor_key and in_obs:
            if size_factor_key not in target.obs:  # not read for cells without RNA
                target.obs[size_factor_key] = 1.0
        with warnings.catch_warnings():  # mudata's notice of a future default
            warnings.filterwarnings("ignore", r"From 0\.4 \.update\(\)", FutureWarning)
            target.update()
        presence_keys = setup_args.get("presence_keys") or {}
        for key in features:  # the flags the model reads: absent modalities are missing
            data_type = _data_type(key, setup_args)
            flag = presence_keys.get(data_type)
            layer = setup_args.get(f"{data_type}_layer")
            modality = target.mod[key]
            if flag is None or (key not in absent and flag in target.obs):
                continue
            if key not in absent and layer is not None and layer not in modality.layers:
                continue  # setup names the missing layer
            present = pd.Series(False, index=target.obs_names)
            if key not in absent:
                totals = row_and_column_sums(get_matrix(modality, layer))[0]
                present[modality.obs_names] = totals > 0  # cells with counts
            target.obs[flag] = present.to_numpy()
        _false_where_missing(target.var, masks)
        return None if inplace else target

    @classmethod
    def _reference_registry(cls, reference_model, prefix: str | None, method: str) -> dict:
        """The reference's registry, from a model or the folder it was saved to."""
        if isinstance(reference_model, str | os.PathLike):
            source = os.fspath(reference_model)
            attr_dict = _read_attributes(source, _file_names(prefix))["attr_dict"]
            registry = cls._pop_registry(attr_dict, source, prefix, method)
        elif isinstance(reference_model, cls):
            registry = reference_model.registry_
        else:
            raise InputError(
                f"reference_model must be a {cls.__name__} or the folder it was saved to, not "
                f"{type(reference_model).__name__}."
            )
        return registry


def _features(registry: dict) -> dict[str | None, list[str]]:
    """A model's features per modality (``None``: AnnData), as strings."""
    return {key: [str(n) for n in names] for key, names in registered_features(registry).items()}


def _data_type(modality: str, setup_args: dict) -> str:
    """The data type ("rna", "atac" or "protein") that a MuData model reads from ``modality``."""
    return next(
        arg.removesuffix("_layer")
        for arg, name in setup_args["modalities"].items()
        if name == modality and arg.endswith("_layer")
    )


def _missing_modality(cells: pd.Index, features: list, name: str, setup_args: dict) -> AnnData:
    """A modality the query lacks: all-zero rows (read as missing) in ``X`` and its layer."""
    zeros = sparse.csr_matrix((len(cells), len(features)), dtype=np.float32)
    modality = AnnData(X=zeros, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=features))
    layer = setup_args.get(f"{_data_type(name, setup_args)}_layer")
    if layer is not None:
        modality.layers[layer] = zeros.copy()
    return modality


_OBS_ARGS = (
    "batch_key",
    "categorical_covariate_keys",
    "continuous_covariate_keys",
    "size_factor_key",
)


def _copy_read_columns(mdata: MuData, name: str, setup_args: dict) -> None:
    """Give added modality ``name`` the ``obs`` columns the model reads there.

    Each comes from the query's own ``obs`` or another modality's; a size factor the query
    lacks is 1 (not read for cells without RNA).
    """
    added = mdata.mod[name]
    sources = [mdata.obs, *(m.obs for n, m in mdata.mod.items() if n != name)]
    for arg in _OBS_ARGS:
        keys = (setup_args.get(arg) or []) if setup_args["modalities"].get(arg) == name else []
        for key in [keys] if isinstance(keys, str) else keys:
            found = [obs[key].reindex(added.obs_names) for obs in sources if key in obs]
            if found:
                added.obs[key] = reduce(pd.Series.combine_first, found)
            elif arg == "size_factor_key" and name == setup_args["modalities"].get("rna_layer"):
                added.obs[key] = 1.0


def _same_type(original, matrix):
    """``matrix`` (from :func:`_rows_at`) as sparse of ``original``'s class and format."""
    if sparse.issparse(original):
        return type(original)(matrix.asformat(original.format))
    return matrix


def _columns_at(matrix, positions: np.ndarray):
    """``matrix``'s columns at ``positions``, zero columns where -1; format and dtype kept."""
    if matrix is None:
        return None
    if sparse.issparse(matrix):
        return _same_type(matrix, _rows_at(matrix.T, positions).T)
    return np.ascontiguousarray(_rows_at(np.asarray(matrix).T, positions).T)


def _false_where_missing(frame: pd.DataFrame, original: pd.DataFrame) -> None:
    """Boolean columns of ``original`` reindexed into ``frame``: ``False`` for added rows.

    Reindexing leaves them as ``object`` with NaN, which masks (``highly_variable``) and the
    h5ad writer refuse.
    """
    for column in [c for c in original.columns if original[c].dtype == bool]:
        if column in frame:
            frame[column] = frame[column].astype("boolean").fillna(False).astype(bool)


def _feature_positions(present: pd.Index, names: pd.Index, where: str) -> np.ndarray:
    """Position of each of the model's features ``names`` among ``present`` (-1: absent)."""
    if names.has_duplicates:
        raise InputError(
            f"{where}the model has features that share a name "
            f"({', '.join(names[names.duplicated()].unique()[:5])}), so the query's cannot be "
            "matched to them by name: give the query the model's features in the model's order "
            "(as the training data had them)."
        )
    repeated = present[present.duplicated()].intersection(names)
    if len(repeated):
        raise InputError(
            f"{where}the query has features of the model more than once ({', '.join(repeated[:5])}"
            "); make them unique (`adata.var_names_make_unique()`) or keep one of each."
        )
    if not len(present):
        raise InputError(
            f"{where}the query has no features (its var is empty); give it the model's "
            f"{len(names)} features"
            + (", or build the query without it (it is then added as missing)." if where else ".")
        )
    positions = positions_among(pd.Index(present), ~present.duplicated(keep=False), names)
    found = int((positions >= 0).sum())
    if found == 0:
        raise InputError(
            f"{where}none of the model's {len(names)} features are in the query."
            + naming_hint(names, present)
        )
    missing = names[positions < 0]
    if len(missing):
        warn_user(
            f"{where}{len(missing)} of the model's {len(names)} features are not in the query "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); they are added "
            "as zeros, read as not detected."
            + (
                f" With less than {MIN_SHARED_FEATURES:.0%} of the features, the mapping may be "
                "poor."
                if found < MIN_SHARED_FEATURES * len(names)
                else ""
            )
        )
    return positions


def _with_features(adata: AnnData, names: pd.Index, inplace: bool, where: str) -> AnnData:
    """``adata`` with exactly the features ``names`` (zeros where absent); ``adata`` if it has.

    Returns a new AnnData sharing no arrays with ``adata`` (``adata`` itself when its features
    are already ``names`` and ``inplace``).
    """
    if not isinstance(adata, AnnData):
        raise InputError(f"{where}expected an AnnData; got {type(adata).__name__}.")
    if adata.isbacked:
        raise InputError(f"{where}read the query into memory first: `adata = adata.to_memory()`.")
    if inplace and adata.is_view:
        raise InputError(
            f"{where}the query is a view of another AnnData, which cannot be changed in place; "
            "pass `adata.copy()`, or use inplace=False."
        )
    present = pd.Index(np.asarray(adata.var_names, dtype=str))
    if present.equals(names):  # the model's features in its order, repeated names included
        if inplace:
            return adata
        positions = np.arange(len(names))
    else:
        positions = _feature_positions(present, names, where)
    var = adata.var.reset_index(drop=True).reindex(positions)  # added rows: missing values
    _false_where_missing(var, adata.var)
    var.index = pd.Index(names, name=adata.var_names.name)
    varm = {
        key: value.reset_index(drop=True).reindex(positions).set_axis(names)
        if isinstance(value, pd.DataFrame)
        else _same_type(value, _rows_at(value, positions, fill=np.nan))
        for key, value in adata.varm.items()
    }
    prepared = AnnData(
        X=_columns_at(adata.X, positions),
        obs=adata.obs.copy(),
        var=var,
        uns=deepcopy(dict(adata.uns)),
        obsm={key: value.copy() for key, value in adata.obsm.items()},
        varm=varm,
        layers={key: _columns_at(value, positions) for key, value in named_layers(adata).items()},
        obsp={key: value.copy() for key, value in adata.obsp.items()},
        varp={
            key: _columns_at(_same_type(value, _rows_at(value, positions)), positions)
            for key, value in adata.varp.items()
        },
    )
    if adata.raw is not None:
        prepared.raw = adata.raw.to_adata()
    return prepared


def _registration_entries(data) -> list[tuple]:
    """scvi-tools' ``_scvi_*`` entries in the obs, obsm and uns of ``data`` and its modalities."""
    return [
        (
            frame,
            {k: frame.obs[k].copy() for k in frame.obs if k.startswith("_scvi_")},
            {k: frame.obsm[k] for k in frame.obsm if k.startswith("_scvi_")},
            {k: frame.uns[k] for k in frame.uns if k.startswith("_scvi_")},
        )
        for frame in (data, *getattr(data, "mod", {}).values())
    ]


def _put_back(data, entries: list[tuple]) -> None:
    """Undo a registration: the ``_scvi_*`` entries as :func:`_registration_entries` saw them."""
    for frame, obs, obsm, uns in entries:
        for key in [k for k in frame.obs if k.startswith("_scvi_") and k not in obs]:
            del frame.obs[key]
        for key, column in obs.items():
            frame.obs[key] = column
        for key in [k for k in frame.obsm if k.startswith("_scvi_") and k not in obsm]:
            del frame.obsm[key]
        frame.obsm.update(obsm)
        for key in [k for k in frame.uns if k.startswith("_scvi_") and k not in uns]:
            del frame.uns[key]
        frame.uns.update(uns)


def _category_columns(
    reference: FCLayers, query: FCLayers, n_in: int
) -> tuple[torch.Tensor, list[int]]:
    """Where a reference ``FCLayers`` layer's input columns lie in the query's layer.

    A layer reads ``[x | continuous | category one-hots...]``; a category gaining members
    widens its block, which moves the blocks after it. Also returns the columns of a
    reference category that had none (the only category of its key, which the layer skips).
    """
    n_fixed = n_in - sum(reference.n_cat_list)
    positions, unweighted = [torch.arange(n_fixed)], []
    start = n_fixed
    for old, new in zip(reference.n_cat_list, query.n_cat_list, strict=True):
        positions.append(start + torch.arange(old))
        if old == 0 and new > 0:
            unweighted.append(start)  # code 0: the reference's single category
        start += new
    return torch.cat(positions), unweighted


def _load_with_new_categories(reference: torch.nn.Module, query: torch.nn.Module) -> dict:
    """Load ``reference``'s weights into ``query`` (built for more categories).

    Columns of new categories in layers that read one-hot categories start at zero, so that
    the reference's categories decode as before; other parameters grown for new categories
    (an adversary's outputs, a per-batch background) keep ``query``'s initialisation there, as
    do parameters the reference lacks (an adversary head for a confounder it had one category
    of). Returns, per parameter name, a boolean mask of its new entries.
    """
    saved, fresh = reference.state_dict(), query.state_dict()
    placements = {}
    query_layers = dict(query.named_modules())
    for name, layer in reference.named_modules():
        if isinstance(layer, FCLayers):
            for index, block in enumerate(layer.fc_layers):
                if layer.inject_into_layer(index):
                    placements[f"{name}.fc_layers.Layer {index}.0.weight"] = _category_columns(
                        layer, query_layers[name], block[0].in_features
                    )
    loaded, new_parts = {}, {}
    for key, target in fresh.items():
        if key not in saved:
            loaded[key], new_parts[key] = target, torch.ones_like(target, dtype=torch.bool)
            continue
        tensor = saved[key]
        if tensor.shape == target.shape:
            loaded[key], new_parts[key] = tensor, torch.zeros_like(target, dtype=torch.bool)
            continue
        new = torch.ones_like(target, dtype=torch.bool)
        if key in placements:
            columns, unweighted = placements[key]
            grown = torch.zeros_like(target)
            grown[:, columns] = tensor
            new[:, columns] = False
            new[:, unweighted] = False  # stays zero, as the reference decoded it
        else:  # categories are appended at the end of each mapping
            grown = target.clone()
            grown[tuple(slice(0, size) for size in tensor.shape)] = tensor
            new[tuple(slice(0, size) for size in tensor.shape)] = False
        loaded[key], new_parts[key] = grown, new
    query.load_state_dict(loaded)
    return new_parts


def _train_only_new_parts(module: torch.nn.Module, new_parts: dict) -> dict:
    """Leave trainable only the entries of new categories, and any adversary in full.

    Returns, for parameters only partly new, their new entries and the values of the others
    (for :class:`~scgexp.train.KeepReferenceEntries`). Batch norm normalises with the
    reference's statistics, as at inference, even in training mode: normalising a minibatch of
    one batch by its own mean would subtract the very shift that the batch's new weights are to
    learn.
    """
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm1d):
            layer.register_forward_pre_hook(_normalise_with_running_statistics)
    partly_new = {}
    for name, parameter in module.named_parameters():
        new = new_parts[name]
        adversary = name.startswith("invariance.")  # it learns to tell the new categories
        parameter.requires_grad = adversary or bool(new.any())
        if not adversary and new.any() and not new.all():
            partly_new[name] = (new, parameter.detach().clone())
    return partly_new


def _normalise_with_running_statistics(layer: torch.nn.BatchNorm1d, inputs) -> None:
    layer.training = False  # forward then uses (and keeps) the running statistics
