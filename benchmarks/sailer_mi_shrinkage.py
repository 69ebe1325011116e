"""Why SAILER's ``"mi"`` penalty alone leaves read depth in the latent: wider posteriors.

``sailer_ablation_latent.py`` found more depth in the posterior means with ``invariance="mi"``
than with no penalty. The pairwise KL between posteriors falls as the posteriors widen, and a
cell's posterior mean is pulled towards the prior's centre the more, the less evidence the cell
gives: the fewer its open peaks. This script trains the same settings as the ablation
(``None`` / ``"mi"`` / ``"both"``; data, budget and schedule of ``bench_sailer.run_one``) and
reports, per setting, the depth R² of 15 nearest neighbours on the posterior means, the mean
posterior standard deviation, and within each cell type the correlation of log depth with the
posterior mean's distance from the origin and with the posterior's log variance.

Run from the project root (about 1 minute per seed and setting for ``simulated_small``, on one
CPU thread)::

    python benchmarks/sailer_mi_shrinkage.py --dataset simulated_small --seeds 0 1
    # writes benchmarks/results/sailer_mi_shrinkage_<dataset>.md
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

import numpy as np
from _common import environment_line, versions
from bench_sailer import (
    BATCH_SIZE,
    DATASETS,
    INVARIANCE,
    RESULTS,
    load,
    mean_sd_table,
    noisy_log_depth,
    whole_latent_metrics,
)

METHODS = ["SAILER (None)", "SAILER (mi)", "SAILER"]
KEYS = [  # (result key, column title)
    ("depth_r2", "depth R² (kNN, CV)"),
    ("posterior_sd", "mean posterior SD"),
    ("r_depth_distance", "r(log depth, ‖μ‖) within types"),
    ("r_depth_log_variance", "r(log depth, log σ²) within types"),
]


def within_type_correlations(adata, mean: np.ndarray, variance: np.ndarray) -> dict:
    """Mean over cell types of the correlation of log depth with ‖μ‖ and with mean log σ²."""
    log_depth = noisy_log_depth(adata)
    types = adata.obs["cell_type"].to_numpy()
    distance, log_variance = [], []
    for cell_type in np.unique(types):
        cells = types == cell_type
        distance.append(np.corrcoef(log_depth[cells], np.linalg.norm(mean[cells], axis=1))[0, 1])
        spread = np.log(variance[cells]).mean(1)
        log_variance.append(np.corrcoef(log_depth[cells], spread)[0, 1])
    return {
        "r_depth_distance": float(np.mean(distance)),
        "r_depth_log_variance": float(np.mean(log_variance)),
    }


def run(dataset: str, method: str, seed: int) -> dict:
    """Train one setting as ``bench_sailer.run_one`` does and measure its posteriors."""
    import scvi
    import torch

    from scgexp.sailer import SAILER

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    scvi.settings.seed = seed
    adata = load(dataset)
    max_epochs = DATASETS[dataset]["max_epochs"]
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, invariance=INVARIANCE[method])
    model.train(
        max_epochs=max_epochs,
        batch_size=BATCH_SIZE,
        early_stopping=True,
        enable_progress_bar=False,
        n_epochs_kl_warmup=min(50, max_epochs // 3),
        n_epochs_warmup=min(10, max_epochs // 10),
    )
    mean, variance = model.get_latent_representation(return_dist=True)
    result = {"dataset": dataset, "method": method, "train_seed": seed, "versions": versions()}
    result.update(whole_latent_metrics(adata, mean))
    result["posterior_sd"] = float(np.sqrt(variance).mean())
    result.update(within_type_correlations(adata, mean, variance))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--dataset", default="simulated_small")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows = []
    for seed in args.seeds:
        for method in METHODS:
            rows.append(run(args.dataset, method, seed))
            print(rows[-1], flush=True)
    lines = [
        f"# Depth in SAILER's latent and the width of its posteriors ({args.dataset})",
        "",
        f"Command: `python benchmarks/sailer_mi_shrinkage.py --dataset {args.dataset} --seeds "
        f"{' '.join(map(str, args.seeds))}` (data, budget and schedule as in `bench_sailer.py`; "
        '`SAILER` is `invariance="both"`, the default). Mean ± SD over the training seeds; '
        "r: Pearson correlation within each cell type, averaged over the types.",
        "",
        environment_line(rows),
        "",
        *mean_sd_table(rows, METHODS, KEYS),
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"sailer_mi_shrinkage_{args.dataset}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
