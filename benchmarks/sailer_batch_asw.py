"""How much of each latent's batch silhouette gap is batch, and how much is the metric's ceiling?

scib's batch silhouette scores each cell by 1 - |s|, where ``s`` is the silhouette of its batch
label among the cells of its own type. Even a perfectly mixed latent does not score 1: with
many batches and few cells per batch in a type, a cell's nearest other batch is often closer
than its own batch mates (``s < 0``), more so when a type's cells vary along few directions.
This script reads the latents that ``bench_sailer.py`` saved and reports, per data set and
method, the batch silhouette with the real batch labels and with the labels shuffled *within
each cell type* (perfect mixing by construction; mean of 5 shuffles): the metric's ceiling for
that latent. The gap between the two is what batch structure costs. It also reports how many
directions the cells of a type spread along (participation ratio of the within-type covariance
eigenvalues, averaged over cells), which sets the ceiling.

Run from the project root after ``python benchmarks/bench_sailer.py``::

    python benchmarks/sailer_batch_asw.py   # writes benchmarks/results/sailer_batch_asw.md

``--methods NAME ...`` recomputes only those methods' rows (from the latents on disk) and keeps
the other methods' rows as they were.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import fmt, previous_rows
from bench_sailer import DATASETS, METHODS, RESULTS, SEED, latent_path, load

N_SHUFFLES = 5


def shuffled_within(labels: np.ndarray, batches: np.ndarray, rng) -> np.ndarray:
    """Batch labels permuted among the cells of each type (type sizes per batch kept)."""
    shuffled = batches.copy()
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        shuffled[idx] = rng.permutation(batches[idx])
    return shuffled


def within_type_dimensions(latent: np.ndarray, labels: np.ndarray) -> float:
    """Participation ratio (sum λ)² / sum λ² of each type's covariance, averaged over cells."""
    total = 0.0
    for label in np.unique(labels):
        cells = latent[labels == label]
        if len(cells) < 3:
            continue
        eigenvalues = np.clip(np.linalg.eigvalsh(np.cov(cells.T)), 0, None)
        total += len(cells) * eigenvalues.sum() ** 2 / (eigenvalues**2).sum()
    return total / len(labels)


def main() -> None:
    import scib_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    methods = parser.parse_args().methods
    out = RESULTS / "sailer_batch_asw.md"
    kept = previous_rows(out)  # rows without a latent on disk (not rerun) stay as they were
    rows = []
    for name in DATASETS:
        adata = None
        for method in methods:
            path = latent_path(name, method)
            if not path.exists():
                if (name, method) in kept:
                    print(f"No latent for {name} / {method}: its earlier row is kept.")
                continue
            adata = load(name) if adata is None else adata
            labels = adata.obs["cell_type"].astype(str).to_numpy()
            batches = adata.obs["batch"].astype(str).to_numpy()
            latent = np.load(path).astype(np.float32)
            rng = np.random.default_rng(SEED)
            shuffles = [shuffled_within(labels, batches, rng) for _ in range(N_SHUFFLES)]
            ceiling = [scib_metrics.silhouette_batch(latent, labels, b) for b in shuffles]
            real = float(scib_metrics.silhouette_batch(latent, labels, batches))
            row = {
                "dataset": name,
                "method": method,
                "real": real,
                "ceiling": float(np.mean(ceiling)),
                "ceiling_sd": float(np.std(ceiling)),
                "dims": within_type_dimensions(latent, labels),
                "n_latent": latent.shape[1],
            }
            rows.append(row)
            print(row, flush=True)
    lines = [
        "# Batch silhouette against its ceiling (SAILER benchmark latents)",
        "",
        "Command: `python benchmarks/sailer_batch_asw.py` (reads the latents saved by "
        "`python benchmarks/bench_sailer.py`).",
        "",
        "Ceiling: scib's batch silhouette with batch labels shuffled within each cell type "
        f"(perfect mixing; mean ± sd of {N_SHUFFLES} shuffles). Gap = ceiling − real: what batch "
        "structure costs. Within-type dimensions: participation ratio of each type's covariance, "
        "averaged over cells.",
        "",
        "| data set | method | batch ASW | ceiling | gap | within-type dimensions | latent size |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kept[row["dataset"], row["method"]] = (
            f"| {row['dataset']} | {row['method']} | {fmt(row['real'])} | "
            f"{fmt(row['ceiling'])} ± {fmt(row['ceiling_sd'])} | "
            f"{fmt(row['ceiling'] - row['real'])} | {fmt(row['dims'], 1)} | {row['n_latent']} |"
        )
    lines += [kept[key] for key in ((n, m) for n in DATASETS for m in METHODS) if key in kept]
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
