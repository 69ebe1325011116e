"""Depth and batch information in SAILER's and PEAKVI's latents at equal and default widths.

SAILER's metric, and the issue's, is the mean over latent dimensions of the mutual information
with depth. A mean over dimensions falls as uninformative dimensions are added, and PEAKVI's
default latent is narrower (7 dimensions on the simulator's 3,000 peaks) than SAILER's (10). So
this script trains, on the benchmark's simulator with its budget and metrics
(``bench_sailer.run_one``), SAILER, PEAKVI and PEAKVI with a 10-dimensional latent, and adds
two measures of the whole latent space: the cross-validated R² of log depth predicted from it
by 15 nearest neighbours, and the cross-validated balanced accuracy of the batch predicted the
same way (chance: 1/3 for the simulator's three batches).

Run from the project root (about 2 minutes per seed and method on one CPU thread)::

    python benchmarks/sailer_latent_width.py --seeds 0 1 2  # results/sailer_latent_width.md
"""

from __future__ import annotations

import argparse

from _common import environment_line
from bench_sailer import RESULTS, mean_sd_table, run_seeds

METHODS = ["SAILER", "PEAKVI", "PEAKVI (n_latent=10)"]
KEYS = [  # (result key, column title)
    ("n_latent", "latent dims"),
    ("mi_depth", "MI depth, mean per dim (nats)"),
    ("depth_r2", "depth R² (kNN, CV)"),
    ("batch_accuracy", "batch balanced accuracy (kNN, CV)"),
    ("nmi", "NMI"),
    ("ari", "ARI"),
]


def write_table(rows: list[dict], dataset: str) -> str:
    lines = [
        "# SAILER and PEAKVI: latent width and whole-latent depth information",
        "",
        "Command: `python benchmarks/sailer_latent_width.py --seeds SEED ...` (data set "
        f"`{dataset}`; data, budget and metrics as in `bench_sailer.py`). Mean ± SD over the "
        "training seeds; depth R²: 15-nearest-neighbour regression of log depth from the "
        "latent, 5-fold cross-validated (0 or below: no depth information a neighbour can "
        "use); batch balanced accuracy likewise (chance 0.333; below it, a cell's neighbours "
        "lean to the other batches).",
        "",
        environment_line(rows),
        "",
    ]
    own = [r for r in rows if r["dataset"] == dataset]
    lines += mean_sd_table(own, METHODS, KEYS)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dataset", default="simulated")
    args = parser.parse_args()
    cache = RESULTS / "sailer_latent_width_raw.json"
    rows = run_seeds(args.dataset, METHODS, args.seeds, cache)
    text = write_table(rows, args.dataset)
    (RESULTS / "sailer_latent_width.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
