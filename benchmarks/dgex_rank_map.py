"""DGEX's two rank mappings on data from another platform: a mixed set and one tissue at a time.

``rank_map=True`` ("gene") ranks each landmark across the samples; ``rank_map="sample"`` ranks
each sample's landmarks among themselves. A DGEX model trained on the bulk simulator
(``scgexp.data.simulate_bulk_expression``) predicts held-out samples whose landmarks were put
on another platform's scale: the same monotone curve for every gene (2 ** (x / 2)), or a scale
and offset of each gene's own (x × U(0.5, 1.5) + N(0, 1), per gene). All held-out samples
together, and each tissue's samples alone (a homogeneous set, as one cell line's L1000
profiles). MAE of the predicted targets, against the prediction from the landmarks in the
training units and against the mean of all held-out samples. Runs on the simulator only.

Run from the project root (writes ``results/dgex_rank_map.md``)::

    python benchmarks/dgex_rank_map.py
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import scvi
from _common import versions
from bench_dgex import RESULTS

import scgexp
from scgexp.model import DGEX


def main() -> None:
    scvi.settings.seed = 0
    data = scgexp.data.simulate_bulk_expression(
        n_samples=3000, n_landmarks=200, n_targets=800, n_programs=40, seed=0
    )
    train, test = data[:2500].copy(), data[2500:].copy()
    DGEX.setup_anndata(train)
    model = DGEX(train)
    model.train(max_epochs=100, enable_progress_bar=False)
    landmarks = test[:, test.var["landmark"]].copy()
    shared = landmarks.copy()  # one curve for every gene: ranks within a sample unchanged
    shared.X = np.exp2(shared.X / 2)
    rng = np.random.default_rng(0)
    own = landmarks.copy()  # each gene its own scale and offset: ranks within samples change
    own.X = own.X * rng.uniform(0.5, 1.5, own.n_vars) + rng.normal(0, 1, own.n_vars)
    targets = test[:, model.target_names].X
    all_samples_mean = targets.mean(0)

    def mae(prediction, rows) -> str:
        return f"{np.abs(prediction.X - targets[rows]).mean():.3f}"

    lines = [
        "# DGEX: rank mapping across samples (gene) or within samples (sample)",
        "",
        "Command: `python benchmarks/dgex_rank_map.py` (simulated bulk data, 2,500 training and "
        "500 held-out samples, 200 landmarks, 800 targets; held-out landmarks put on another "
        "platform's scale: one curve shared by all genes, 2 ** (x / 2), or each gene's own "
        "scale and offset). MAE of the predicted targets; True: `rank_map=True`, sample: "
        '`rank_map="sample"`.',
        "",
        f"Environment: {versions()}.",
        "",
        "| samples | n | same units, no mapping | shared curve, True | shared curve, sample | "
        "own scale per gene, True | own scale per gene, sample | mean of all held-out samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = {"all held-out samples": np.ones(test.n_obs, dtype=bool)}
    for tissue in sorted(test.obs["tissue"].unique()):
        groups[f"{tissue} only"] = (test.obs["tissue"] == tissue).to_numpy()
    for name, rows in groups.items():
        if rows.sum() < 10:  # rank_map=True needs 10 samples
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cells = [mae(model.predict(landmarks[rows]), rows)]
            for distorted in (shared, own):
                for mode in (True, "sample"):
                    cells.append(mae(model.predict(distorted[rows], rank_map=mode), rows))
        baseline = np.abs(all_samples_mean - targets[rows]).mean()
        lines.append(f"| {name} | {rows.sum()} | {' | '.join(cells)} | {baseline:.3f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "dgex_rank_map.md").write_text(text)
    print(text)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
