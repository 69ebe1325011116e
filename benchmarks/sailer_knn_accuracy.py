"""What nearest neighbours in each SAILER benchmark latent predict: cell type, depth, batch.

On sparse scATAC-seq the best-resolution Leiden NMI / ARI of one latent moves by several
hundredths between training seeds, and the mutual information with depth is a mean over single
dimensions. This script reads the latents that ``bench_sailer.py`` saved and rewrites its table
from them, per data set and method: the 5-fold cross-validated accuracy of a 15-nearest-neighbour
classifier of cell types (scikit-learn; folds stratified by cell type, in the data's order), and
two measures of the whole latent (``bench_sailer.whole_latent_metrics``): the cross-validated
R² of log depth predicted by 15 nearest neighbours (0 or below: no depth a neighbour can use)
and the balanced accuracy of the batch predicted the same way (chance: 1 / number of batches).

Run from the project root after ``python benchmarks/bench_sailer.py``::

    python benchmarks/sailer_knn_accuracy.py   # writes benchmarks/results/sailer_knn_accuracy.md
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import fmt, knn_accuracy, previous_rows
from bench_sailer import DATASETS, METHODS, RESULTS, latent_path, load, whole_latent_metrics


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    out = RESULTS / "sailer_knn_accuracy.md"
    kept = previous_rows(out)  # rows without a latent on disk (not rerun) stay as they were
    lines = [
        "# Cell types, depth and batch by nearest neighbours (SAILER benchmark latents)",
        "",
        "Command: `python benchmarks/sailer_knn_accuracy.py` (reads the latents saved by "
        "`python benchmarks/bench_sailer.py`). 15-nearest-neighbour predictors, 5-fold "
        "cross-validation: accuracy of cell types (folds stratified by cell type; mean ± sd "
        "over folds), R² of log depth (0 or below: no depth a neighbour can use) and balanced "
        "accuracy of the batch (chance: 1 / number of batches).",
        "",
        "| data set | method | kNN accuracy | depth R² | batch balanced accuracy (chance) |",
        "|---|---|---|---|---|",
    ]
    for name in DATASETS:
        found = [m for m in METHODS if latent_path(name, m).exists()]
        for method in set(METHODS) - set(found):
            if (name, method) in kept:
                print(f"No latent for {name} / {method}: its earlier row is kept.")
        if not found:
            continue
        adata = load(name)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        chance = 1 / adata.obs["batch"].nunique()
        for method in found:
            latent = np.load(latent_path(name, method))
            scores = knn_accuracy(latent, labels)
            whole = whole_latent_metrics(adata, latent)
            kept[name, method] = (
                f"| {name} | {method} | {fmt(float(scores.mean()))} ± {fmt(float(scores.std()))} "
                f"| {fmt(whole['depth_r2'])} | {fmt(whole['batch_accuracy'])} ({fmt(chance)}) |"
            )
            print(kept[name, method], flush=True)
    lines += [kept[key] for key in ((n, m) for n in DATASETS for m in METHODS) if key in kept]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
