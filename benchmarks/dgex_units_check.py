"""What DGEX's "other units" warning measures, on same-unit and other-unit CellBench data.

``DGEX`` warns when the median landmark's mean in new data lies more than 2 training standard
deviations from its training mean ("shift"), or when more than 5% of the values lie over a
standard deviation outside the training range ("outside"). This script prints both for data
in the training units (log1p of counts per 10,000: plate p3, some of its cells, each cell line)
and in other units (raw counts, per million, unlogged, L1000 level-3 profiles), with the
training statistics of the benchmark's CellBench model (plates p1 + p2). Needs
``../shared/data``.

Run from the project root (writes ``results/dgex_units_check.md``)::

    python benchmarks/dgex_units_check.py
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import scanpy as sc
from _common import shared_file
from bench_dgex import DATA, RESULTS, load_cellbench


def main() -> None:
    lines = []
    adata, landmarks = load_cellbench()
    is_landmark = adata.var["landmark"].to_numpy()
    names = adata.var_names[is_landmark]
    train = adata[adata.obs["batch"] != "p3"].X[:, is_landmark]
    mean, scale = train.mean(0), train.std(0) + 1e-3  # as DGEX standardises
    low, high = train.min(0) - scale, train.max(0) + scale

    def shift(values: np.ndarray, columns=slice(None)) -> str:
        median = np.median(np.abs(values.mean(0) - mean[columns]) / scale[columns])
        outside = np.mean((values > high[columns]) | (values < low[columns]))
        return f"shift {median:.2f}, outside {outside:.1%}"

    test = adata.obs["batch"] == "p3"
    lines.append(f"p3, all cells: {shift(adata[test].X[:, is_landmark])}")
    for i in range(0, test.sum(), 50):
        lines.append(f"p3, cell {i}: {shift(adata[test].X[i : i + 1, is_landmark])}")
    for line in adata.obs["cell_line"].unique():
        rows = test & (adata.obs["cell_line"] == line)
        lines.append(f"p3, {line}: {shift(adata[rows].X[:, is_landmark])}")
    raw = ad.read_h5ad(shared_file(DATA / "scrna" / "cellbench_5celllines_celseq2_3plates.h5ad"))
    raw = raw[raw.obs["batch"] == "p3"][:, names].copy()
    lines.append(f"raw counts: {shift(raw.X.toarray())}")
    for i in range(0, raw.n_obs, 50):
        lines.append(f"raw counts, cell {i}: {shift(raw.X[i : i + 1].toarray())}")
    per_million = raw.copy()
    sc.pp.normalize_total(per_million, target_sum=1e6)
    sc.pp.log1p(per_million)
    lines.append(f"log1p per million: {shift(per_million.X.toarray())}")
    unlogged = raw.copy()
    sc.pp.normalize_total(unlogged, target_sum=1e4)
    lines.append(f"per 10,000, not logged: {shift(unlogged.X.toarray())}")
    l1000 = ad.read_h5ad(shared_file(DATA / "dgex" / "cmap_l1000_level3_A375_377x978.h5ad"))
    symbol_to_ensembl = dict(zip(landmarks["symbol"], landmarks["ensembl"], strict=True))
    l1000 = l1000[:, l1000.var_names.isin(symbol_to_ensembl)].copy()
    l1000.var_names = [symbol_to_ensembl[s] for s in l1000.var_names]
    positions = l1000.var_names.get_indexer(names)
    found = positions >= 0
    lines.append(f"L1000 level 3: {shift(np.asarray(l1000.X)[:, positions[found]], found)}")
    text = "\n".join(
        [
            "# DGEX: the other-units warning's measures",
            "",
            "Command: `python benchmarks/dgex_units_check.py`.",
            "",
            "```",
            *lines,
            "```",
            "",
        ]
    )
    (RESULTS / "dgex_units_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
