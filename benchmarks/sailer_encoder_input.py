"""SAILER's encoder input: every peak (default) or the cell's LSI (``encoder_input="lsi"``).

On a few hundred to a few thousand SNARE-seq cells the LSI anchor finds cell types better than
SAILER. With ``encoder_input="lsi"`` SAILER's encoder reads 20 LSI components instead of tens of
thousands of peaks, as GLUE encodes scATAC-seq, so its first layer has a few thousand weights
instead of millions. This script trains SAILER with each input, over training seeds, beside the
LSI, with ``bench_sailer.run_one`` (same data, budget and metrics), and adds the
15-nearest-neighbour cell-type accuracy (5-fold, steadier than the best Leiden clustering), the
whole-latent depth R² and batch accuracy (``bench_sailer.whole_latent_metrics``) and the
estimator floor of the depth MI (``sailer_seeds.depth_floor``).

Run from the project root, once per data set (rows of earlier runs are kept; several data sets
may run at once, each in its own process)::

    python benchmarks/sailer_encoder_input.py --dataset snareseq_1500 --seeds 0 1 2
    python benchmarks/sailer_encoder_input.py --dataset simulated --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import environment_line, knn_accuracy, run_isolated, store_result
from bench_sailer import (
    DATASETS,
    RESULTS,
    latent_path,
    load,
    run_one,
    variant_tables,
    whole_latent_metrics,
)
from sailer_seeds import depth_floor

VARIANTS = {"SAILER": None, "SAILER (LSI input)": {"encoder_input": "lsi"}, "LSI": None}
KEYS = [
    ("knn_accuracy", "kNN accuracy", 3),
    ("nmi", "NMI", 3),
    ("ari", "ARI", 3),
    ("silhouette_label", "cell-type ASW", 3),
    ("mi_depth", "MI depth", 4),
    ("mi_depth_floor", "floor", 4),
    ("depth_r2", "depth R²", 3),
    ("batch_accuracy", "batch accuracy", 3),
    ("silhouette_batch", "batch ASW", 3),
    ("s_per_epoch", "s/epoch", 2),
    ("epochs", "epochs", 0),
]
CACHE = RESULTS / "sailer_encoder_input_raw.json"


def write_table(rows: list[dict]) -> str:
    lines = [
        "# SAILER: encoder input, every peak or the LSI",
        "",
        "Command: `python benchmarks/sailer_encoder_input.py --dataset DATASET --seeds SEED ...`, "
        "once per data set. Data, budget and metrics as in `bench_sailer.py` (SAILER's "
        "defaults otherwise); kNN accuracy: 15-nearest-neighbour classifier of cell types, "
        "5-fold; floor: MI with depth shuffled (mean of 5 permutations); depth R² and batch "
        "balanced accuracy: 15-nearest-neighbour predictors from the whole latent, 5-fold. "
        "Mean ± SD over the training seeds that the seeds column counts (the LSI has none).",
        "",
        environment_line(rows),
    ]
    lines += variant_tables(rows, VARIANTS, KEYS, first_column="input")
    text = "\n".join(lines) + "\n"
    (RESULTS / "sailer_encoder_input.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="snareseq_1500", choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    adata = load(args.dataset)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    for variant in args.variants:
        for seed in args.seeds[:1] if variant == "LSI" else args.seeds:
            start = time.perf_counter()
            result = run_isolated(run_one, args.dataset, variant, seed, VARIANTS[variant])
            result["train_seed"] = seed
            latent = np.load(latent_path(args.dataset, variant, seed))
            result["knn_accuracy"] = float(knn_accuracy(latent, labels).mean())
            result["mi_depth_floor"] = depth_floor(args.dataset, latent)
            result.update(whole_latent_metrics(adata, latent))
            store_result(CACHE, result, ("dataset", "method", "train_seed"))
            print(f"{variant} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    print(write_table(json.loads(CACHE.read_text())))


if __name__ == "__main__":
    main()
