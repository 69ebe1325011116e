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

import numpy as np
from _common import environment_line, run_isolated, store_result
from bench_sailer import RESULTS, latent_path, load, run_one, whole_latent_metrics

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
        "| method | seeds | " + " | ".join(title for _, title in KEYS) + " |",
        "|---|---|" + "---|" * len(KEYS),
    ]
    for method in METHODS:
        own = [r for r in rows if r["method"] == method and r["dataset"] == dataset]
        if not own:
            continue
        cells = []
        for key, _ in KEYS:
            values = np.array([r[key] for r in own], dtype=float)
            digits = 0 if key == "n_latent" else 4 if key == "mi_depth" else 3
            cells.append(
                f"{values.mean():.{digits}f}"
                + (f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 and digits else "")
            )
        lines.append(f"| {method} | {len(own)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dataset", default="simulated")
    args = parser.parse_args()
    cache = RESULTS / "sailer_latent_width_raw.json"
    rows: list[dict] = []
    adata = load(args.dataset)
    for seed in args.seeds:
        for method in METHODS:
            result = run_isolated(run_one, args.dataset, method, seed)
            result["train_seed"] = seed
            latent = np.load(latent_path(args.dataset, method, seed))
            result.update(whole_latent_metrics(adata, latent))
            rows = store_result(cache, result, ("dataset", "method", "train_seed"))
            print(f"{method} seed {seed}: {result['mi_depth']:.4f} nats", flush=True)
    text = write_table(rows, args.dataset)
    (RESULTS / "sailer_latent_width.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
