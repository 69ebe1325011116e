"""Cell types from each SAILER benchmark latent by nearest neighbours (steadier than Leiden).

On sparse scATAC-seq the best-resolution Leiden NMI / ARI of one latent moves by several
hundredths between training seeds. This script reads the latents that ``bench_sailer.py``
saved and rewrites its table from them: the 5-fold cross-validated accuracy of a
15-nearest-neighbour classifier of cell types (scikit-learn; folds stratified by cell type, in
the data's order), per data set and method.

Run from the project root after ``python benchmarks/bench_sailer.py``::

    python benchmarks/sailer_knn_accuracy.py   # writes benchmarks/results/sailer_knn_accuracy.md
"""

from __future__ import annotations

import numpy as np
from _common import fmt, knn_accuracy
from bench_sailer import DATASETS, METHODS, RESULTS, latent_path, load


def main() -> None:
    lines = [
        "# Cell types by nearest neighbours (SAILER benchmark latents)",
        "",
        "Command: `python benchmarks/sailer_knn_accuracy.py` (reads the latents saved by "
        "`python benchmarks/bench_sailer.py`). Accuracy of a 15-nearest-neighbour classifier "
        "of cell types, 5-fold cross-validation stratified by cell type (mean ± sd over folds).",
        "",
        "| data set | method | kNN accuracy |",
        "|---|---|---|",
    ]
    for name in DATASETS:
        found = [m for m in METHODS if latent_path(name, m).exists()]
        if not found:
            continue
        labels = load(name).obs["cell_type"].astype(str).to_numpy()
        for method in found:
            latent = np.load(latent_path(name, method))
            scores = knn_accuracy(latent, labels)
            lines.append(
                f"| {name} | {method} | {fmt(float(scores.mean()))} ± {fmt(float(scores.std()))} |"
            )
            print(lines[-1], flush=True)
    out = RESULTS / "sailer_knn_accuracy.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
