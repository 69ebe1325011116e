"""What DGEX's "other units" warning measures, on same-unit and other-unit CellBench data.

``DGEX`` warns when the median landmark's mean in new data lies more than 2 training standard
deviations from its training mean. This script prints that measure for data in the training
units (log1p of counts per 10,000: plate p3 as a whole, single cells, each cell line) and in
other units (raw counts, per million, unlogged, L1000 level-3 profiles), with the training
statistics of the benchmark's CellBench model (plates p1 + p2). Needs ``../shared/data``.

Run from the project root::

    python benchmarks/dgex_units_check.py
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
from bench_dgex import DATA, load_cellbench


def main() -> None:
    adata, landmarks = load_cellbench()
    is_landmark = adata.var["landmark"].to_numpy()
    names = adata.var_names[is_landmark]
    train = adata[adata.obs["batch"] != "p3"].X[:, is_landmark]
    mean, scale = train.mean(0), train.std(0) + 1e-3  # as DGEX standardises

    def shift(values: np.ndarray, columns=slice(None)) -> float:
        return float(np.median(np.abs(values.mean(0) - mean[columns]) / scale[columns]))

    test = adata.obs["batch"] == "p3"
    print(f"p3, all cells: {shift(adata[test].X[:, is_landmark]):.2f}")
    cells = [shift(adata[test].X[i : i + 1, is_landmark]) for i in range(test.sum())]
    print(f"p3, single cells: {min(cells):.2f}-{max(cells):.2f}")
    for line in adata.obs["cell_line"].unique():
        rows = test & (adata.obs["cell_line"] == line)
        print(f"p3, {line}: {shift(adata[rows].X[:, is_landmark]):.2f}")
    raw = ad.read_h5ad(DATA / "scrna" / "cellbench_5celllines_celseq2_3plates.h5ad")
    raw = raw[raw.obs["batch"] == "p3"][:, names].copy()
    print(f"raw counts: {shift(raw.X.toarray()):.2f}")
    per_million = raw.copy()
    sc.pp.normalize_total(per_million, target_sum=1e6)
    sc.pp.log1p(per_million)
    print(f"log1p per million: {shift(per_million.X.toarray()):.2f}")
    unlogged = raw.copy()
    sc.pp.normalize_total(unlogged, target_sum=1e4)
    print(f"per 10,000, not logged: {shift(unlogged.X.toarray()):.2f}")
    l1000 = ad.read_h5ad(DATA / "dgex" / "cmap_l1000_level3_A375_377x978.h5ad")
    symbol_to_ensembl = dict(zip(landmarks["symbol"], landmarks["ensembl"], strict=True))
    l1000 = l1000[:, l1000.var_names.isin(symbol_to_ensembl)].copy()
    l1000.var_names = [symbol_to_ensembl[s] for s in l1000.var_names]
    positions = l1000.var_names.get_indexer(names)
    found = positions >= 0
    print(f"L1000 level 3: {shift(np.asarray(l1000.X)[:, positions[found]], found):.2f}")


if __name__ == "__main__":
    main()
