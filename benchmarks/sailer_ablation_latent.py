"""The invariance ablation measured on the whole latent: depth and batch by nearest neighbours.

The ablation in ``bench_sailer.py`` reports SAILER's metric, the mean over single latent
dimensions of the mutual information with depth. This script trains the same four settings
(``invariance=None`` / ``"mi"`` / ``"adversarial"`` / ``"both"``, the default; same input,
data, budget and metrics, ``bench_sailer.run_one``) over several training seeds and adds the
two measures of the whole latent of ``bench_sailer.whole_latent_metrics``: the cross-validated
R² of log depth predicted by 15 nearest neighbours and the balanced accuracy of the batch
predicted the same way (chance: 1/3 for the simulator's three batches).

Run from the project root (about 7 minutes per seed for ``simulated``, 1 for
``simulated_small``, on one CPU thread)::

    python benchmarks/sailer_ablation_latent.py --dataset simulated --seeds 0 1
    # writes benchmarks/results/sailer_ablation_latent_<dataset>.md
"""

from __future__ import annotations

import argparse

from _common import environment_line
from bench_sailer import RESULTS, mean_sd_table, run_seeds

METHODS = ["SAILER (None)", "SAILER (mi)", "SAILER (adversarial)", "SAILER"]
KEYS = [  # (result key, column title)
    ("mi_depth", "MI depth, mean per dim (nats)"),
    ("depth_r2", "depth R² (kNN, CV)"),
    ("batch_accuracy", "batch balanced accuracy (kNN, CV)"),
    ("silhouette_label", "cell-type ASW"),
    ("nmi", "NMI"),
]


def write_table(rows: list[dict], dataset: str, seeds: list[int]) -> str:
    lines = [
        f"# SAILER's invariance ablation on the whole latent ({dataset})",
        "",
        f"Command: `python benchmarks/sailer_ablation_latent.py --dataset {dataset} --seeds "
        f"{' '.join(map(str, seeds))}` (data, budget and metrics as in `bench_sailer.py`; "
        '`SAILER` is `invariance="both"`, the default). Mean ± SD over the training seeds; '
        "depth R²: 15-nearest-neighbour regression of log depth from the latent, 5-fold "
        "cross-validated (0 or below: no depth information a neighbour can use); batch "
        "balanced accuracy likewise (chance 0.333).",
        "",
        environment_line(rows),
        "",
    ]
    own = [r for r in rows if r["train_seed"] in seeds]
    lines += mean_sd_table(own, METHODS, KEYS)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--dataset", default="simulated")
    args = parser.parse_args()
    cache = RESULTS / f"sailer_ablation_latent_{args.dataset}_raw.json"
    rows = run_seeds(args.dataset, METHODS, args.seeds, cache)
    text = write_table(rows, args.dataset, args.seeds)
    (RESULTS / f"sailer_ablation_latent_{args.dataset}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
