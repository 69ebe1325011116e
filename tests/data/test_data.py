from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scgexp
from scgexp._io import _decode, _encode
from scgexp.data import InputError, check_matrix, check_obs_keys


def test_pbmc68k_counts_are_real_counts():
    adata = scgexp.data.pbmc68k_counts()
    assert adata.shape == (700, 765)
    values = adata.X.data
    assert np.all(values == np.round(values))
    assert values.min() > 0
    assert adata.obs["cell_type"].nunique() == 10
    # scanpy's totals cover the whole transcriptome, not these genes: renamed, not kept as is.
    assert "n_counts" not in adata.obs
    assert (adata.obs["n_counts_all_genes"] > np.asarray(adata.X.sum(1)).ravel()).all()
    # Before rounding, the rebuilt values are already within 0.1 of integers: real counts.
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    unrounded = (
        np.expm1(reduced.raw.X.toarray()) / 1e4 * reduced.obs["n_counts"].to_numpy()[:, None]
    )
    assert np.abs(unrounded - np.round(unrounded)).max() < 0.1
    # What the function returns: those values rounded, which normalise back to scanpy's raw.X.
    raw = reduced.raw.to_adata()[:, adata.var_names].X.toarray()
    totals = adata.obs["n_counts_all_genes"].to_numpy()[:, None]
    expected = np.round(np.expm1(raw) / 1e4 * totals)
    np.testing.assert_array_equal(adata.X.toarray(), expected)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), expected)
    np.testing.assert_allclose(np.log1p(adata.X.toarray() / totals * 1e4), raw, atol=0.05)


@pytest.mark.parametrize(
    "simulate",
    [
        scgexp.data.simulate_scrna,
        scgexp.data.simulate_scatac,
        lambda seed: scgexp.data.simulate_multiome(seed=seed, n_proteins=5)["rna"],
    ],
)
def test_simulators_are_seeded_sparse_counts(simulate):
    first, second = simulate(seed=4), simulate(seed=4)
    assert sparse.issparse(first.X)
    assert (first.X != second.X).nnz == 0
    check_matrix(first, counts=True, allow_empty_cells=True)
    assert (simulate(seed=5).X != first.X).nnz > 0


def test_scatac_depth_is_confounded_with_batch():
    adata = scgexp.data.simulate_scatac(n_cells=600, seed=0)
    depth = np.log(np.asarray((adata.X > 0).sum(1)).ravel())
    by_batch = pd.Series(depth).groupby(adata.obs["batch"].to_numpy()).mean()
    assert by_batch["batch_1"] - by_batch["batch_0"] > 0.4


def test_multiome_missing_modalities():
    mdata = scgexp.data.simulate_multiome(n_cells=200, missing_fraction=0.2, n_proteins=4)
    assert set(mdata.mod) == {"rna", "atac", "prot"}
    no_atac = ~mdata.obs["has_atac"].to_numpy()
    assert no_atac.sum() == 20
    assert mdata["atac"].X[no_atac].sum() == 0


def test_bulk_simulator_truth():
    adata = scgexp.data.simulate_bulk_expression(n_samples=100, n_landmarks=10, n_targets=30)
    assert adata.var["landmark"].sum() == 10
    assert adata.obsm["program_activity"].shape == (100, 50)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[1.0, 2.5], [0.0, 3.0]]), "non-integer values"),
        (np.array([[1.0, -2.0], [0.0, 3.0]]), "negative values"),
        (np.array([[1.0, np.nan], [0.0, 3.0]]), "NaN or infinite"),
        (np.array([[0.0, 0.0], [1.0, 3.0]]), "1 cells with no counts"),
    ],
)
def test_check_matrix_refuses(values, message):
    adata = scgexp.data.simulate_scrna(n_cells=2, n_genes=2)[:, :2].copy()
    adata.X = sparse.csr_matrix(values)
    before = adata.X.copy()
    with pytest.raises(InputError, match=message):
        check_matrix(adata, counts=True)
    assert (adata.X != before).nnz == 0 or np.isnan(values).any()


def test_check_matrix_points_to_layer_and_empty_genes():
    adata = scgexp.data.simulate_scrna(n_cells=20, n_genes=10)
    adata.X = adata.X.astype(np.float32) / 3
    with pytest.raises(InputError, match="layer="):
        check_matrix(adata, counts=True)
    check_matrix(adata, layer="counts", counts=True)
    adata.layers["counts"][:, 0] = 0
    with pytest.raises(InputError, match="zero in every cell"):
        check_matrix(adata, layer="counts", allow_empty_features=False)


def test_fortran_ordered_dense_is_accepted_with_a_warning_and_same_values():
    # anndata makes such arrays when genes are subset; scvi-tools swaps in a row-major copy.
    adata = scgexp.data.simulate_bulk_expression(n_samples=20, n_landmarks=5, n_targets=10)
    adata.X = np.asfortranarray(adata.X)
    values = adata.X.copy()
    with pytest.warns(UserWarning, match="row-major"):
        scgexp.model.DGEX.setup_anndata(adata)
    np.testing.assert_array_equal(adata.X, values)


def test_check_obs_keys():
    adata = scgexp.data.simulate_scrna(n_cells=10, n_genes=5)
    adata.obs["tss"] = np.nan
    with pytest.raises(InputError, match="no column 'plate'"):
        check_obs_keys(adata, categorical=["plate"])
    with pytest.raises(InputError, match="NaN"):
        check_obs_keys(adata, continuous=["tss"])


def test_attribute_encoding_round_trips():
    value = {
        "array": np.array(["a", "b"], dtype=object),
        "ints": np.arange(3),
        "frame": pd.DataFrame({"x": [1.0, 2.0]}, index=pd.Index([0, 1], name="epoch")),
        "empty": np.zeros((0, 3)),
        "nested": {"t": (1, 2), "inf": float("inf"), "none": None},
        "numpy_nan": np.float32("nan"),
    }
    back = _decode(json.loads(json.dumps(_encode(value), allow_nan=False)))  # strict JSON
    assert back["array"].tolist() == ["a", "b"]
    np.testing.assert_array_equal(back["ints"], np.arange(3))
    pd.testing.assert_frame_equal(back["frame"], value["frame"])
    assert back["empty"].shape == (0, 3)
    assert back["nested"] == {"t": (1, 2), "inf": float("inf"), "none": None}
    assert np.isnan(back["numpy_nan"])


@pytest.mark.parametrize("dense", [False, True])
def test_row_and_column_sums_match_numpy(dense):
    from scgexp.data import row_and_column_sums

    matrix = sparse.random(25_003, 7, density=0.3, format="csr", random_state=0) * 5
    values = matrix.toarray()
    given = values if dense else matrix
    for kwargs, expected in (
        ({}, values),
        ({"binary": True}, values > 0),
        ({"log1p": True}, np.log1p(values)),
    ):
        rows, columns = row_and_column_sums(given, **kwargs)
        np.testing.assert_allclose(rows, expected.sum(1))
        np.testing.assert_allclose(columns, expected.sum(0))


def test_row_and_column_sums_of_float16_counts_do_not_overflow():
    from scgexp.data import row_and_column_sums

    values = np.full((3, 40), 2000.0, dtype=np.float16)  # rows of 80,000 > float16's 65,504
    rows, columns = row_and_column_sums(values)  # (scipy has no float16 sparse matrices)
    np.testing.assert_array_equal(rows, 80_000.0)
    np.testing.assert_array_equal(columns, 6000.0)
    # check_matrix's row sums (MultiVAE's RNA totals) too
    np.testing.assert_array_equal(check_matrix(anndata.AnnData(values), counts=True), 80_000.0)


@pytest.mark.parametrize(
    ("simulate", "kwargs", "message"),
    [
        (scgexp.data.simulate_scrna, {"n_cells": 0}, "n_cells must be a positive whole number"),
        (scgexp.data.simulate_bulk_expression, {"n_targets": -3}, "n_targets must be"),
        (scgexp.data.simulate_scatac, {"depth_range": (0, 0.3)}, "0 < low <= high"),
        (scgexp.data.simulate_scatac, {"depth_range": (0.5, 3.0)}, "high <= 1, not"),
        (scgexp.data.simulate_multiome, {"n_proteins": 2.5}, "n_proteins must be a whole"),
        (scgexp.data.simulate_multiome, {"n_proteins": -1}, "n_proteins must be a whole"),
        (scgexp.data.simulate_multiome, {"n_proteins": True}, "n_proteins must be a whole"),
        (scgexp.data.simulate_scrna, {"n_genes": True}, "n_genes must be a positive whole"),
        (scgexp.data.simulate_scatac, {"depth_range": (0.1,)}, "must be \\(low, high\\)"),
        (scgexp.data.simulate_multiome, {"missing_fraction": 1.5}, "from 0 to 1"),
    ],
)
def test_simulators_refuse_bad_arguments(simulate, kwargs, message):
    with pytest.raises(scgexp.data.InputError, match=message):
        simulate(**kwargs)


def test_bulk_simulator_takes_few_programs():
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=30, n_landmarks=5, n_targets=10, n_programs=2
    )
    assert adata.shape == (30, 15)
