"""Input checks shared by every model's ``setup_anndata``/``setup_mudata``.

The checks only read: they never modify ``X``, layers or annotations.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from numbers import Real
from typing import TYPE_CHECKING, Literal

import h5py
import numpy as np
import pandas as pd
from anndata.abc import CSCDataset, CSRDataset
from scipy import sparse
from scvi import REGISTRY_KEYS

from scgexp._compat import _MODEL_NAME_KEY
from scgexp._errors import InputError
from scgexp._warn import warn_user
from scgexp.data._matrix import named_layers, row_chunks, stored_values
from scgexp.nn import Invariance

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def get_matrix(
    adata: AnnData, layer: str | None, where: str = "", layer_argument: str | None = "layer"
) -> object:
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error when it does not exist.

    ``layer_argument`` names the argument that chose the layer, for messages; ``None`` where
    the layer is a trained model's (new data must store theirs there).
    """
    if layer is None:
        if adata.X is None:
            fix = (
                "the model reads X: store the data there."
                if layer_argument is None
                else f"pass {layer_argument}= naming the layer that holds the data."
            )
            raise InputError(f"{where}X is empty; {fix}")
        return adata.X
    if layer not in adata.layers:
        available = ", ".join(map(repr, named_layers(adata))) or "none"
        fix = (
            f"The model was set up with that layer: store the data as layers[{layer!r}]."
            if layer_argument is None
            else f"Pass {layer_argument}= naming an existing layer."
        )
        raise InputError(f"{where}layer {layer!r} does not exist (layers: {available}). {fix}")
    return adata.layers[layer]


def check_option(name: str, value, choices: tuple) -> None:
    """Refuse an option outside ``choices`` (strings or ``None``), named as the user passes it.

    Examples
    --------
    >>> check_option("loss", "MSE", ("mse", "gaussian"))
    Traceback (most recent call last):
    ...
    scgexp.data.InputError: loss must be 'mse' or 'gaussian', not 'MSE'.
    """
    if isinstance(value, str | None) and value in choices:
        return
    names = [repr(c) for c in choices]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise InputError(f"{name} must be {listed}, not {value!r}.")


def _non_integer(values: np.ndarray, layer: str | None, counts_fix: str) -> str:
    """What non-integer values in a count matrix probably are, and what to do about them."""
    values = np.ravel(values)
    off = np.abs(values - np.round(values))
    example = float(values[np.argmax(off)])
    location = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    rounding = (
        f"round them: `m = {location}; m.data = np.rint(m.data)` if sparse, "
        f"`{location} = np.rint({location})` if dense."
    )
    if off.max() < 0.01 and np.all(np.abs(values[values != 0]) >= 0.5):  # rounding keeps them
        return (
            f"holds values off whole numbers by up to {off.max():.1g} (e.g. {example:.7g}: counts "
            f"after a float conversion?), but the count likelihoods need whole numbers; {rounding}"
        )
    if values.max() > 50:  # log-normalised values stay far below
        return (
            f"holds fractional values (e.g. {example:.4g}): normalised values (counts per "
            "million?) or expected counts from an EM quantifier such as salmon or alevin? The "
            f"count likelihoods need raw counts. {counts_fix} Expected counts may be rounded: "
            + rounding
        )
    return (
        f"holds non-integer values (e.g. {example:.4g}: log-normalised data?), but raw counts "
        f"are required. {counts_fix}"
    )


def _first_non_finite(chunk) -> tuple[int, int]:
    """Row and column of the first NaN or infinite entry of a dense or sparse block."""
    if sparse.issparse(chunk):
        coo = sparse.coo_matrix(chunk)
        bad = np.flatnonzero(~np.isfinite(coo.data))
        order = np.lexsort((coo.col[bad], coo.row[bad]))
        return int(coo.row[bad][order[0]]), int(coo.col[bad][order[0]])
    rows, cols = np.nonzero(~np.isfinite(np.asarray(chunk)))
    return int(rows[0]), int(cols[0])


def check_matrix(
    adata: AnnData,
    layer: str | None = None,
    *,
    counts: bool = False,
    allow_empty_cells: bool = False,
    allow_empty_features: bool | Literal["warn"] = True,
    allow_fortran: bool = False,
    columns: np.ndarray | None = None,
    where: str = "",
    layer_argument: str | None = "layer",
) -> np.ndarray:
    """Check the matrix a model will train on.

    Parameters
    ----------
    adata
        The data.
    layer
        ``None`` for ``X``, else a key of ``adata.layers``.
    counts
        Require non-negative integer counts (for count likelihoods).
    allow_empty_cells
        Accept cells (rows) whose values are all zero.
    allow_empty_features
        Accept features (columns) whose values are all zero; ``"warn"``: accept them with a
        warning (a model learns nothing about them, at a cost).
    allow_fortran
        Accept a column-major numpy array silently (for data that scgexp reads itself). Without
        it a warning says that scvi-tools will put a row-major copy in its place.
    columns
        Check only these column positions (e.g. the features a model reads); ``None``: all.
    where
        Prefix for messages, e.g. ``"modality 'rna': "``.
    layer_argument
        The argument that names the layer, for messages (e.g. ``"rna_layer"``); ``None`` where
        the layer is fixed (new data for a trained model).

    Returns
    -------
    Each row's sum of absolute values (over ``columns``), read on the way, so callers need not
    read the matrix again.

    Raises
    ------
    InputError
        With a message that names the problem and the fix.

    Examples
    --------
    >>> import scgexp
    >>> adata = scgexp.data.pbmc68k_counts()
    >>> totals = scgexp.data.check_matrix(adata, counts=True)
    """
    matrix = get_matrix(adata, layer, where, layer_argument)
    name = "X" if layer is None else f"layer {layer!r}"
    if isinstance(matrix, CSCDataset):
        raise InputError(
            f"{where}{name} is stored on disk column by column (CSC), so every minibatch would "
            "read the whole file. Rewrite it as CSR, or load it into memory (`adata."
            "to_memory()`; a MuData: `mudata.read_h5mu(path)`)."
        )
    target = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if not (sparse.issparse(matrix) or isinstance(matrix, np.ndarray | CSRDataset | h5py.Dataset)):
        kind = type(matrix).__name__
        raise InputError(
            f"{where}{name} is a {kind}; scgexp needs a numpy array, a scipy sparse matrix or "
            f"a backed AnnData's X. Store it as one in {target} first (e.g. "
            f"`{target} = scipy.sparse.csr_matrix(...)` or `numpy.asarray(...)`)."
        )
    if counts and isinstance(matrix, sparse.sparray):
        # scvi-tools' count check (the models with count likelihoods) fails on sparse arrays.
        raise InputError(
            f"{where}{name} is a scipy sparse array ({type(matrix).__name__}); scvi-tools reads "
            f"sparse matrices. Store it as one (same values): `{target} = "
            f"scipy.sparse.csr_matrix({target})`."
        )
    if isinstance(matrix, np.ndarray) and not (allow_fortran or matrix.flags.c_contiguous):
        # anndata makes column-major layers when genes are subset (adata[:, genes].copy()).
        warn_user(
            f"{where}{name} is not a row-major (C-contiguous) array; scvi-tools puts a "
            "row-major copy (same values) in its place. `np.ascontiguousarray(...)` first "
            "avoids this.",
        )
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InputError(f"{where}{name} has shape {matrix.shape}: no cells or no features.")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(
        matrix.dtype, np.complexfloating
    ):
        fix = (
            f" Store it as numbers: {target} = {target}.astype(np.float32) (counts 0 and 1)."
            if matrix.dtype == bool
            else ""
        )
        raise InputError(
            f"{where}{name} has dtype {matrix.dtype}; a real numeric matrix is needed.{fix}"
        )
    if layer_argument is None:
        counts_fix = f"The model reads {name}: store the raw counts there."
    else:
        example = f" (e.g. {layer_argument}='counts')" if layer != "counts" else ""
        counts_fix = f"Pass {layer_argument}= naming the layer with raw counts{example}."
    if counts and getattr(adata, "raw", None) is not None:
        target = "adata.layers['counts']"
        if layer_argument is None:  # the model's own place
            target = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        counts_fix += (
            f" If the counts are in adata.raw, copy them first: {target} = "
            "adata.raw[:, adata.var_names].X"
        )
    row_sums = np.zeros(matrix.shape[0])
    col_sums = np.zeros(matrix.shape[1] if columns is None else len(columns))
    offset = 0
    for chunk in row_chunks(matrix):
        if columns is not None:
            chunk = chunk[:, columns]
        values = stored_values(chunk)
        if not np.all(np.isfinite(values)):
            row, column = _first_non_finite(chunk)
            column = column if columns is None else columns[column]
            raise InputError(
                f"{where}{name} contains NaN or infinite values (first: "
                f"observation {adata.obs_names[offset + row]!r}, "
                f"variable {adata.var_names[column]!r}). Remove or impute them first; "
                "scgexp does not change your data."
            )
        if counts:
            if values.size and values.min() < 0:
                raise InputError(
                    f"{where}{name} has negative values, but raw counts are required. {counts_fix}"
                )
            if values.size and np.any(values != np.round(values)):
                raise InputError(f"{where}{name} {_non_integer(values, layer, counts_fix)}")
        # abs(int8 -128) is -128: signed integers as float64 first
        abs_chunk = abs(chunk.astype(np.float64) if chunk.dtype.kind == "i" else chunk)
        row_sums[offset : offset + chunk.shape[0]] = np.asarray(
            abs_chunk.sum(axis=1, dtype=np.float64)
        ).ravel()
        col_sums += np.asarray(abs_chunk.sum(axis=0, dtype=np.float64)).ravel()
        offset += chunk.shape[0]
    if not allow_empty_cells and np.any(row_sums == 0):
        n = int(np.sum(row_sums == 0))
        raise InputError(
            f"{where}{name} has {n} cells with no counts at all. Remove them first, e.g. "
            "`sc.pp.filter_cells(adata, min_counts=1)`."
        )
    if allow_empty_features is not True and np.any(col_sums == 0):
        n = int(np.sum(col_sums == 0))
        message = (
            f"{where}{name} has {n} features that are zero in every cell. Remove them first, e.g. "
            "`sc.pp.filter_genes(adata, min_counts=1)`"
        )
        if allow_empty_features != "warn":
            raise InputError(message + ".")
        warn_user(
            message + ": the model learns nothing about them (it predicts about zero there), "
            "and they cost training time."
        )
    return row_sums


def check_count_setup(
    adata: AnnData,
    layer: str | None,
    setup_args: dict,
    setup_kwargs: dict,
    continuous: list[str] | None = None,
    encoder_reads_covariates: bool | None = None,
) -> bool:
    """The checks of an AnnData count model's ``setup_anndata``; returns whether it is a query.

    ``setup_kwargs`` holds ``source_registry`` when a saved model registers new data like its
    own (``load(dir, adata=...)``): the layer is then the model's, features may lack counts and
    categories must be known (or ``extend_categories``).

    Examples
    --------
    >>> query = check_count_setup(adata, layer, setup_method_args["setup_args"], kwargs)
    """
    registry = setup_kwargs.get("source_registry")
    query = registry is not None
    if not query:  # models saved before may repeat one
        check_distinct_keys(setup_args)
    check_matrix(
        adata,
        layer,
        counts=True,
        allow_empty_features=query or "warn",
        layer_argument=None if query else "layer",
    )
    categorical = [setup_args["batch_key"], *(setup_args["categorical_covariate_keys"] or [])]
    check_obs_keys(
        adata,
        categorical=[k for k in categorical if k],
        continuous=continuous,
        allow_unused_categories=query,
    )
    if query:
        check_known_categories(
            adata,
            registry,
            encoder_reads_covariates=encoder_reads_covariates,
            allow_new_categories=setup_kwargs.get("extend_categories", False),
        )
    return query


def _warn_about_categories(sizes: pd.Series, column: str) -> None:
    """Warn about training categories of fewer than 3 cells, or named like a missing value."""
    small = {str(c): int(n) for c, n in sizes.items() if 0 < n < 3}
    if small:
        warn_user(
            f"{column} has categories of fewer than 3 cells: {small}. Their weights are learnt "
            "from those cells alone, or not at all when the validation split takes them all; "
            "merge them into a larger group, or drop those cells."
        )
    missing = [c for c in sizes.index if str(c).lower() == "nan"]  # NaN through .astype(str)
    if missing:
        warn_user(
            f"{column} has the category {missing[0]!r} ({int(sizes[missing[0]])} cells), "
            "which looks like a missing value turned into text (e.g. by .astype(str)); it is "
            "modelled as one more group. Give those cells their category, or drop them."
        )


def _check_savable_categories(values: pd.Series, column: str) -> None:
    """Refuse labels that a model could train on but not save (found after training)."""
    from scgexp._io import _encode  # (scgexp._io imports this module)

    try:
        _encode(pd.Categorical(values).categories.to_numpy())
    except TypeError:
        example = values.iloc[0]
        raise InputError(
            f"{column} holds {type(example).__name__} values (e.g. {example!r}), which a saved "
            f"model cannot store as categories; make them text first: `{column} = "
            f"{column}.astype(str)`."
        ) from None


def check_obs_keys(
    adata: AnnData,
    categorical: Sequence[str] | None = None,
    continuous: Sequence[str] | None = None,
    where: str = "",
    allow_unused_categories: bool = True,
    in_mudata: bool = False,
) -> None:
    """Check that ``obs`` columns exist, and that continuous ones are finite numbers.

    ``allow_unused_categories=False`` (training data) also refuses categories without cells,
    which a model would register but never learn. ``in_mudata``: ``adata`` is a MuData or one
    of its modalities (the advice for missing categories then covers padded cells).

    Examples
    --------
    >>> scgexp.data.check_obs_keys(adata, categorical=["bulk_labels"])
    """
    for key in [*(categorical or []), *(continuous or [])]:
        if key not in adata.obs:
            raise InputError(
                f"{where}obs has no column {key!r}. Available: {', '.join(adata.obs.columns)}."
            )
    for key in categorical or []:
        values = adata.obs[key]
        if values.isna().any():
            n_missing = int(values.isna().sum())
            raise InputError(
                f"{where}obs[{key!r}] has missing values ({n_missing} cell"
                f"{'s' * (n_missing > 1)}); "
                "give those cells their category or remove them (a made-up category such as "
                "'unknown' would be modelled as one more group)"
                + (
                    ". In a MuData, cells padded into a modality may have theirs in another "
                    "modality's obs: combine the columns, e.g. "
                    "`mdata['rna'].obs[key].combine_first(mdata['atac'].obs[key])`."
                    if in_mudata
                    else f": `adata = adata[adata.obs[{key!r}].notna()].copy()`."
                )
            )
        # Text and numbers mixed: 1 and "1" print alike but are different groups.
        labels = values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else values
        uniques = pd.unique(labels.to_numpy()) if labels.dtype == object else []
        text = [v for v in uniques if isinstance(v, str)]
        other = [v for v in uniques if not isinstance(v, str)]
        if text and other:
            raise InputError(
                f"{where}obs[{key!r}] mixes text and other values (e.g. {text[0]!r} and "
                f"{other[0]!r}), which are different groups even where they print alike; make "
                f"them one type, e.g. `obs[{key!r}] = obs[{key!r}].astype(str)`."
            )
        if pd.api.types.is_float_dtype(values) and np.any(values != np.round(values)):
            raise InputError(
                f"{where}obs[{key!r}] holds continuous values, but a batch or categorical "
                "covariate needs categories (e.g. sample or plate names). Pass a continuous "
                "value in continuous_covariate_keys= (SAILER, MultiVAE), or convert it to "
                "categories (`.astype(str)`) if it labels groups."
            )
        n_groups = values.nunique()
        if not allow_unused_categories and n_groups >= 20 and n_groups > len(values) / 2:
            raise InputError(
                f"{where}obs[{key!r}] has {n_groups} different values for {len(values)} cells: "
                "one group for about every cell, like a measurement or a cell id, not a batch "
                "or sample. Name a column of groups (e.g. sample or plate); a measurement goes "
                "in continuous_covariate_keys= (SAILER, MultiVAE)."
            )
        if not allow_unused_categories:
            _check_savable_categories(values, f"{where}obs[{key!r}]")
        if not allow_unused_categories and isinstance(values.dtype, pd.CategoricalDtype):
            unused = sorted(map(str, set(values.cat.categories) - set(values.unique())))
            if unused:
                raise InputError(
                    f"{where}obs[{key!r}] has categories without cells: {unused} (e.g. listed "
                    "for a larger study). A model would decode them from untrained weights; drop "
                    f"them with obs[{key!r}] = obs[{key!r}].cat.remove_unused_categories()."
                )
        if not allow_unused_categories:
            _warn_about_categories(values.value_counts(), f"{where}obs[{key!r}]")
    for key in continuous or []:
        values = adata.obs[key]
        if not pd.api.types.is_numeric_dtype(values):
            raise InputError(f"{where}obs[{key!r}] must hold numbers, not {values.dtype} values.")
        numbers = values.to_numpy(dtype=float)
        if not np.all(np.isfinite(numbers)):
            raise InputError(
                f"{where}obs[{key!r}] has NaN or infinite values; fill or drop those cells first."
            )
        if np.abs(numbers).max(initial=0.0) > np.finfo(np.float32).max:
            raise InputError(
                f"{where}obs[{key!r}] has values beyond float32's range (models compute in "
                "float32); rescale the column (e.g. log)."
            )
        median = np.median(numbers) if numbers.size else 0.0
        spread = 1.4826 * np.median(np.abs(numbers - median)) if numbers.size else 0.0
        far = np.abs(numbers - median) > 100 * spread if spread > 0 else np.zeros(0, bool)
        if far.any():
            warn_user(
                f"{where}obs[{key!r}] has {int(far.sum())} value(s) more than 100 median absolute "
                f"deviations from its median {median:.3g} (e.g. {numbers[far][0]:.3g}); "
                "standardised, they squash the other cells' values together. Check for errors "
                "or missing-value codes (e.g. -666), or transform the column (e.g. log)."
            )
        # float32 rounds a value v by about 3.4e-8 × v (SD): a share of the column's spread
        rounding = 3.4e-8 * abs(median) / numbers.std() if numbers.std() > 0 else 0.0
        if rounding > 0.03:
            warn_user(
                f"{where}obs[{key!r}] varies by {numbers.std():.3g} around {median:.3g}: float32, "
                f"in which models read it, rounds its values by about {rounding:.0%} of that "
                f"spread. Subtract a constant first, e.g. obs[{key!r}] - {median:.6g}."
            )


def warn_outside_training(
    obs: pd.DataFrame, keys: Sequence[str], mean: np.ndarray, scale: np.ndarray, where: str = ""
) -> None:
    """Warn where new cells' continuous covariates lie far from the training cells' values.

    The model standardises them with the training mean and standard deviation; a column whose
    median lands more than 10 standard deviations away (e.g. computed by another tool, in
    other units) is decoded far outside anything the model learned from.

    Examples
    --------
    >>> warn_outside_training(query.obs, ["tss"], np.array([10.0]), np.array([2.0]))
    """
    for key, centre, spread in zip(keys, mean, scale, strict=True):
        median = float(np.median(obs[key].to_numpy(float))) if len(obs) else centre
        distance = (median - centre) / spread
        if abs(distance) > 10:
            warn_user(
                f"{where}obs[{key!r}] has median {median:.3g}, {abs(distance):.0f} training "
                f"standard deviations from the training cells' mean {centre:.3g} (standard "
                f"deviation {spread:.3g}): outputs decoded for these cells extrapolate far from "
                "anything the model learned. Check the column is computed as for the training "
                "cells (same tool and units)."
            )


def check_batch_size(batch_size, unit: str = "cells") -> None:
    """Refuse a minibatch size that is not a positive whole number (``None`` is the default).

    Examples
    --------
    >>> check_batch_size(256)
    """
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not (isinstance(batch_size, int | np.integer) and batch_size > 0)
    ):
        raise InputError(f"batch_size must be a positive number of {unit}, not {batch_size!r}.")


def cell_positions(indices, n_obs: int, name: str = "indices") -> np.ndarray:
    """``indices`` (positions, or a boolean mask as an array or list) as positions in ``n_obs``.

    Refuses what scvi-tools would misread: a mask of another length (taken as positions of its
    first cells), names, fractions, or positions out of range. Negative positions count from
    the end, as in numpy.

    Parameters
    ----------
    indices
        Integer positions or a boolean mask, one value per cell (list, array, pandas or torch).
    n_obs
        Number of cells in the data that ``indices`` selects from.
    name
        The argument as the caller's user passes it, for the error messages.

    Returns
    -------
    The selected cells' positions, from 0 to ``n_obs - 1``.

    Examples
    --------
    >>> cell_positions([True, False, True], n_obs=3)
    array([0, 2])
    """
    what = (
        f"pass integer positions (0 to {n_obs - 1}, or negative from the end) or a boolean "
        f"mask of length {n_obs}, one value per cell"
    )
    try:
        one_dimensional = not isinstance(indices, str) and np.ndim(indices) == 1
    except ValueError:  # nested lists of unequal lengths
        one_dimensional = False
    if not one_dimensional:
        raise InputError(f"{name} must be a list or array of cells; {what}.")
    positions = np.asarray(indices)
    if positions.dtype == object:  # e.g. a pandas Series of object dtype
        kind = pd.api.types.infer_dtype(positions, skipna=False)
        if kind in ("integer", "boolean"):
            positions = positions.astype(np.int64 if kind == "integer" else bool)
    if positions.dtype == bool:  # scvi-tools reads numpy masks only
        if len(positions) != n_obs:
            raise InputError(
                f"{name} is a boolean mask of length {len(positions)}, but the data have "
                f"{n_obs} cells; {what}."
            )
        positions = np.flatnonzero(positions)
    if positions.size == 0:
        raise InputError(f"{name} selects no cells; pass at least one cell.")
    if not np.issubdtype(positions.dtype, np.integer):
        if positions.dtype.kind in "US" or pd.api.types.infer_dtype(positions) == "string":
            kind = "text"
        elif positions.dtype == object:
            kind = f"{pd.api.types.infer_dtype(positions, skipna=False)} (object)"
        else:
            kind = str(positions.dtype)
        raise InputError(
            f"{name} holds {kind} values; {what} (cell names to positions: "
            "`adata.obs_names.get_indexer(names)`)."
        )
    if positions.min() < -n_obs or positions.max() >= n_obs:
        raise InputError(f"{name} has positions out of range for {n_obs} cells; {what}.")
    positions = positions.astype(np.intp)  # small integer types would overflow below
    return np.where(positions < 0, positions + n_obs, positions)


def check_library_size(
    library_size, allow_latent: bool = False, name: str = "library_size"
) -> None:
    """Refuse a ``library_size`` that is not a positive number (or ``"latent"`` if allowed).

    ``name`` is the argument as the caller's user passes it.
    """
    if allow_latent and isinstance(library_size, str) and library_size == "latent":
        return
    number = isinstance(library_size, Real) and not isinstance(library_size, bool)
    if not (number and np.isfinite(library_size) and library_size > 0):
        allowed = "'latent' or a positive number" if allow_latent else "a positive number"
        raise InputError(f"{name} must be {allowed} (e.g. 1e4), not {library_size!r}.")


def check_size_factors(
    adata: AnnData, key: str | None, without_counts: np.ndarray | None = None
) -> None:
    """Check that ``obs[key]`` (if given) holds a finite, positive size factor for every cell.

    ``without_counts``: cells that have no counts of the data type the size factor scales
    (MultiVAE's cells without RNA); their size factor is not read but must be a number too,
    which the message says when only they lack one.
    """
    if key is None:
        return
    if without_counts is not None and key in adata.obs:
        values = adata.obs[key]
        numbers = values.to_numpy(float) if pd.api.types.is_numeric_dtype(values) else None
        bad = None if numbers is None else ~(np.isfinite(numbers) & (numbers > 0))
        if bad is not None and bad.any() and not bad[~without_counts].any():
            raise InputError(
                f"obs[{key!r}] has no positive size factor for {int(bad.sum())} cells without "
                "RNA counts. It is not read for them, but must be a positive number: "
                f"`obs[{key!r}] = obs[{key!r}].where(np.isfinite(obs[{key!r}]) & "
                f"(obs[{key!r}] > 0), 1.0)`."
            )
    if key in adata.obs and pd.api.types.is_bool_dtype(adata.obs[key]):
        raise InputError(
            f"obs[{key!r}] holds True/False, not size factors (positive numbers, usually a "
            "cell's total count over the median total)."
        )
    check_obs_keys(adata, continuous=[key])
    values = adata.obs[key].to_numpy(float)
    if np.any(values <= 0):
        raise InputError(
            f"obs[{key!r}] must hold positive size factors; {int(np.sum(values <= 0))} cells "
            "have 0 or less (e.g. cells without counts: remove them first)."
        )
    tiny = np.finfo(np.float32).tiny  # smaller ones are 0 to the model's float32 arithmetic
    if np.any(values < tiny):
        raise InputError(
            f"obs[{key!r}] has {int(np.sum(values < tiny))} size factors below {tiny:.1e}, "
            "which float32 cannot divide by; size factors are usually near 1 (a cell's total "
            "count over the median total)."
        )


def check_known_categories(
    adata: AnnData,
    registry: dict,
    sources: dict | None = None,
    encoder_reads_covariates: bool | None = None,
    allow_new_categories: bool = False,
) -> None:
    """Refuse batches or covariate categories a trained model has never seen.

    Parameters
    ----------
    adata
        Query data.
    registry
        The trained model's ``registry_`` (its ``batch_key`` and categorical covariates).
    sources
        Where to read the columns of each setup argument (``"batch_key"``,
        ``"categorical_covariate_keys"``): an object with ``obs``, ``adata`` or one of its
        modalities. Default: ``adata``.
    encoder_reads_covariates
        Whether the model's encoder reads the batch and covariates: if not, the message says
        that any known category gives these cells' latent representation. ``None``: unknown
        (the message states the condition).
    allow_new_categories
        Accept new categories (``load_query_data`` adds them to the model), but still refuse
        values of another type than the known categories (``1`` against ``"1"``, numbers
        among text), which scvi-tools cannot encode together.

    Raises
    ------
    InputError
        Naming a missing column, or the unknown categories and the known ones.

    Examples
    --------
    >>> check_known_categories(query, model.registry_)
    """
    setup_args = registry["setup_args"]
    fields = registry["field_registries"]
    sources = sources or {}
    checks = []
    if setup_args.get("batch_key") is not None:
        state = fields[REGISTRY_KEYS.BATCH_KEY]["state_registry"]
        checks.append(("batch_key", setup_args["batch_key"], state["categorical_mapping"]))
    if setup_args.get("categorical_covariate_keys"):
        mappings = fields[REGISTRY_KEYS.CAT_COVS_KEY]["state_registry"]["mappings"]
        checks.extend(
            ("categorical_covariate_keys", key, mappings[key])
            for key in setup_args["categorical_covariate_keys"]
        )
    for setup_arg, key, known in checks:
        source = sources.get(setup_arg, adata)
        obs = source.obs
        modality = next(
            (name for name, mod in getattr(adata, "mod", {}).items() if mod is source), None
        )
        column = "query.obs" if modality is None else f"query[{modality!r}].obs"
        if key not in obs:
            raise InputError(
                f"obs has no column {key!r} ({setup_arg} of the trained model). Add it with "
                "each cell's category (one the model knows)."
            )
        known = pd.Index(np.asarray(known))
        values = obs[key]
        if values.isna().any():
            raise InputError(
                f"{column}[{key!r}] ({setup_arg} of the trained model) is missing for "
                f"{int(values.isna().sum())} of {len(values)} cells. Give those cells one of "
                "the model's categories, or leave them out"
                + (
                    f": `query = query[query.obs[{key!r}].notna()].copy()`."
                    if modality is None
                    else "."
                )
            )
        unknown = pd.unique(values[~values.isin(known)])
        as_text = pd.Index(map(str, unknown)).isin(known.map(str))
        convert = _conversion(known, column, key)
        if allow_new_categories:
            kinds = {_kind(value) for value in known}
            mixed = [
                v
                for v, text in zip(unknown, as_text, strict=True)
                if text or _kind(v) not in kinds
            ]
            if mixed:
                shown = ", ".join(map(repr, _plain(mixed[:10])))
                raise InputError(
                    f"obs[{key!r}] holds {shown}, of another type than "
                    f"the model's categories {known.tolist()}: convert the column to the training "
                    f"type, `{convert}` (new categories need that type too)."
                )
            continue
        if len(unknown):
            shown = ", ".join(map(repr, _plain(unknown[:10])))
            fix = (
                "Give these cells one of those categories, add theirs to the model with "
                f"`{registry.get('model_name', 'Model')}.load_query_data(query, model)` and "
                "train it on them (scArches: only "
                "the new categories' weights learn), or train a model that includes them."
            )
            relabel = (
                f"any will do, e.g. `query = query.copy(); {column}[{key!r}] = "
                f"{known.tolist()[0]!r}`; outputs decoded per batch are then those of that "
                "category."
            )
            if encoder_reads_covariates is None:
                fix += (
                    " An encoder that does not read the batch and covariates (SAILER's; "
                    "ZINBAutoencoder's and MultiVAE's unless encode_covariates=True) embeds them "
                    "the same whichever category they get, so for the latent representation "
                    + relabel
                )
            elif not encoder_reads_covariates:
                fix += (
                    " This model's encoder does not read the batch and covariates, so they are "
                    "embedded the same whichever category they get: for the latent representation "
                    + relabel
                )
            if as_text.all():
                fix = only_the_type_differs(known, column, key)
            raise InputError(
                f"obs[{key!r}] has categories the model was not trained with: {shown}. The "
                f"decoder only knows {known.tolist()}. {fix}"
            )


def _conversion(known: pd.Index, column: str, key: str) -> str:
    """The line that gives ``column[key]`` the type of the ``known`` categories."""
    dtype = "str" if known.dtype == object else known.dtype.name
    convert = f"astype({dtype!r})"
    if dtype == "bool":  # astype(bool) would turn the text "False" into True
        convert = "map({'True': True, 'False': False})"
    return f"{column}[{key!r}] = {column}[{key!r}].{convert}"


def only_the_type_differs(known: pd.Index, column: str, key: str) -> str:
    """Advice for categories that match the ``known`` ones as text but not in type."""
    return (
        "Only the type differs (text against numbers): convert the column to the training "
        f"type, `{_conversion(known, column, key)}`."
    )


def _plain(values) -> list:
    """``values`` with numpy scalars as Python ones, for messages (``1``, not ``np.int64(1)``)."""
    return [value.item() if isinstance(value, np.generic) else value for value in values]


def _kind(value) -> str:
    """``"bool"``, ``"number"`` or ``"text"``: category values scvi-tools cannot sort together."""
    if isinstance(value, bool | np.bool_):
        return "bool"
    return "number" if isinstance(value, int | float | np.number) else "text"


def still_counts(matrix, n_rows: int = 200) -> bool:
    """Whether rows sampled across a registered count matrix still hold raw counts.

    Normalising in place after setup (``sc.pp.normalize_total``, ``sc.pp.log1p``) changes every
    row, so a few rows spread over the matrix tell, at a cost that does not grow with the data
    (at most ``n_rows`` rows and about 10⁵ values of a dense matrix).

    Examples
    --------
    >>> still_counts(adata.layers["counts"])
    True
    """
    n_obs, n_vars = matrix.shape
    if not sparse.issparse(matrix) and not isinstance(matrix, CSRDataset | CSCDataset):
        n_rows = min(n_rows, max(1, 100_000 // max(n_vars, 1)))
    rows = np.unique(np.linspace(0, n_obs - 1, min(n_rows, n_obs)).astype(int))
    values = stored_values(matrix[rows]) if len(rows) else np.zeros(0)
    if values.size == 0:
        return True
    return bool(
        np.all(np.isfinite(values)) and values.min() >= 0 and np.all(values == np.round(values))
    )


def changed_obs_keys(adata_manager) -> list[str]:
    """The obs columns that no longer match scvi-tools' registered copy of them.

    scvi-tools encodes the batch and categorical covariates, and copies the continuous
    covariates, once, when data are registered, and reads only that copy afterwards: labels or
    values changed in place since then would be ignored.

    Parameters
    ----------
    adata_manager
        The manager of registered data.

    Returns
    -------
    The obs keys of the batch, categorical and continuous covariates that changed, in registry
    order.

    Examples
    --------
    >>> changed_obs_keys(model.get_anndata_manager(adata))
    []
    """
    changed = []
    for obs, key, categories, codes in _encoded_columns(adata_manager):
        _require_column(obs, key)
        expected = pd.Index(np.asarray(categories)).get_indexer(obs[key])  # -1: not among them
        if not np.array_equal(expected, codes.astype(expected.dtype, copy=False)):
            changed.append(key)
    registry = adata_manager.data_registry
    setup_args = adata_manager.registry["setup_args"]
    if setup_args.get("continuous_covariate_keys") and REGISTRY_KEYS.CONT_COVS_KEY in registry:
        copied = adata_manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY)
        obs = _obs_of(adata_manager, REGISTRY_KEYS.CONT_COVS_KEY)
        for key in copied.columns:
            _require_column(obs, key)
            current = pd.to_numeric(obs[key], errors="coerce").to_numpy(dtype=float)
            if not np.allclose(current, copied[key].to_numpy(dtype=float), equal_nan=True):
                changed.append(key)
    return changed


def _obs_of(adata_manager, registry_key: str) -> pd.DataFrame:
    """The obs a field reads (a MuData's fields may read one modality's)."""
    field = next(f for f in adata_manager.fields if f.registry_key == registry_key)
    mod_key = getattr(field, "mod_key", None)
    data = adata_manager.adata
    return data.obs if mod_key is None else data.mod[mod_key].obs


def _encoded_columns(adata_manager) -> list[tuple]:
    """``(obs, key, categories, codes)`` of each batch / categorical covariate column."""
    registry, encoded = adata_manager.data_registry, []
    setup_args = adata_manager.registry["setup_args"]
    if setup_args.get("batch_key") is not None and REGISTRY_KEYS.BATCH_KEY in registry:
        state = adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        codes = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        obs = _obs_of(adata_manager, REGISTRY_KEYS.BATCH_KEY)
        encoded.append((obs, state["original_key"], state["categorical_mapping"], codes))
    if setup_args.get("categorical_covariate_keys") and REGISTRY_KEYS.CAT_COVS_KEY in registry:
        state = adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY)
        codes = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.CAT_COVS_KEY))
        obs = _obs_of(adata_manager, REGISTRY_KEYS.CAT_COVS_KEY)
        for column, key in enumerate(state["field_keys"]):
            encoded.append((obs, key, state["mappings"][key], codes[:, column]))
    return encoded


def renamed_categories(adata_manager, keys: list[str]) -> dict[str, dict]:
    """Which of ``keys`` (changed category columns) were renamed: ``{key: {new: old}}``.

    A column whose cells of each registered category now all carry one label, a different one
    per category, some of them unknown to the model (e.g. ``cat.rename_categories`` for
    plotting), was renamed rather than relabelled; mapping each label back restores what the
    model was trained with. (Cells given other known categories, as a query relabelled to a
    known batch, are not renamed.)

    Examples
    --------
    >>> batch = adata.obs["batch"]  # the model was trained with batch_0 and batch_1
    >>> adata.obs["batch"] = batch.cat.rename_categories(["Donor A", "Donor B"])
    >>> renamed_categories(model.adata_manager, ["batch"])
    {'batch': {'Donor A': 'batch_0', 'Donor B': 'batch_1'}}
    """
    renamed = {}
    for obs, key, categories, codes in _encoded_columns(adata_manager):
        if key not in keys or key not in obs or obs[key].isna().any():
            continue
        known = pd.Index(np.asarray(categories)).get_indexer(obs[key]) >= 0
        if known.all():
            continue
        pairs = pd.DataFrame({"new": obs[key].to_numpy(dtype=object), "code": codes.ravel()})
        pairs = pairs.drop_duplicates().sort_values("code")
        if pairs["new"].is_unique and pairs["code"].is_unique:
            old = [categories[int(code)] for code in pairs["code"]]
            renamed[key] = dict(zip(pairs["new"], old, strict=True))
    return renamed


def obs_location(adata_manager, key: str) -> str:
    """Where a registered obs column lives, as code: ``adata.obs`` or a MuData's obs."""
    data = adata_manager.adata
    if not hasattr(data, "mod"):
        return "adata.obs"
    for obs, column, _, _ in _encoded_columns(adata_manager):
        if column == key and obs is not data.obs:
            modality = next(name for name, mod in data.mod.items() if mod.obs is obs)
            return f"mdata.mod[{modality!r}].obs"
    return "mdata.obs"


def _require_column(obs: pd.DataFrame, key: str) -> None:
    if key not in obs:
        raise InputError(
            f"obs has no column {key!r} any more, which the model reads (set up with it). "
            "Add it back with each cell's value."
        )


def registered_features(registry: dict) -> dict[str | None, list]:
    """The features a model was trained on, by modality (``None`` for an AnnData model)."""
    features = {}
    for field in registry["field_registries"].values():
        names = field.get("state_registry", {}).get("column_names")
        data = field.get("data_registry", {})
        if names is not None and data.get("attr_name") in ("X", "layers"):
            features[data.get("mod_key")] = list(names)
    return features


def registered_n_cats_per_cov(registry: dict) -> list[int] | None:
    """Number of categories of each registered categorical covariate (``None`` without any)."""
    state = registry["field_registries"].get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get("state_registry")
    return list(state.get("n_cats_per_key", [])) if state else None


def check_distinct_keys(setup_args: dict) -> None:
    """Refuse an ``obs`` column named twice among the batch key and the covariate keys.

    scvi-tools registers it twice: a repeated continuous key failed with a numpy broadcasting
    error, and a repeated categorical one was one confounder counted twice. Also refuses a
    covariate key list given as one string, which was read letter by letter.

    Examples
    --------
    >>> check_distinct_keys({"batch_key": "plate", "continuous_covariate_keys": ["frip"]})
    """
    for argument in ("categorical_covariate_keys", "continuous_covariate_keys"):
        if isinstance(keys := setup_args.get(argument), str):
            raise InputError(
                f"{argument} takes a list of obs columns: pass {argument}=[{keys!r}], not "
                f"the string {keys!r}."
            )
    named: dict[str, list[str]] = {}
    for argument in ("batch_key", "categorical_covariate_keys", "continuous_covariate_keys"):
        keys = setup_args.get(argument)
        for key in [keys] if isinstance(keys, str) else keys or []:
            named.setdefault(key, []).append(argument)
    for key, arguments in named.items():
        if len(arguments) > 1:
            raise InputError(
                f"obs column {key!r} is named twice ({', '.join(arguments)}); name each column "
                "once."
            )


#: Parameter kinds a caller can pass by name.
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)

#: What scvi-tools passes a setup method when it registers new data like the training data.
_TRANSFER_ARGUMENTS = ("source_registry", "extend_categories", "allow_missing_labels")


def check_setup_arguments(setup_method, kwargs: dict, data=None) -> None:
    """Refuse keyword arguments that ``setup_method`` does not have, and views as ``data``.

    Setup methods pass ``**kwargs`` on to scvi-tools for its own transfers of a trained setup;
    anything else raised scvi-tools' ``TypeError``, which names neither the method nor its
    arguments. A view (of an AnnData, a MuData or one of its modalities) got scvi-tools'
    ``ValueError`` naming ``adata``, after every check of the counts had run.

    Examples
    --------
    >>> check_setup_arguments(ZINBAutoencoder.setup_anndata, {"continuous_covariate_keys": ["x"]})
    Traceback (most recent call last):
    ...
    scgexp.data.InputError: ZINBAutoencoder.setup_anndata has no argument...
    """
    views = [data, *getattr(data, "mod", {}).values()] if data is not None else []
    if any(view.is_view for view in views):
        name = "mdata" if hasattr(data, "mod") else "adata"
        raise InputError(
            f"{setup_method.__qualname__} registers fields in the data, which a view cannot "
            f"hold; pass a copy: `{name} = {name}[...].copy()`."
        )
    unknown = [key for key in kwargs if key not in _TRANSFER_ARGUMENTS]
    if not unknown:
        return
    parameters = inspect.signature(setup_method).parameters.values()
    names = [p.name for p in parameters if p.kind in _NAMED][1:]  # not the data
    raise InputError(_no_argument(setup_method.__qualname__, unknown[0], names))


def _no_argument(owner: str, key: str, names: list[str]) -> str:
    """``owner`` has no ``key``: the closest of its argument ``names``, and all of them."""
    close = difflib.get_close_matches(key, names, n=1)
    return (
        f"{owner} has no argument {key!r}"
        + (f"; did you mean {close[0]!r}?" if close else ".")
        + f" Its arguments: {', '.join(names)}."
    )


def refuse_unknown_arguments(**hints: str):
    """Decorate a public method: a keyword it lacks raises :class:`InputError`, not TypeError.

    The message names the closest argument, all of them, and ``hints[keyword]`` where given
    (what to do instead of an scvi-tools argument this method does not take).

    Examples
    --------
    >>> @refuse_unknown_arguments(threshold="Binarise the values yourself, e.g. `values > 0.5`.")
    ... def get_normalized_accessibility(self, adata=None, *, depth=None): ...
    """

    def decorate(method):
        names = [p.name for p in inspect.signature(method).parameters.values() if p.kind in _NAMED]
        names = names[1:]  # not self

        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            for key in kwargs:
                if key not in names:
                    owner = f"{type(self).__name__}.{method.__name__}"
                    hint = f" {hints[key]}" if key in hints else ""
                    raise InputError(_no_argument(owner, key, names) + hint)
            return method(self, *args, **kwargs)

        return checked

    return decorate


_FEATURES = {"gene_list": "genes", "region_list": "peaks", "protein_list": "proteins"}


def feature_positions(names, wanted, argument: str, known_at: str = "") -> np.ndarray:
    """Positions in ``names`` of the features ``wanted``, in its order (``gene_list``, ...).

    A single name, a boolean mask, names that are not features of the model (``known_at``:
    where the user finds those), and data whose feature names repeat (a name would be
    ambiguous) are refused.

    Examples
    --------
    >>> feature_positions(["a", "b", "c"], ["c", "a"], "gene_list")
    array([2, 0])
    """
    if isinstance(wanted, str):
        raise InputError(f"{argument} must be a list of names: [{wanted!r}].")
    names, wanted = pd.Index(names), pd.Index(wanted)
    if wanted.dtype == bool:
        raise InputError(f"{argument} takes names, not a mask: var_names[mask].")
    if not names.is_unique:
        raise InputError(
            f"{argument} picks features by name, and the data's feature names repeat: run "
            "adata.var_names_make_unique() before setup, or select columns afterwards."
        )
    unknown = wanted.difference(names)
    if len(unknown):
        raise InputError(
            f"{argument} names {len(unknown)} {_FEATURES.get(argument, 'features')} the model "
            f"does not have: {', '.join(map(str, unknown[:10]))}"
            + (f"; the model's are {known_at}." if known_at else ".")
        )
    return names.get_indexer(wanted)


#: Module arguments that the models fill in from the registered data.
_SET_FROM_THE_DATA = {
    "n_input",
    "n_features",
    "n_batch",
    "n_cats_per_cov",
    "n_continuous_cov",
    "use_size_factor_key",
    "landmark_index",
    "target_index",
}


def check_architecture(dropout_rate: float, loading: bool = False, **sizes) -> None:
    """Refuse layer sizes and counts that are not positive whole numbers, and bad dropout rates.

    Torch built zero-width or missing layers from such sizes without a word; a dropout rate
    must lie in [0, 1). ``loading``: a saved model is rebuilt as it was (models saved before
    this check still load).

    Examples
    --------
    >>> check_architecture(0.1, n_hidden=128, n_layers=0)
    Traceback (most recent call last):
    ...
    scgexp.data.InputError: n_layers must be a positive whole number, not 0.
    """
    if loading:
        return
    for name, value in sizes.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
        ):
            raise InputError(f"{name} must be a positive whole number, not {value!r}.")
    if isinstance(dropout_rate, bool) or not (
        isinstance(dropout_rate, int | float | np.number) and 0 <= dropout_rate < 1
    ):
        raise InputError(f"dropout_rate must lie in [0, 1), not {dropout_rate!r}.")


def check_model_arguments(model_cls, module_cls, kwargs: dict, set_by_model=()) -> None:
    """Refuse keyword arguments that neither a model nor its module has.

    Models pass ``**kwargs`` on to their module, whose ``TypeError`` named the module's
    ``__init__`` and not the model (e.g. MULTIVI's ``n_genes`` given to MultiVAE).
    ``set_by_model``: module arguments the model fills in from its own (not listed).
    """
    parameters = inspect.signature(model_cls.__init__).parameters.values()
    names = [p.name for p in parameters if p.kind in _NAMED][3:]  # not data
    module_names = [
        name
        for name in list(inspect.signature(module_cls.__init__).parameters)[1:]
        if name not in names and name not in _SET_FROM_THE_DATA and name not in set_by_model
    ]
    for key in kwargs:
        if key in _SET_FROM_THE_DATA:
            raise InputError(
                f"{key} is set from the data registered by {model_cls.__name__}'s setup; "
                "leave it out."
            )
        if key not in module_names:
            raise InputError(_no_argument(model_cls.__name__, key, names + module_names))


#: Invariance arguments a model sets itself, and what sets them.
_INVARIANCE_SET_BY_MODEL = {
    "method": "the model's invariance=",
    "weight": "the model's invariance_weight=",
    "n_latent": "the model's n_latent=",
    "n_cats_per_key": "setup_anndata's batch and covariate keys",
    "n_continuous": "setup_anndata's continuous covariates (depth is always one)",
}


def check_invariance_kwargs(invariance, invariance_kwargs) -> None:
    """Refuse ``invariance_kwargs`` that :class:`scgexp.nn.Invariance` lacks or would ignore.

    The model sets the penalty's method, weight and sizes itself; what remains (the
    adversarial weight and the discriminator heads' sizes) concerns the adversary only, so it
    is refused without one rather than ignored.
    """
    if invariance_kwargs is None:
        return
    if not isinstance(invariance_kwargs, dict):
        raise InputError(
            f"invariance_kwargs must be a dict, not {type(invariance_kwargs).__name__}."
        )
    names = [
        name
        for name in list(inspect.signature(Invariance.__init__).parameters)[1:]
        if name not in _INVARIANCE_SET_BY_MODEL
    ]
    for key in invariance_kwargs:
        if key in _INVARIANCE_SET_BY_MODEL:
            raise InputError(
                f"invariance_kwargs cannot set {key!r}: {_INVARIANCE_SET_BY_MODEL[key]} does."
            )
        if key not in names:
            raise InputError(_no_argument("invariance_kwargs", key, names))
    if invariance_kwargs and invariance not in ("adversarial", "both"):
        raise InputError(
            f"invariance_kwargs {sorted(invariance_kwargs)} set the adversary, which "
            f"invariance={invariance!r} does not have: pass invariance='adversarial' or "
            "'both', or leave them out."
        )


#: Models with ``prepare_query_anndata`` / ``prepare_query_mudata``.
_PREPARES_QUERIES = ("ZINBAutoencoder", "SAILER", "MultiVAE")


def rename_modalities_hint(names) -> str:
    """How to give a MuData's modalities the names ``names`` that a model was trained on."""
    renames = "; ".join(
        f'mdata.mod["{name}"] = mdata.mod.pop("<its name here>")' for name in names
    )
    return (
        f"If they hold the same data under other names, rename them: `{renames}; mdata.update()`."
    )


def check_feature_names(adata, registry: dict) -> None:
    """Check that new data has the trained model's features, by name and in the same order.

    scvi-tools compares only the number of features, so data with the same genes in another
    order would be read by position: wrong values under the right names.

    Parameters
    ----------
    adata
        Query data (AnnData, or MuData for a multimodal model).
    registry
        The trained model's ``registry_``.

    Raises
    ------
    InputError
        Naming the missing features, or saying how to put them in the model's order.

    Examples
    --------
    >>> check_feature_names(query, model.registry_)
    """
    features = registered_features(registry)
    trained = [key for key in features if key is not None]
    if trained and hasattr(adata, "mod") and not set(trained) & set(adata.mod):
        raise InputError(
            f"The MuData has none of the modalities the model was trained on ({trained}; it "
            f"has {list(adata.mod)}). {rename_modalities_hint(trained)}"
        )
    for mod_key, names in features.items():
        if mod_key is not None and not hasattr(adata, "mod"):
            raise InputError(
                f"This model needs a MuData (it was trained on modality {mod_key!r}), not a "
                f"{type(adata).__name__}."
            )
        if mod_key is not None and mod_key not in adata.mod:
            raise InputError(
                f"The MuData has no modality {mod_key!r}, which the model was trained on "
                f"(modalities: {list(adata.mod)}; rename the one that holds its data, if any). "
                "Add it, with the training features (for new "
                "data it may hold only the cells that have that data, or none: `mdata = "
                "scgexp.data.pad_modalities(mdata)` gives the others all-zero rows, read as "
                "missing). For a query without that data, `MultiVAE.prepare_query_mudata(mdata, "
                "model)` adds it with all-zero rows."
            )
        target = adata.mod[mod_key] if mod_key is not None else adata
        if target.var_names.equals(pd.Index(names)):  # the usual case, without conversions
            continue
        where = f"modality {mod_key!r}: " if mod_key is not None else ""
        expected = pd.Index(np.asarray(names, dtype=str))
        present = pd.Index(np.asarray(target.var_names, dtype=str))
        if present.equals(expected):
            continue
        missing = expected.difference(present, sort=False)
        model = registry.get(_MODEL_NAME_KEY, "Model")
        prepare = "prepare_query_mudata" if mod_key is not None else "prepare_query_anndata"
        if len(missing) == len(expected) and len(present):
            raise InputError(
                f"{where}none of the model's {len(expected)} features are in the data."
                + naming_hint(expected, present)
            )
        if len(missing):
            raise InputError(
                f"{where}{len(missing)} of the model's {len(expected)} features are missing from "
                f"the data: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. "
                "The data needs every feature the model was trained on"
                + (
                    f"; `{model}.{prepare}(data, model)` adds missing ones as zeros (read as not "
                    "detected) and puts the features in the model's order."
                    if model in _PREPARES_QUERIES
                    else "."
                )
            )
        key = f"[{mod_key!r}]" if mod_key is not None else ""
        selection = f"mdata.mod{key}" if mod_key is not None else "adata"
        update = "; mdata.update()" if mod_key is not None else ""
        raise InputError(
            f"{where}the data has the model's features, but in another order or with extra "
            f"features; they would be read by position. Select them in the model's order: "
            f"`{selection} = {selection}[:, names].copy(){update}` with `names` the training "
            f"data's var_names ({', '.join(expected[:3])}, ...): "
            f"`model.training_var_names{key}`, for a saved model "
            f"`{model}.load(dir).training_var_names{key}`"
            + (f"; or `{model}.{prepare}(data, model)`." if model in _PREPARES_QUERIES else ".")
        )


#: A genomic interval named with its separators: chr1:100-200, chr1_100_200, chr1-100-200.
_INTERVAL = re.compile(r"^(.+?)([:_-])(\d+)([:_-])(\d+)$")


def naming_hint(expected: Sequence[str], present: Sequence[str]) -> str:
    """How the data's feature names differ from the model's, when none of them match."""
    hint = f" The model names features like {expected[0]!r}, the data like {present[0]!r}"
    model, data = _INTERVAL.match(str(expected[0])), _INTERVAL.match(str(present[0]))
    if model and data and (model[2], model[4]) != (data[2], data[4]):
        pattern = rf"^(.+){re.escape(data[2])}(\d+){re.escape(data[4])}(\d+)$"
        return (
            f"{hint}: rename the peaks as the model does, e.g. `adata.var_names = "
            f"adata.var_names.str.replace(r'{pattern}', r'\\1{model[2]}\\2{model[4]}\\3', "
            "regex=True)`."
        )
    if {str(name).lower() for name in expected} & {str(name).lower() for name in present}:
        return (
            f"{hint}: the names differ in letter case (e.g. mouse 'Cd3e' against human 'CD3E'); "
            "name them as the model does, e.g. `adata.var_names = adata.var_names.str.upper()` "
            "when the model's are upper case."
        )
    return f"{hint} (e.g. gene symbols against Ensembl IDs); name them as the model does."


def check_query(
    adata: AnnData, registry: dict, encoder_reads_covariates: bool | None = None
) -> None:
    """Check new data for a trained count model before scvi-tools validates it.

    The trained model's features in its order, raw counts in the trained layer, only
    batch/covariate categories the model was trained with, finite continuous covariates and
    positive size factors.

    Parameters
    ----------
    adata
        Query data.
    registry
        The trained model's ``registry_``.
    encoder_reads_covariates
        As in :func:`check_known_categories`.

    Examples
    --------
    >>> check_query(query, model.registry_)
    """
    setup_args = registry["setup_args"]
    check_feature_names(adata, registry)
    check_matrix(adata, setup_args.get("layer"), counts=True, layer_argument=None)
    check_known_categories(adata, registry, encoder_reads_covariates=encoder_reads_covariates)
    check_obs_keys(adata, continuous=setup_args.get("continuous_covariate_keys"))
    check_size_factors(adata, setup_args.get("size_factor_key"))


def batch_codes(transform_batch, registry: dict) -> list[int | None]:
    """Codes of one or several ``transform_batch`` categories (``None``: each cell's own)."""
    if transform_batch is None or isinstance(transform_batch, str | int | float | np.generic):
        transform_batch = [transform_batch]
    if len(transform_batch) == 0:
        raise InputError("transform_batch is an empty list; name a batch, or None for each own.")
    return [batch_code(category, registry) for category in transform_batch]


def batch_code(transform_batch, registry: dict) -> int | None:
    """Code of one ``transform_batch`` category in a model's ``registry``, with clear errors.

    ``None`` stays ``None`` (each cell's own batch).
    """
    if transform_batch is None:
        return None
    state = registry["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]
    batches = np.asarray(state["categorical_mapping"]).tolist()
    if isinstance(transform_batch, list | tuple | np.ndarray | pd.Index):
        raise InputError(
            f"transform_batch takes one batch, not {type(transform_batch).__name__} "
            f"{list(transform_batch)!r}; call once per batch (and average the results for an "
            "average over batches)."
        )
    if transform_batch not in batches:
        if registry["setup_args"].get("batch_key") is None:  # its one default category only
            raise InputError(
                f"transform_batch={transform_batch!r}, but this model was set up without "
                "batch_key, so it decodes every cell alike; leave transform_batch=None."
            )
        raise InputError(f"{transform_batch!r} is not a batch of this model; batches: {batches}.")
    return batches.index(transform_batch)
