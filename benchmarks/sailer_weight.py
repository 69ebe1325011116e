"""SAILER's invariance weight: how much depth information each weight removes, at what cost.

scgexp writes SAILER's loss per cell (reconstruction and KL averaged over the minibatch, plus
λ × (mean pairwise KL + reconstruction)), which does not depend on the batch size. SAILER's
code sums reconstruction and KL over the minibatch but averages the pairwise KL, and anneals
that term with the KL weight, so its λ = 1 corresponds to λ ≈ 1 / batch size (about 0.01 at
128 cells) here. This script trains SAILER at λ = 1 (the default), 0.1 and 0.01, with
``"both"`` (the adversary's weight held at its default of 10) and ``"mi"`` alone, and without
invariance, over training seeds, with ``bench_sailer.run_one`` (same data, budget and
metrics) and the estimator floor of ``sailer_seeds.py``.

Run from the project root (1-3 minutes per run on one CPU thread on the simulator)::

    python benchmarks/sailer_weight.py --dataset simulated --seeds 0 1 2
    python benchmarks/sailer_weight.py --dataset snareseq_small --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import environment_line, run_isolated, store_result
from bench_sailer import RESULTS, latent_path, run_one, variant_tables
from sailer_seeds import depth_floor

# The adversary's weight is λ × n_latent by default: held at its default (10) while λ varies.
ADVERSARY = {"invariance": "both", "invariance_kwargs": {"adversarial_weight": 10.0}}
VARIANTS = {
    "both, λ=1 (default)": {"invariance": "both"},
    "both, λ=0.1": {**ADVERSARY, "invariance_weight": 0.1},
    "both, λ=0.01": {**ADVERSARY, "invariance_weight": 0.01},
    "mi, λ=0.1": {"invariance": "mi", "invariance_weight": 0.1},
    "mi, λ=0.01": {"invariance": "mi", "invariance_weight": 0.01},
    "None": {"invariance": None},
}
KEYS = [
    ("mi_depth", "MI depth", 4),
    ("mi_depth_floor", "floor", 4),
    ("nmi", "NMI", 3),
    ("ari", "ARI", 3),
    ("silhouette_label", "cell-type ASW", 3),
    ("silhouette_batch", "batch ASW", 3),
    ("ilisi", "iLISI", 3),
    ("epochs", "epochs", 0),
]


def write_table(rows: list[dict]) -> str:
    lines = [
        "# SAILER: invariance weight λ",
        "",
        "Command: `python benchmarks/sailer_weight.py --dataset DATASET --seeds SEED ... "
        "[--variants VARIANT ...]`, once per data set (rows of earlier runs are kept). Data, "
        "budget and metrics as in `bench_sailer.py`; floor: MI with depth shuffled (mean of 5 "
        "permutations). Mean ± SD over the training seeds that the seeds column counts.",
        "",
        environment_line(rows),
    ]
    lines += variant_tables(rows, VARIANTS, KEYS)
    text = "\n".join(lines) + "\n"
    (RESULTS / "sailer_weight.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="simulated")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    cache = RESULTS / "sailer_weight_raw.json"
    results = json.loads(cache.read_text()) if cache.exists() else []
    for seed in args.seeds:
        for variant in args.variants:
            start = time.perf_counter()
            result = run_isolated(run_one, args.dataset, variant, seed, VARIANTS[variant])
            result["train_seed"] = seed
            latent = np.load(latent_path(args.dataset, variant, seed))
            result["mi_depth_floor"] = depth_floor(args.dataset, latent)
            results = store_result(cache, result, ("dataset", "method", "train_seed"))
            print(f"{variant} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    print(write_table(results))


if __name__ == "__main__":
    main()
