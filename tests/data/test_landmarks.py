"""GCT/GCTX readers and the landmark helpers, on files and panels the tests write."""

from __future__ import annotations

import gzip

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest

import scgexp

GCT13 = (
    "#1.3\n3\t2\t2\t3\n"
    "id\tsymbol\ttype\ts1\ts2\n"
    "pert\t-666\t-666\tDMSO\tdrug\n"
    "dose\t-666\t-666\t0\t10\n"
    "cell\t-666\t-666\tA375\tMCF7\n"
    "g1\tA\tlm\t1\t2\n"
    "g2\tB\tinf\t3\t4\n"
    "g3\tC\tlm\t5\t6\n"
)


def test_gct13_with_several_metadata_rows_and_columns(tmp_path):
    path = tmp_path / "x.gct"
    path.write_text(GCT13)
    adata = scgexp.data.read_gct(path)
    assert list(adata.var_names) == ["g1", "g2", "g3"]
    assert list(adata.var.columns) == ["symbol", "type"]
    assert adata.var["symbol"].tolist() == ["A", "B", "C"]
    assert list(adata.obs_names) == ["s1", "s2"]
    assert list(adata.obs.columns) == ["pert", "dose", "cell"]
    assert adata.obs["cell"].tolist() == ["A375", "MCF7"]
    np.testing.assert_array_equal(adata.X, [[1, 3, 5], [2, 4, 6]])


def test_gct12_description_version_and_sample_count(tmp_path):
    path = tmp_path / "x.gct"
    path.write_text("#1.2\n2\t2\nName\tDescription\ts1\ts2\ng1\tfirst\t1\t2\ng2\tsecond\t3\t4\n")
    assert scgexp.data.read_gct(path).var["description"].tolist() == ["first", "second"]
    path.write_text("#1.2\n2\t3\nName\tDescription\ts1\ts2\ng1\tx\t1\t2\ng2\ty\t3\t4\n")
    with pytest.raises(scgexp.data.InputError, match="line 3 holds 4 fields, not the 5"):
        scgexp.data.read_gct(path)
    path.write_text("Name\tDescription\ts1\nx\ty\t1\n")
    with pytest.raises(scgexp.data.InputError, match="not a GCT file"):
        scgexp.data.read_gct(path)
    path.write_text(GCT13.replace("3\t2\t2\t3", "3\t2"))  # 1.3 needs 4 sizes
    with pytest.raises(scgexp.data.InputError, match="second line holds 4 sizes"):
        scgexp.data.read_gct(path)


def test_a_one_sample_gct_gives_a_writable_matrix(tmp_path, copy_on_write):
    # pandas 3 (copy-on-write) marked a one-column frame's values read-only: sc.pp.log1p failed
    path = tmp_path / "one.gct"
    path.write_text("#1.2\n2\t1\nName\tDescription\ts1\ng1\tfirst\t1\ng2\tsecond\t-666\n")
    with copy_on_write():
        adata = scgexp.data.read_gct(path)
    assert adata.X.flags.writeable
    np.testing.assert_array_equal(adata.X, [[1, np.nan]])
    adata.X[0, 0] = 5  # in place, as scanpy's preprocessing writes


def test_a_plain_gene_list_is_not_read_with_its_first_gene_as_header(tmp_path):
    path = tmp_path / "landmarks.txt"
    path.write_text("PSME1\nATF1\nRHEB\n")
    with pytest.raises(scgexp.data.InputError, match=r"header=None\)\[0\]"):
        scgexp.data.read_landmark_genes(path)
    assert pd.read_csv(path, header=None)[0].tolist() == ["PSME1", "ATF1", "RHEB"]


@pytest.mark.parametrize("n_samples", [3, 2])
def test_gctx_square_and_transposed(tmp_path, n_samples):
    values = np.arange(n_samples * 3, dtype=np.float32).reshape(n_samples, 3)
    for stored, name in ((values, "a"), (values.T, "b")):
        if name == "b" and n_samples == 3:
            continue  # a square matrix is read as stored (cmapPy orientation)
        path = tmp_path / f"{name}.gctx"
        with h5py.File(path, "w") as handle:
            handle["0/DATA/0/matrix"] = stored
            handle["0/META/ROW/id"] = np.array(["g1", "g2", "g3"], dtype="S")
            handle["0/META/COL/id"] = np.array([f"s{i}" for i in range(n_samples)], dtype="S")
        np.testing.assert_array_equal(scgexp.data.read_gctx(path).X, values)


def test_mark_landmarks_by_gene_column():
    adata = scgexp.data.simulate_bulk_expression(n_samples=10, n_landmarks=3, n_targets=5)
    adata.var["symbol"] = [f"S{i}" for i in range(adata.n_vars)]
    assert scgexp.data.mark_landmarks(adata, ["S1", "S4"], gene_column="symbol") == 2
    assert np.flatnonzero(adata.var["landmark"]).tolist() == [1, 4]


def test_select_landmarks_writes_panel_respects_n_and_ignores_gene_scale():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(100, 3)) @ rng.normal(size=(3, 30)) + 0.3 * rng.normal(
        size=(100, 30)
    )
    adata = anndata.AnnData(values.astype(np.float32))
    panel = scgexp.data.select_landmarks(adata, 3)
    assert adata.var_names[adata.var["landmark"]].tolist() == sorted(
        panel, key=adata.var_names.get_loc
    )
    assert len(scgexp.data.select_landmarks(adata, 3, n_components=10, key=None)) == 3
    scaled = adata.copy()
    scaled.X = scaled.X * np.geomspace(0.01, 100, 30).astype(np.float32)
    assert scgexp.data.select_landmarks(scaled, 3, key=None) == panel


def test_mark_landmarks_matches_integer_var_names_as_text():
    adata = anndata.AnnData(np.zeros((3, 4), dtype=np.float32))
    adata.var_names = pd.Index([1000, 1001, 1002, 1003])
    assert scgexp.data.mark_landmarks(adata, [1000, "1003"]) == 2
    assert adata.var["landmark"].tolist() == [True, False, False, True]


def test_gct12_rows_ending_in_a_tab_duplicate_ids_and_quotes_are_read_as_written(tmp_path):
    path = tmp_path / "x.gct"
    # Tabs ending the data lines only, a repeated sample id, quotes (GCT has no quoting) and
    # a line of tabs as Excel leaves: pandas' defaults shifted, renamed or merged these.
    path.write_text(
        '#1.2\n2\t3\nName\tDescription\ts1\ts2\ts1\ng1\t"ring" finger\t1\t2\t3\t\n'
        'g2\t"B\t4\t5\t-666\t\n\t\t\t\t\n'
    )
    with pytest.warns(UserWarning, match="Observation names are not unique"):
        adata = scgexp.data.read_gct(path)
    assert list(adata.obs_names) == ["s1", "s2", "s1"]
    assert list(adata.var_names) == ["g1", "g2"]
    assert adata.var["description"].tolist() == ['"ring" finger', '"B']
    np.testing.assert_array_equal(adata.X, [[1, 4], [2, 5], [3, np.nan]])  # -666: missing
    path.write_text("#1.2\n3\t2\nName\tDescription\ts1\ts2\ng1\tx\t1\t2\ng2\ty\t3\t4\n")
    with pytest.raises(scgexp.data.InputError, match="declares 3 genes on line 2 but holds 2"):
        scgexp.data.read_gct(path)


def test_missing_value_marker_in_metadata_is_nan(tmp_path):
    gct = tmp_path / "x.gct"
    gct.write_text(GCT13.replace("\t0\t10\n", "\t-666\t10\n").replace("g2\tB", "g2\t-666"))
    adata = scgexp.data.read_gct(gct)
    assert adata.obs["dose"].isna().tolist() == [True, False]
    assert adata.var["symbol"].isna().tolist() == [False, True, False]
    gctx = tmp_path / "x.gctx"
    with h5py.File(gctx, "w") as handle:
        handle["0/DATA/0/matrix"] = np.ones((2, 3), dtype=np.float32)
        handle["0/META/ROW/id"] = np.array(["g1", "g2", "g3"], dtype="S")
        handle["0/META/COL/id"] = np.array(["s1", "s2"], dtype="S")
        handle["0/META/COL/pert_time"] = np.array([24, -666], dtype=np.int32)
        handle["0/META/COL/pert_dose"] = np.array([-666.0, 10.0])
        handle["0/META/ROW/symbol"] = np.array(["A", "-666", "C"], dtype="S")
    adata = scgexp.data.read_gctx(gctx)
    np.testing.assert_array_equal(adata.obs["pert_time"], [24, np.nan])
    assert adata.obs["pert_dose"].isna().tolist() == [True, False]
    assert adata.var["symbol"].isna().tolist() == [False, True, False]


def test_gzipped_or_missing_gctx_says_what_to_do(tmp_path):
    gctx = tmp_path / "x.gctx"
    with h5py.File(gctx, "w") as handle:
        handle["0/DATA/0/matrix"] = np.ones((2, 3), dtype=np.float32)
    gzipped = tmp_path / "x.gctx.gz"
    gzipped.write_bytes(gzip.compress(gctx.read_bytes()))
    with pytest.raises(scgexp.data.InputError, match="gunzip it first"):
        scgexp.data.read_gctx(gzipped)
    with pytest.raises(scgexp.data.InputError, match="read it with read_gctx after gunzipping"):
        scgexp.data.read_gct(gzipped)
    with pytest.raises(FileNotFoundError, match="No file"):
        scgexp.data.read_gctx(tmp_path / "absent.gctx")


def test_select_landmarks_marks_only_the_chosen_among_repeated_names():
    values = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32)
    adata = anndata.AnnData(values)
    adata.var_names = [f"g{i % 6}" for i in range(12)]
    assert len(scgexp.data.select_landmarks(adata, 3)) == 3
    assert adata.var["landmark"].sum() == 3


def test_landmark_rows_without_the_identifier_are_left_out_with_a_warning(tmp_path):
    path = tmp_path / "geneinfo_beta.txt"
    path.write_text(
        "gene_id\tgene_symbol\tensembl_id\tfeature_space\n"
        "5720\tPSME1\tENSG00000092010\tlandmark\n466\tATF1\t\tlandmark\n"
        "6009\tRHEB\tENSG00000106615\tinferred\n"
    )
    assert scgexp.data.read_landmark_genes(path) == ["PSME1", "ATF1"]
    with pytest.warns(UserWarning, match="1 of 2 landmark rows have no 'ensembl_id'"):
        assert scgexp.data.read_landmark_genes(path, "ensembl_id") == ["ENSG00000092010"]


def test_gene_info_with_a_capitalised_column_or_commas(tmp_path):
    path = tmp_path / "genes.txt"
    for flag in ("pr_is_lm", "PR_IS_LM"):
        path.write_text(f"Symbol\t{flag}\nPSME1\t1\nRHEB\t0\n")
        assert scgexp.data.read_landmark_genes(path) == ["PSME1"]
    path.write_text("gene_symbol,feature_space\nPSME1,landmark\n")
    with pytest.raises(scgexp.data.InputError, match="looks comma-separated"):
        scgexp.data.read_landmark_genes(path)


def test_gct_blank_lines_of_any_width_encodings_and_an_empty_body(tmp_path):
    path = tmp_path / "x.gct"
    # A byte-order mark, a line of more tabs than fields (Excel), a non-ASCII description.
    text = "\ufeff#1.2\n1\t2\nName\tDescription\ts1\ts2\n\t\t\t\t\t\ng1\tρ subunit\t1\t2\n"
    path.write_bytes(text.encode("utf-8"))
    adata = scgexp.data.read_gct(path)
    assert adata.var["description"].tolist() == ["ρ subunit"]
    np.testing.assert_array_equal(adata.X, [[1], [2]])
    path.write_text("#1.2\n2\t2\n")
    with pytest.raises(scgexp.data.InputError, match="ends after its sizes"):
        scgexp.data.read_gct(path)


def test_select_landmarks_leaves_out_constant_genes():
    values = np.random.default_rng(0).normal(size=(5000, 40))
    values[:, [5, 7]] = 0.1, 1 / 3  # constant: a rounding residue is no axis of variation
    panel = scgexp.data.select_landmarks(anndata.AnnData(values), 10, key=None)
    assert not {"5", "7"} & set(panel)


def test_read_landmark_genes_from_gct_and_gctx(tmp_path):
    """LINCS Level 3 files carry pr_is_lm in their row metadata: a number in GCTX, text in GCT."""
    ids, symbols, is_landmark = ["5720", "466", "6009"], ["PSME1", "ATF1", "RHEB"], [1, 0, 1]
    gctx = tmp_path / "level3.gctx"
    with h5py.File(gctx, "w") as handle:
        handle["0/DATA/0/matrix"] = np.zeros((2, 3), dtype=np.float32)
        handle["0/META/ROW/id"] = np.array(ids, dtype="S")
        handle["0/META/ROW/pr_gene_symbol"] = np.array(symbols, dtype="S")
        handle["0/META/ROW/pr_is_lm"] = np.array(is_landmark, dtype=np.int64)
        handle["0/META/COL/id"] = np.array(["s1", "s2"], dtype="S")
    rows = [f"{i}\t{s}\t{m}\t0\t0" for i, s, m in zip(ids, symbols, is_landmark, strict=True)]
    gct_text = "#1.3\n3\t2\t2\t0\nid\tpr_gene_symbol\tpr_is_lm\ts1\ts2\n" + "\n".join(rows)
    gct = tmp_path / "level3.gct"
    gct.write_text(gct_text)
    gzipped = tmp_path / "level3.gct.gz"
    gzipped.write_bytes(gzip.compress(gct_text.encode()))
    for path in (gctx, gct, gzipped):
        assert scgexp.data.read_landmark_genes(path) == ["PSME1", "RHEB"]
        assert scgexp.data.read_landmark_genes(path, id_column="id") == ["5720", "6009"]
    # Without a landmark column every row is a landmark; GCT 1.2's identifiers are the rows'.
    plain = tmp_path / "plain.gct"
    plain.write_text("#1.2\n2\t1\nName\tDescription\ts1\nG1\tfirst\t1\nG2\tsecond\t2\n")
    assert scgexp.data.read_landmark_genes(plain) == ["G1", "G2"]


def test_select_landmarks_warns_when_it_replaces_a_marking(warnings_as_errors):
    adata = scgexp.data.simulate_bulk_expression(n_samples=60, n_landmarks=5, n_targets=25)
    before = adata.var["landmark"].copy()
    with pytest.warns(UserWarning, match=r"var\['landmark'\] held another marking"):
        panel = scgexp.data.select_landmarks(adata, 5)
    assert not adata.var["landmark"].equals(before)
    with warnings_as_errors():
        assert scgexp.data.select_landmarks(adata, 5) == panel  # the same marking again
        scgexp.data.select_landmarks(adata, 5, key="designed")


def test_landmark_tables_from_open_files_bom_gct_and_gctx_ids_with_missing_values(tmp_path):
    import io

    table = io.StringIO("pr_gene_symbol\tpr_is_lm\nA\t1\nB\t0\n")  # pandas reads these
    assert scgexp.data.read_landmark_genes(table) == ["A"]
    bom = tmp_path / "excel.gct"
    bom.write_bytes(b"\xef\xbb\xbf#1.2\n1\t1\nName\tDescription\ts1\nG1\tx\t1\n")
    assert scgexp.data.read_landmark_genes(bom) == ["G1"]
    gctx = tmp_path / "ids.gctx"
    with h5py.File(gctx, "w") as handle:
        handle["0/DATA/0/matrix"] = np.zeros((1, 3), dtype=np.float32)
        handle["0/META/ROW/id"] = np.array(["r1", "r2", "r3"], dtype="S")
        handle["0/META/ROW/pr_gene_id"] = np.array([5720, -666, 466])  # -666: missing
        handle["0/META/ROW/ID"] = np.array(["m1", "m2", "m3"], dtype="S")  # metadata "ID"
        handle["0/META/COL/id"] = np.array(["s1"], dtype="S")
    with pytest.warns(UserWarning, match="1 of 3 landmark rows have no 'pr_gene_id'"):
        assert scgexp.data.read_landmark_genes(gctx) == ["5720", "466"]  # not "5720.0"
    assert scgexp.data.read_landmark_genes(gctx, id_column="rid") == ["r1", "r2", "r3"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_landmarks": True}, "n_landmarks must be a whole number"),
        ({"n_landmarks": 3, "n_components": -1}, "n_components must be a positive whole number"),
        ({"n_landmarks": 3, "n_components": 1.5}, "n_components must be a positive whole number"),
    ],
)
def test_select_landmarks_refuses_sizes_that_are_not_whole_numbers(arguments, message):
    adata = scgexp.data.simulate_bulk_expression(n_samples=30, n_landmarks=5, n_targets=10)
    with pytest.raises(scgexp.data.InputError, match=message):
        scgexp.data.select_landmarks(adata, key=None, **arguments)


def test_gct_and_gene_info_with_latin1_bytes_are_read(tmp_path):
    gct = tmp_path / "latin1.gct"
    gct.write_bytes(b"#1.2\n1\t1\nName\tDescription\tS1\ng1\t\xb5 subunit\t1\n")
    adata = scgexp.data.read_gct(gct)
    assert adata.var["description"].tolist() == ["\ufffd subunit"]
    np.testing.assert_array_equal(adata.X, [[1]])
    table = tmp_path / "gene_info.txt"
    table.write_bytes(b"pr_gene_symbol\tpr_gene_title\tpr_is_lm\nPSME1\t\xb5 subunit\t1\n")
    assert scgexp.data.read_landmark_genes(table) == ["PSME1"]


@pytest.mark.parametrize("kind", ["row", "column"])
def test_gct_with_a_repeated_metadata_name_is_refused(tmp_path, kind):
    path = tmp_path / "x.gct"
    twice = ("\ttype\t", "\tsymbol\t") if kind == "row" else ("cell", "dose")
    text = GCT13.replace(*twice)
    path.write_text(text)
    with pytest.raises(scgexp.data.InputError, match=rf"{kind} metadata field\(s\) \['"):
        scgexp.data.read_gct(path)


def test_mark_landmarks_keeps_other_columns():
    adata = anndata.AnnData(
        np.ones((2, 3)), var=pd.DataFrame({"symbol": ["A", "B", "C"]}, index=["e1", "e2", "e3"])
    )
    with pytest.raises(scgexp.data.InputError, match="overwrite the gene_column"):
        scgexp.data.mark_landmarks(adata, ["A"], key="symbol", gene_column="symbol")
    with pytest.raises(scgexp.data.InputError, match=r"var\['symbol'\] holds other data"):
        scgexp.data.mark_landmarks(adata, ["e1"], key="symbol")
    assert adata.var["symbol"].tolist() == ["A", "B", "C"]
    scgexp.data.mark_landmarks(adata, ["A"], gene_column="symbol")
    scgexp.data.mark_landmarks(adata, ["B"], gene_column="symbol")  # a marking is re-marked
    assert adata.var["landmark"].tolist() == [False, True, False]


def test_select_landmarks_refuses_ambiguous_names_too_few_cells_and_constant_data():
    adata = scgexp.data.simulate_bulk_expression(n_samples=60, n_landmarks=10, n_targets=30)
    repeated = adata.copy()
    repeated.var_names = ["g"] * repeated.n_vars
    with pytest.raises(scgexp.data.InputError, match="pass key= to mark the panel by position"):
        scgexp.data.select_landmarks(repeated, 5, key=None)
    with pytest.raises(scgexp.data.InputError, match="2 or more cells or samples, not 1"):
        scgexp.data.select_landmarks(adata[:1].copy(), 5, key=None)
    with pytest.raises(scgexp.data.InputError, match="No gene varies"):
        scgexp.data.select_landmarks(anndata.AnnData(np.ones((10, 6))), 2, key=None)
    # Two genes vary: a panel of 3 holds those two, never a constant gene.
    values = np.ones((10, 6))
    values[:, [1, 4]] = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.warns(UserWarning, match="Only 2 genes vary"):
        panel = scgexp.data.select_landmarks(anndata.AnnData(values), 3, key=None)
    assert sorted(panel) == ["1", "4"]


def test_gct_genes_keep_the_file_order_with_their_values(tmp_path):
    path = tmp_path / "unsorted.gct"
    path.write_text(
        "#1.3\n3\t2\t1\t0\nid\tsymbol\ts1\ts2\ng3\tC\t5\t6\ng1\tA\t1\t2\ng2\tB\t3\t4\n"
    )
    adata = scgexp.data.read_gct(path)
    assert list(adata.var_names) == ["g3", "g1", "g2"]
    assert adata.var["symbol"].tolist() == ["C", "A", "B"]
    np.testing.assert_array_equal(adata.X, [[5, 1, 3], [6, 2, 4]])
    np.testing.assert_array_equal(adata[:, "g1"].X.ravel(), [1, 2])


def test_gene_info_flag_keeps_only_the_landmarks(tmp_path):
    path = tmp_path / "gene_info.txt"
    path.write_text("pr_gene_symbol\tpr_is_lmark\nPSME1\tY\nRHEB\tN\nATF1\ty\n")
    assert scgexp.data.read_landmark_genes(path) == ["PSME1", "ATF1"]
