"""How much a query's missing genes cost: ZINBAutoencoder after ``prepare_query_anndata``.

Another panel often lacks some of the reference's genes; ``prepare_query_anndata`` adds them as
zeros (not detected). On the RNA simulator (3,000 cells × 800 genes, 3 batches), a model is
trained on two batches; the third, as the query, loses a random share of its genes, is prepared
and embedded (cells given a known batch: the encoder does not read it). Reported against the
complete query's embedding: the median over latent dimensions of the correlation, the share of
each cell's 15 nearest neighbours that stay neighbours, and the share of them of the cell's
own type (cell-type purity; the complete query's is the ceiling).

Run from the project root (about 30 seconds on one CPU thread)::

    python benchmarks/query_missing_features.py   # writes results/query_missing_features.md
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from _common import environment_line, versions

RESULTS = Path(__file__).parent / "results"
SHARES = (0.05, 0.2, 0.5)
N_NEIGHBOURS = 15


def neighbours(latent: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=N_NEIGHBOURS + 1).fit(latent)
    return search.kneighbors(latent, return_distance=False)[:, 1:]  # without the cell itself


def main() -> None:
    import scvi
    import torch
    from scipy.stats import pearsonr

    from scgexp.data import simulate_scrna
    from scgexp.model import ZINBAutoencoder

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    scvi.settings.seed = 0
    data = simulate_scrna(n_cells=3000, n_genes=800, n_batches=3, seed=0)
    in_query = (data.obs["batch"] == "batch_2").to_numpy()
    reference, query = data[~in_query].copy(), data[in_query].copy()
    reference.obs["batch"] = reference.obs["batch"].cat.remove_unused_categories()
    ZINBAutoencoder.setup_anndata(reference, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(reference)
    model.train(max_epochs=100, enable_progress_bar=False)

    types = query.obs["cell_type"].to_numpy()
    complete = query.copy()
    complete.obs["batch"] = "batch_0"
    full = model.get_latent_representation(complete)
    full_neighbours = neighbours(full)
    rows = [("0%", "1.000", "1.000", f"{np.mean(types[full_neighbours] == types[:, None]):.3f}")]
    rng = np.random.default_rng(0)
    for share in SHARES:
        kept = np.sort(rng.permutation(query.n_vars)[int(share * query.n_vars) :])
        prepared = ZINBAutoencoder.prepare_query_anndata(
            query[:, kept].copy(), model, inplace=False
        )
        prepared.obs["batch"] = "batch_0"
        latent = model.get_latent_representation(prepared)
        correlation = np.median([pearsonr(a, b)[0] for a, b in zip(full.T, latent.T, strict=True)])
        found = neighbours(latent)
        kept_neighbours = np.mean(
            [
                len(set(a) & set(b)) / N_NEIGHBOURS
                for a, b in zip(full_neighbours, found, strict=True)
            ]
        )
        purity = np.mean(types[found] == types[:, None])
        rows.append(
            (f"{share:.0%}", f"{correlation:.3f}", f"{kept_neighbours:.3f}", f"{purity:.3f}")
        )

    lines = [
        "# Query with missing genes (ZINBAutoencoder, prepare_query_anndata)",
        "",
        "Command: `python benchmarks/query_missing_features.py`. RNA simulator, 3,000 cells × 800 "
        f"genes; reference: batches 0 and 1 (100 epochs), query: batch 2 ({query.n_obs:,} "
        "cells). Added genes are zeros (not detected).",
        "",
        environment_line([{"versions": versions()}]),
        "",
        "| genes missing | latent r (median over dims) | 15-NN kept | 15-NN same type |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    text = "\n".join(lines)
    (RESULTS / "query_missing_features.md").write_text(text)
    print(text)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
