"""Does MultiVAE's ATAC likelihood follow sequencing depth? Expected vs observed open regions.

For each cell, the expected number of regions detected as open (the sum of the decoded
probabilities at the cell's own depth, the posterior sampled as in training) against the
number it has, by fifth of cells ordered by depth: a ratio of 1 in every fifth means the model
follows depth; a ratio falling with depth means its depth response is too flat. Also the
validation ELBO, kNN accuracy of the cell types (3-fold) and the mutual information between the
latent and log depth (scikit-learn, as in ``bench_sailer.py``).

Data: ``simulate_multiome`` (2,000 cells, 2,000 peaks, about 15% of regions open per cell, 60
epochs) and 3,000 random SNARE-seq cells (0.4% open, 20 epochs; skipped when ``../shared`` is
absent). Run from the project root (a few minutes each on two CPU threads)::

    python benchmarks/multivae_atac_depth.py   # writes results/multivae_atac_depth.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import environment_line, run_isolated
from bench_sailer import noisy_log_depth

ROOT = Path(__file__).resolve().parents[1]
SNARESEQ = ROOT.parent / "shared/data/multimodal/snareseq_mouse_cortex_rna_atac_10309.h5mu"
RESULTS = ROOT / "benchmarks" / "results"
SEED = 0
EPOCHS = {"simulated": 60, "snareseq": 20}


def load(name: str):
    import mudata as md
    from scipy import sparse

    import scgexp

    if name == "simulated":
        mdata = scgexp.data.simulate_multiome(n_cells=2000, n_genes=500, n_peaks=2000, seed=SEED)
    else:
        mdata = md.read_h5mu(SNARESEQ)
        cells = np.random.default_rng(SEED).choice(mdata.n_obs, 3000, replace=False)
        mdata = mdata[np.sort(cells)].copy()
    for modality in mdata.mod.values():
        modality.X = sparse.csr_matrix(modality.X, dtype=np.float32)
    return mdata


def run_one(name: str, method: str, queue, threads: int) -> None:
    import warnings

    import scvi
    import torch
    from sklearn.feature_selection import mutual_info_regression
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from scgexp.model import MultiVAE

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    scvi.settings.seed = SEED
    mdata = load(name)
    modalities = {"rna_layer": "rna", "atac_layer": "atac"}
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=modalities)
    model = MultiVAE(mdata)
    model.train(max_epochs=EPOCHS[name], batch_size=128, enable_progress_bar=False)
    expected = []
    with torch.no_grad():
        for tensors in model._make_data_loader(mdata, batch_size=512):
            _, generative = model.module(tensors, compute_loss=False)
            expected.append(generative["p_atac"].probs.sum(-1).numpy())
    expected = np.concatenate(expected)
    observed = np.asarray((mdata["atac"].X > 0).sum(1)).ravel()
    fifths = np.array_split(np.argsort(observed, kind="stable"), 5)
    latent = model.get_latent_representation()
    log_depth = noisy_log_depth(mdata["atac"])
    labels = mdata.obs["cell_type"].astype(str).to_numpy()
    queue.put(
        {
            "dataset": name,
            "open_fraction": float(observed.mean() / mdata["atac"].n_vars),
            "ratios": [float(expected[f].sum() / observed[f].sum()) for f in fifths],
            "elbo_validation": float(model.history["elbo_validation"].iloc[-1, 0]),
            "knn": float(cross_val_score(KNeighborsClassifier(15), latent, labels, cv=3).mean()),
            "mi_depth": float(mutual_info_regression(latent, log_depth, random_state=SEED).mean()),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for name in EPOCHS:
        if name == "snareseq" and not SNARESEQ.exists():
            print(f"skipping snareseq: {SNARESEQ} is absent")
            continue
        rows.append(run_isolated(run_one, name, "MultiVAE", args.threads))
    lines = [
        "# MultiVAE: expected vs observed open regions by depth",
        "",
        f"Command: `python benchmarks/multivae_atac_depth.py --threads {args.threads}`.",
        "",
        environment_line(rows),
        "",
        "| data | open per cell | expected / observed, shallowest → deepest fifth "
        "| validation ELBO | kNN accuracy | MI(latent, log depth) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratios = " / ".join(f"{r:.3f}" for r in row["ratios"])
        lines.append(
            f"| {row['dataset']} | {row['open_fraction']:.2%} | {ratios} "
            f"| {row['elbo_validation']:.2f} | {row['knn']:.3f} | {row['mi_depth']:.4f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "multivae_atac_depth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
