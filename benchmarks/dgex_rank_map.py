"""DGEX's two rank mappings on data from another platform: a mixed set and one tissue at a time.

``rank_map=True`` ("gene") ranks each landmark across the samples; ``rank_map="sample"`` ranks
each sample's landmarks among themselves. A DGEX model trained on the bulk simulator
(``scgexp.data.simulate_bulk_expression``) predicts held-out samples whose landmarks were put
on another scale (2 ** (x / 2), a monotone distortion, as for another platform): all of them
together, and each tissue's samples alone (a homogeneous set, as one cell line's L1000
profiles). MAE of the predicted targets, against the prediction from the landmarks in the
training units and against the mean of all held-out samples. Runs on the simulator only.

Run from the project root (writes ``results/dgex_rank_map.md``)::

    python benchmarks/dgex_rank_map.py
"""

from __future__ import annotations

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
    other_platform = landmarks.copy()
    other_platform.X = np.exp2(other_platform.X / 2)
    targets = test[:, model.target_names].X
    all_samples_mean = targets.mean(0)

    def mae(prediction, rows) -> str:
        return f"{np.abs(prediction.X - targets[rows]).mean():.3f}"

    lines = [
        "# DGEX: rank mapping across samples (gene) or within samples (sample)",
        "",
        "Command: `python benchmarks/dgex_rank_map.py` (simulated bulk data, 2,500 training and "
        "500 held-out samples, 200 landmarks, 800 targets; held-out landmarks put on another "
        "scale). MAE of the predicted targets.",
        "",
        f"Environment: {versions()}.",
        "",
        "| samples | n | same units, no mapping | other units, `rank_map=True` | other units, "
        '`rank_map="sample"` | mean of all held-out samples |',
        "|---|---|---|---|---|---|",
    ]
    groups = {"all held-out samples": np.ones(test.n_obs, dtype=bool)}
    for tissue in sorted(test.obs["tissue"].unique()):
        groups[f"{tissue} only"] = (test.obs["tissue"] == tissue).to_numpy()
    for name, rows in groups.items():
        if rows.sum() < 10:  # rank_map=True needs 10 samples
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = model.predict(landmarks[rows])
            by_gene = model.predict(other_platform[rows], rank_map=True)
            by_sample = model.predict(other_platform[rows], rank_map="sample")
        baseline = np.abs(all_samples_mean - targets[rows]).mean()
        lines.append(
            f"| {name} | {rows.sum()} | {mae(plain, rows)} | {mae(by_gene, rows)} | "
            f"{mae(by_sample, rows)} | {baseline:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "dgex_rank_map.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
