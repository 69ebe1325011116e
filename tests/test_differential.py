"""Differential expression shared by the models: groups checked, count statistics per group."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest

from scgexp._compat import scrna_raw_counts_properties
from scgexp._differential import accessibility_table, draw_indices
from scgexp.data import InputError, simulate_scrna
from scgexp.model import ZINBAutoencoder

STATISTICS = [
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
]


@pytest.fixture(scope="module")
def trained():
    adata = simulate_scrna(n_cells=200, n_genes=30, seed=0)
    adata.X = adata.layers["counts"]  # backed files keep X on disk (layers are read)
    ZINBAutoencoder.setup_anndata(adata)
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model, adata


def _de(model, adata, **kwargs):
    return model.differential_expression(adata, groupby="cell_type", silent=True, **kwargs)


@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_count_statistics_are_scvi_tools_on_backed_data_too(trained, tmp_path, layout):
    model, adata = trained
    data = adata.copy()
    if layout == "dense":
        data.X = data.X.toarray()
    first = data.obs["cell_type"].cat.categories[0]
    in_group = (data.obs["cell_type"] == first).to_numpy()
    reference = data.copy()  # scvi-tools' function writes into its obs
    ZINBAutoencoder.setup_anndata(reference)
    manager = ZINBAutoencoder._get_most_recent_anndata_manager(reference)
    expected = scrna_raw_counts_properties(manager, in_group, ~in_group)
    data.write_h5ad(tmp_path / "a.h5ad")
    # scvi-tools' statistics sum the whole matrix, which backed data cannot.
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    for source in (data, backed):
        table = _de(model, source, group1=first).loc[data.var_names]
        for name in STATISTICS:
            np.testing.assert_allclose(table[name], expected[name], rtol=1e-6, err_msg=name)
        assert "_scvi_raw_norm_scaling" not in source.obs  # scvi-tools caches it there


def test_groups_without_cells_are_skipped_or_refused_by_name(trained):
    model, adata = trained
    data = adata.copy()  # an unused category, as a MuData subset keeps them
    data.obs["cell_type"] = data.obs["cell_type"].cat.add_categories(["unused"])
    table = _de(model, data)  # scvi-tools: "a cannot be empty"
    assert set(table["group1"]) == set(adata.obs["cell_type"].cat.categories)
    with pytest.raises(InputError, match=r"No cell has obs\['cell_type'\] == 'unused'; groups"):
        _de(model, data, group1="unused")
    first = data.obs["cell_type"].cat.categories[0]
    with pytest.raises(InputError, match="'unused'"):
        _de(model, data, group1=first, group2="unused")
    with pytest.raises(InputError, match="also in group1: a group compared with itself"):
        _de(model, data, group1=first, group2=first)
    with pytest.raises(InputError, match="idx1 selects no cells"):
        model.differential_expression(data, idx1=np.zeros(data.n_obs, bool), silent=True)
    with pytest.raises(InputError, match="idx2 is a boolean mask of length 5, but the data"):
        model.differential_expression(data, idx1=[0, 1], idx2=np.ones(5, bool), silent=True)
    for every_cell in (np.ones(data.n_obs, bool), np.arange(data.n_obs)):
        with pytest.raises(InputError, match="idx1 selects every cell"):
            model.differential_expression(data, idx1=every_cell, silent=True)
    with pytest.raises(InputError, match="'tissue' is not a column of obs"):
        model.differential_expression(data, groupby="tissue", silent=True)
    data.obs["one"] = "all"
    with pytest.raises(InputError, match="no others to compare with"):
        model.differential_expression(data, groupby="one", group1="all", silent=True)
    with pytest.raises(InputError, match="cells in 1 group only"):
        model.differential_expression(data, groupby="one", silent=True)
    assert list(data.obs.columns) == [*adata.obs.columns, "one"]  # nothing else written


def test_each_group_against_group2_leaves_group2_out(trained):
    model, adata = trained
    categories = list(adata.obs["cell_type"].cat.categories)
    table = _de(model, adata, group2=categories[0])
    assert set(table["comparison"]) == {f"{g} vs {categories[0]}" for g in categories[1:]}
    with pytest.raises(InputError, match=r"No cell has obs\['cell_type'\] == 'unused'"):
        _de(model, adata, group2="unused")


def test_overlapping_or_queried_idx_groups(trained):
    model, adata = trained
    types = adata.obs["cell_type"].to_numpy()
    first, second = adata.obs["cell_type"].cat.categories[:2]
    in_first, in_second = np.flatnonzero(types == first), np.flatnonzero(types == second)
    for idx1 in (in_second, np.r_[in_first, in_second]):  # scvi-tools: idx2 wins shared cells
        with pytest.raises(InputError, match=f"idx1 and idx2 share {len(in_second)} cells"):
            model.differential_expression(adata, idx1=idx1, idx2=in_second, silent=True)
    with pytest.raises(InputError, match="idx1 selects every cell"):
        model.differential_expression(adata, idx1="cell_type == cell_type", silent=True)
    with pytest.raises(InputError, match="idx2 selects no cells"):
        model.differential_expression(adata, idx1=in_first, idx2="cell_type == 'x'", silent=True)
    query = model.differential_expression(
        adata, idx1=f"cell_type == '{first}'", idx2=f"cell_type == '{second}'", silent=True
    )
    positions = model.differential_expression(adata, idx1=in_first, idx2=in_second, silent=True)
    pd.testing.assert_series_equal(query["raw_mean1"], positions["raw_mean1"])


def test_repeated_feature_names_keep_their_rows():
    """Symbols from read_10x_h5 repeat; scvi-tools' FDR step failed on them in "change" mode."""
    import scvi

    def fit_and_test(adata):
        scvi.settings.seed = 0
        ZINBAutoencoder.setup_anndata(adata)
        model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
        model.train(max_epochs=2, enable_progress_bar=False)
        scvi.settings.seed = 0
        return model, _de(model, adata, group1="type_0", mode="change")

    unique = simulate_scrna(n_cells=200, n_genes=30, seed=0)
    repeated = unique.copy()
    names = np.array([f"gene_{i % 7}" for i in range(unique.n_vars)])
    repeated.var_names = names
    (_, expected), (model, table) = fit_and_test(unique), fit_and_test(repeated)
    assert list(table.index) == list(names[unique.var_names.get_indexer(expected.index)])
    np.testing.assert_array_equal(table.to_numpy(), expected.to_numpy())
    # Picking genes by a repeated name is ambiguous: refused with the fix, not pandas' error.
    with pytest.raises(InputError, match="var_names_make_unique"):
        model.get_normalized_expression(gene_list=["gene_1"])


def test_accessibility_effect_is_group2_minus_group1_as_peakvi():
    result = pd.DataFrame(
        {
            "proba_de": [0.9, 0.1],
            "is_de_fdr_0.05": [True, False],
            "bayes_factor": [2.0, -2.0],
            "scale1": [0.1, 0.5],
            "scale2": [0.4, 0.3],
            "emp_mean1": [0.0, 0.6],
            "emp_mean2": [0.5, 0.2],
        }
    )
    table = accessibility_table(result, mode="change", fdr_target=0.05)
    np.testing.assert_allclose(table["effect_size"], [0.3, -0.2])
    np.testing.assert_allclose(table["emp_effect"], [0.5, -0.4])
    assert table["is_da_fdr"].tolist() == [True, False]


def test_idx1_is_group1_and_idx2_is_group2(trained):
    """Swapped, every fold change would flip: the count means say which group is which."""
    model, adata = trained
    types = adata.obs["cell_type"].to_numpy()
    first, second = adata.obs["cell_type"].cat.categories[:2]
    idx1, idx2 = np.flatnonzero(types == first), np.flatnonzero(types == second)
    table = model.differential_expression(adata, idx1=idx1, idx2=idx2, silent=True)
    table = table.loc[adata.var_names]
    counts = adata.X.toarray()
    np.testing.assert_allclose(table["raw_mean1"], counts[idx1].mean(0), rtol=1e-6)
    np.testing.assert_allclose(table["raw_mean2"], counts[idx2].mean(0), rtol=1e-6)
    named = _de(model, adata, group1=first, group2=second).loc[adata.var_names]
    np.testing.assert_allclose(table["scale1"], named["scale1"], rtol=1e-5)


def test_fdr_target_is_the_threshold_used(trained):
    model, adata = trained
    first = adata.obs["cell_type"].cat.categories[0]
    table = _de(model, adata, group1=first, mode="change", fdr_target=0.2)
    assert "is_de_fdr_0.2" in table.columns
    assert "is_de_fdr_0.05" not in table.columns
    # Posterior FDR control: the most probable genes whose mean (1 - proba_de) stays <= 0.2.
    ranked = table.sort_values("proba_de", ascending=False)
    fdr = (1 - ranked["proba_de"]).cumsum() / np.arange(1, len(ranked) + 1)
    assert int(table["is_de_fdr_0.2"].sum()) == int((fdr <= 0.2).sum())


def test_de_draws_cells_from_the_whole_group_not_its_first_cells():
    """A group larger than n_samples_overall (scvi-tools: 5000) is sampled at random."""
    group = np.arange(20_000) * 3  # a large group's cell positions, in obs order
    drawn = draw_indices(group, 5000, np.random.default_rng(0))
    assert len(drawn) == 5000
    assert np.isin(drawn, group).all()
    assert (drawn > group[5000]).mean() > 0.5  # about 3/4 of the draws lie past the first 5000
    assert draw_indices(group, None, np.random.default_rng(0)) is group
