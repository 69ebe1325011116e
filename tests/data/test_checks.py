"""Input checks find bad values wherever they are in a matrix, in chunks, sparse or dense."""

from __future__ import annotations

import re

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scgexp.data import (
    InputError,
    check_matrix,
    check_obs_keys,
    row_and_column_sums,
    simulate_scrna,
)
from scgexp.data._checks import check_known_categories, still_counts
from scgexp.data._matrix import mean_and_scale


def _adata(values, layer=None):
    matrix = sparse.csr_matrix(np.asarray(values, dtype=float))
    if layer is None:
        return anndata.AnnData(X=matrix)
    return anndata.AnnData(X=matrix.copy(), layers={layer: matrix})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.nan, "NaN or infinite"),
        (np.inf, "NaN or infinite"),
        (-1.0, "negative values"),
        (-5.0, "negative values"),
        (1.5, "non-integer values"),
    ],
)
@pytest.mark.parametrize("dense", [False, True])
def test_check_matrix_finds_bad_values_past_the_first_row(bad, message, dense):
    """ck01 (first row only), ck03 (-1 accepted), ck05 (inf accepted)."""
    values = [[1.0, 2.0], [3.0, 4.0], [5.0, bad]]
    adata = _adata(values)
    if dense:
        adata.X = np.asarray(values)
    with pytest.raises(InputError, match=message):
        check_matrix(adata, counts=True)


@pytest.mark.parametrize("dense", [False, True])
def test_counts_off_whole_numbers_are_refused_with_the_rounding_to_paste(dense):
    # Counts through a float conversion (2.99999) were called "log-normalised data?", with
    # advice to pass layer=, which the user had done.
    counts = np.array([[0.0, 3.0], [2.0, 7.0]])
    adata = _adata(counts, layer="counts")
    adata.layers["counts"].data = np.expm1(np.log1p(adata.layers["counts"].data) * (1 + 1e-6))
    if dense:
        adata.layers["counts"] = adata.layers["counts"].toarray()
    with pytest.raises(InputError, match="float conversion") as refused:
        check_matrix(adata, layer="counts", counts=True)
    fix = re.search(rf"`([^`]+)` if {'dense' if dense else 'sparse'}", str(refused.value))[1]
    exec(fix.replace("; ", "\n"))  # as a user pastes it
    check_matrix(adata, layer="counts", counts=True)
    np.testing.assert_array_equal(sparse.csr_matrix(adata.layers["counts"]).toarray(), counts)
    adata.layers["counts"] = adata.layers["counts"] * 40.5  # expected counts of an EM quantifier
    with pytest.raises(InputError, match="EM quantifier"):
        check_matrix(adata, layer="counts", counts=True)
    adata.layers["counts"] = adata.layers["counts"] / 1e5  # proportions: rounding zeroes them
    with pytest.raises(InputError, match="log-normalised data") as refused:
        check_matrix(adata, layer="counts", counts=True)
    assert "np.rint" not in str(refused.value)
    assert "layer='counts')" not in str(refused.value)  # the layer the user already named
    adata.layers["normalised"] = adata.layers["counts"]
    with pytest.raises(InputError, match=re.escape("(e.g. layer='counts')")):
        check_matrix(adata, layer="normalised", counts=True)


def test_tiny_and_missing_looking_training_categories_warn_by_name(warnings_as_errors):
    # scvi-tools' own warning names its internal column and a code ("Category 3 in
    # adata.obs['_scvi_batch']"); NaN turned into the text 'nan' was accepted as a batch.
    adata = _adata(np.ones((10, 2)))
    adata.obs["batch"] = ["a"] * 6 + ["lonely"] + ["nan"] * 3
    adata.obs["treatment"] = ["None"] * 5 + ["drug"] * 5  # a real level, not a missing value
    with pytest.warns(UserWarning, match=r"fewer than 3 cells: \{'lonely': 1\}"):
        check_obs_keys(adata, categorical=["batch"], allow_unused_categories=False)
    with pytest.warns(UserWarning, match=r"category 'nan' \(3 cells\).*missing value"):
        check_obs_keys(adata, categorical=["batch"], allow_unused_categories=False)
    with warnings_as_errors():
        check_obs_keys(adata, categorical=["batch"])  # new data: not for training
        check_obs_keys(adata, categorical=["treatment"], allow_unused_categories=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_matrix_refuses_non_finite_values_in_a_layer_without_counts(bad):
    """ck06: NaN/inf in a layer (counts=False, as DGEX's setup) tolerated."""
    adata = _adata([[1.0, -2.0], [0.5, bad]], layer="logcounts")
    with pytest.raises(InputError, match="layer 'logcounts' contains NaN or infinite"):
        check_matrix(adata, layer="logcounts")


def test_check_matrix_sums_columns_over_every_chunk():
    """ck07: a feature non-zero only in the first of two 10,000-row chunks is not empty."""
    matrix = sparse.lil_matrix((10_001, 3))
    matrix[:, 0] = 1.0
    matrix[0, 1] = matrix[-1, 2] = 1.0
    adata = anndata.AnnData(X=matrix.tocsr())
    check_matrix(adata, counts=True, allow_empty_features=False)


def test_row_and_column_sums_column_rows_across_chunks():
    """ck08: the column_rows mask must follow the rows of every chunk (as MultiVAE uses it)."""
    matrix = sparse.random(25_003, 7, density=0.3, format="csr", random_state=0)
    mask = np.random.default_rng(0).random(25_003) < 0.3
    rows, columns = row_and_column_sums(matrix, binary=True, column_rows=mask)
    values = matrix.toarray() > 0
    np.testing.assert_allclose(rows, values.sum(1))
    np.testing.assert_allclose(columns, values[mask].sum(0))


def test_check_obs_keys_refuses_any_non_integer_or_missing_label(warnings_as_errors):
    """ck14 (refused only if all non-integer), ck29 (refused only if all missing)."""
    adata = simulate_scrna(n_cells=10, n_genes=5)
    adata.obs["plate"] = np.r_[np.ones(9), 1.5]
    with pytest.raises(InputError, match="holds continuous values"):
        check_obs_keys(adata, categorical=["plate"])
    adata.obs["donor"] = ["d1"] * 9 + [None]
    with pytest.raises(InputError, match=r"missing values \(1 cell\); give those cells"):
        check_obs_keys(adata, categorical=["donor"])  # not "fill with 'unknown'": a new group
    many = simulate_scrna(n_cells=40, n_genes=5)
    many.obs["total"] = np.arange(40)  # an integer measurement, not groups
    with pytest.raises(InputError, match="40 different values for 40 cells"):
        check_obs_keys(many, categorical=["total"], allow_unused_categories=False)
    adata.obs["tss"] = np.r_[np.ones(9), np.inf]
    with pytest.raises(InputError, match="NaN or infinite"):
        check_obs_keys(adata, continuous=["tss"])
    adata.obs["tss"] = np.r_[np.linspace(4, 6, 9), 1e6]  # one outlier squashes the rest
    with pytest.warns(UserWarning, match="1 value.s. more than 100 median absolute deviations"):
        check_obs_keys(adata, continuous=["tss"])
    adata.obs["tss"] = np.r_[np.linspace(4, 6, 9), 1e39]  # finite in float64, not in float32
    with pytest.raises(InputError, match="beyond float32's range"):
        check_obs_keys(adata, continuous=["tss"])
    adata.obs["tss"] = 1e7 + np.linspace(0, 1, 10)  # float32 spacing is 1 at 1e7
    with pytest.warns(UserWarning, match=r"values by about 107%.*obs\['tss'\] - 1e\+07"):
        check_obs_keys(adata, continuous=["tss"])
    adata.obs["kelvin"] = 310.15 + np.linspace(-0.03, 0.03, 10)  # rounded by 0.05%: fine
    with warnings_as_errors():
        check_obs_keys(adata, continuous=["kelvin"])


def test_tiny_covariates_are_standardised_and_constant_ones_centred():
    values = np.c_[np.linspace(0, 1, 10) * 1e-7, np.full(10, 0.1), np.zeros(10)]
    mean, scale = mean_and_scale(values)
    np.testing.assert_allclose(scale, [values[:, 0].std(), 1.0, 1.0])
    np.testing.assert_allclose(mean, [5e-8, 0.1, 0.0])


def test_boolean_matrix_is_refused_with_the_conversion():
    adata = anndata.AnnData(X=np.eye(3, dtype=bool))
    with pytest.raises(InputError, match=r"adata\.X = adata\.X\.astype\(np\.float32\)"):
        check_matrix(adata, counts=True)


def test_still_counts_reads_rows_across_the_matrix():
    """ck21: the first row alone (e.g. a cell without that modality in MultiVAE) says nothing."""
    counts = sparse.random(300, 50, density=0.3, format="csr", random_state=0)
    counts.data = np.ceil(counts.data * 10)
    assert still_counts(counts)
    normalised = counts.copy()
    normalised.data = np.log1p(normalised.data / 2.0)
    normalised = sparse.vstack([sparse.csr_matrix((1, 50)), normalised[1:]]).tocsr()
    assert not still_counts(normalised)


def _batch_registry(categories) -> dict:
    mapping = {"categorical_mapping": np.asarray(categories)}
    return {
        "setup_args": {"batch_key": "batch"},
        "field_registries": {"batch": {"state_registry": mapping}},
    }


def _with_batch(values) -> anndata.AnnData:
    obs = pd.DataFrame({"batch": values}, index=[str(i) for i in range(len(values))])
    return anndata.AnnData(obs=obs)


@pytest.mark.parametrize(
    ("known", "values"),
    [
        ([0, 1], np.array([1, 7])),  # numbers in a plain int64 column (numpy scalars)
        ([0, 1], pd.Categorical([1, 7])),
        (["a", "b"], pd.Categorical(["a", "c"])),
        ([False, True], pd.Categorical([True, False])),
    ],
)
def test_new_categories_of_the_known_type_are_accepted(known, values):
    check_known_categories(_with_batch(values), _batch_registry(known), allow_new_categories=True)


@pytest.mark.parametrize(
    ("known", "values", "shown"),
    [
        ([False, True], pd.Categorical([True, 2]), "2"),  # a number among booleans
        ([0.1, 0.2], np.array([0.1, 0.3], dtype=np.float32), "0.1"),  # prints as a known one
        ([0, 1], pd.Categorical(["x"]), "'x'"),
        ([False, True], np.array([2, 3]), "2, 3"),  # numpy scalars shown as plain numbers
    ],
)
def test_new_categories_of_another_type_are_refused(known, values, shown):
    with pytest.raises(InputError, match=rf"holds .*{shown}.*, of another type"):
        check_known_categories(
            _with_batch(values), _batch_registry(known), allow_new_categories=True
        )


@pytest.mark.parametrize("allow_new_categories", [False, True])
def test_a_query_without_a_batch_for_some_cells_is_told_so(allow_new_categories):
    query = _with_batch(pd.Categorical(["a", None, None]))
    with pytest.raises(InputError, match=r"missing for 2 of 3 cells.*\.notna\(\)\]\.copy"):
        check_known_categories(
            query, _batch_registry(["a", "b"]), allow_new_categories=allow_new_categories
        )


def test_setup_refuses_an_argument_it_does_not_have():
    from scgexp.data import simulate_bulk_expression, simulate_multiome, simulate_scatac
    from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

    cases = [
        (
            ZINBAutoencoder.setup_anndata,
            simulate_scrna(n_cells=30, n_genes=10, seed=0),
            "batch_key",
        ),
        (SAILER.setup_anndata, simulate_scatac(n_cells=30, n_peaks=20, seed=0), "batch_key"),
        (
            DGEX.setup_anndata,
            simulate_bulk_expression(n_samples=30, n_landmarks=5, n_targets=5),
            "landmark_key",
        ),
        (
            MultiVAE.setup_mudata,
            simulate_multiome(n_cells=30, n_genes=10, n_peaks=20, seed=0),
            "batch_key",
        ),
    ]
    for setup, data, argument in cases:
        # scvi-tools raised a TypeError naming neither the method nor its arguments.
        typo = argument.replace("_", "")
        with pytest.raises(
            InputError, match=f"has no argument '{typo}'; did you mean '{argument}'"
        ):
            setup(data, **{typo: "batch"})
        assert not any(key.startswith("_scvi") for key in data.obs)
    # The data argument is not listed; scvi-tools' own transfer arguments pass.
    from scgexp.data._checks import check_setup_arguments

    with pytest.raises(InputError, match=r"Its arguments: layer, batch_key,"):
        ZINBAutoencoder.setup_anndata(cases[0][1], layr="counts")
    transfer = {"source_registry": None, "extend_categories": True, "allow_missing_labels": True}
    check_setup_arguments(ZINBAutoencoder.setup_anndata, transfer)


def test_setup_refuses_views_before_reading_the_data():
    """scvi-tools' ``ValueError`` named ``adata`` (also for a MuData), after the count checks."""
    from scgexp.data import simulate_bulk_expression, simulate_multiome, simulate_scatac
    from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

    cases = [
        (ZINBAutoencoder.setup_anndata, simulate_scrna(n_cells=40, n_genes=20), "adata"),
        (SAILER.setup_anndata, simulate_scatac(n_cells=40, n_peaks=50), "adata"),
        (DGEX.setup_anndata, simulate_bulk_expression(60, 10, 20), "adata"),
    ]
    for setup, data, name in cases:
        with pytest.raises(InputError, match=rf"a view cannot hold; pass a copy: `{name} = "):
            setup(data[:30])
    mdata = simulate_multiome(n_cells=40, n_genes=20, n_peaks=30)
    with pytest.raises(InputError, match=r"a view cannot hold; pass a copy: `mdata = mdata\["):
        MultiVAE.setup_mudata(mdata[:30], modalities={"rna_layer": "rna"})


def test_int8_minimum_is_summed_as_its_magnitude():
    row_sums = check_matrix(anndata.AnnData(np.full((2, 3), -128, np.int8)))
    np.testing.assert_array_equal(row_sums, [384, 384])  # an empty-cell test reads these


def test_a_column_mixing_text_and_numbers_is_refused_before_setup_writes():
    from scgexp.model import ZINBAutoencoder

    adata = simulate_scrna(n_cells=60, n_genes=30, seed=0)
    adata.obs["plate"] = pd.Series([1, "1"] * 30, dtype=object, index=adata.obs_names)
    columns = list(adata.obs.columns)
    for kwargs in ({"batch_key": "plate"}, {"categorical_covariate_keys": ["plate"]}):
        with pytest.raises(InputError, match=r"mixes text and other values \(e\.g\. '1' and 1\)"):
            ZINBAutoencoder.setup_anndata(adata, layer="counts", **kwargs)
        assert list(adata.obs.columns) == columns  # scvi-tools' _scvi_batch not written
    adata.obs["plate"] = adata.obs["plate"].astype("category")
    with pytest.raises(InputError, match="mixes text and other values"):
        ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="plate")
    adata.obs["plate"] = pd.Series([np.str_("a"), "b"] * 30, dtype=object, index=adata.obs_names)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="plate")  # all text
