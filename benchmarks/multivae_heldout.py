"""MultiVAE on held-out SNARE-seq cells: latent quality, overfitting, and training settings.

3,000 random SNARE-seq cells (seed 0), all genes and the 5,000 most often open peaks (features
without counts dropped), split 80/20 into training and held-out cells (stratified by cell
type). Each variant trains on the training cells only (60 epochs at most, early stopping), then

- active dimensions: joint-latent dimensions whose posterior mean varies by more than 0.01
  across the training cells;
- kNN (15) cell-type accuracy of the joint latent and of each expert (one modality alone):
  5-fold cross-validated on the training cells, and on the held-out cells with the classifier
  fit on the training cells (scikit-learn);
- RNA of the held-out cells predicted from their ATAC (``predict``): per-gene Pearson of
  log1p per 10k, beside a kNN baseline (mean RNA of the 15 nearest training cells in the LSI
  of ATAC) and, for the latent, the LSI itself;
- scvi-tools' SCVI on the RNA alone as the anchor (``SCVI_kl20``: its KL warm-up shortened to
  MultiVAE's 20 epochs, so that its KL weight is full by the end too).

Each run is its own process (one CPU thread). Results accumulate in
``benchmarks/results/multivae_heldout_raw.json``; the table goes to
``benchmarks/results/multivae_heldout.md``. Needs ``../shared/data``. Run from the project
root::

    python benchmarks/multivae_heldout.py --variants A E SCVI --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from _common import environment_line, run_isolated, store_result
from bench_multivae import DATA, RESULTS, per_feature_pearson

FILE = "snareseq_mouse_cortex_rna_atac_10309.h5mu"
N_CELLS, N_PEAKS, MAX_EPOCHS, N_NEIGHBOURS = 3000, 5000, 60, 15
#: name: (MultiVAE arguments, train arguments, description); SCVI* are the anchor.
VARIANTS = {
    "A": ({}, {}, "defaults"),
    "B": ({}, {"n_epochs_kl_warmup": 50}, "KL warm-up 50 epochs (MULTIVI's)"),
    "C": ({"dropout_rate": 0.2}, {}, "dropout 0.2"),
    "D": ({}, {"weight_decay": 1e-4}, "weight decay 1e-4"),
    "E": ({"n_latent": 10}, {}, "10 latent dimensions"),
    "F": ({"dropout_rate": 0.2}, {"n_epochs_kl_warmup": 50}, "B and C"),
    "G": ({"joint": "mixture"}, {}, "mixture of experts"),
    "H": ({"invariance": None}, {}, "no batch adversary"),
    "I": ({"alignment_weight": 0.0}, {}, "no expert alignment"),
    "J": ({"n_layers_encoder": 1}, {}, "one encoder layer (SCVI's)"),
    "K": ({"n_layers_encoder": 1, "n_layers_decoder": 1}, {}, "one layer each (SCVI's)"),
    "SCVI": (None, {}, "scvi-tools SCVI on RNA, defaults (10 dimensions)"),
    "SCVI_kl20": (None, {"n_epochs_kl_warmup": 20}, "SCVI, KL warm-up 20 epochs"),
}


def load():
    """Training and held-out MuData, their cell types, and the RNA counts of both."""
    import mudata as md
    import pandas as pd
    from scipy import sparse
    from sklearn.model_selection import train_test_split

    md.set_options(pull_on_update=False)
    full = md.read_h5mu(DATA / FILE)
    cells = np.sort(np.random.default_rng(0).choice(full.n_obs, N_CELLS, replace=False))
    rna, atac = full["rna"][cells].copy(), full["atac"][cells].copy()
    rna.X = sparse.csr_matrix(rna.X, dtype=np.float32)
    atac.X = sparse.csr_matrix(atac.X, dtype=np.float32)
    open_frequency = np.asarray((atac.X > 0).sum(0)).ravel()
    atac = atac[:, np.sort(np.argsort(-open_frequency, kind="stable")[:N_PEAKS])].copy()
    atac = atac[:, np.asarray(atac.X.sum(0)).ravel() > 0].copy()
    rna = rna[:, np.asarray(rna.X.sum(0)).ravel() > 0].copy()
    obs = full.obs.iloc[cells][["batch", "cell_type"]].copy()
    obs["batch"] = obs["batch"].astype(str).astype("category")
    obs["cell_type"] = obs["cell_type"].astype(str)
    train, held = (
        np.sort(part)
        for part in train_test_split(
            np.arange(N_CELLS), test_size=0.2, stratify=obs["cell_type"], random_state=0
        )
    )

    def subset(rows):
        parts = {"rna": rna[rows].copy(), "atac": atac[rows].copy()}
        for part in parts.values():
            part.obs = obs.iloc[rows].copy()
        mdata = md.MuData(parts)
        mdata.obs["batch"] = pd.Categorical(
            obs["batch"].to_numpy()[rows], categories=obs["batch"].cat.categories
        )
        mdata.obs["cell_type"] = obs["cell_type"].to_numpy()[rows]
        return mdata

    labels = obs["cell_type"].to_numpy()
    return (
        (subset(train), subset(held)),
        (labels[train], labels[held]),
        (rna.X[train].toarray(), rna.X[held].toarray()),
        (atac.X[train], atac.X[held]),
    )


def knn_scores(latents, labels) -> dict:
    """kNN cell-type accuracy: cross-validated on the training cells, and on held-out cells."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    (z_train, z_held), (y_train, y_held) = latents, labels
    ok_train, ok_held = np.isfinite(z_train).all(1), np.isfinite(z_held).all(1)
    classifier = KNeighborsClassifier(n_neighbors=N_NEIGHBOURS)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cell types with fewer than 5 training cells
        cv = cross_val_score(classifier, z_train[ok_train], y_train[ok_train], cv=folds).mean()
    classifier.fit(z_train[ok_train], y_train[ok_train])
    return {
        "train_cv": float(cv),
        "heldout": float(classifier.score(z_held[ok_held], y_held[ok_held])),
    }


def run_one(variant: str, seed: str, queue) -> None:
    """Train one variant with one seed and put its measures on the queue (in a subprocess)."""
    import logging

    import scvi
    import torch
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.neighbors import NearestNeighbors

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    (m_train, m_held), labels, (rna_train, rna_held), (atac_train, atac_held) = load()
    model_kwargs, train_kwargs, _ = VARIANTS[variant]
    result = {"variant": variant, "seed": int(seed), "n_genes": m_train["rna"].n_vars}
    scvi.settings.seed = int(seed)
    start = time.perf_counter()
    fit = {"max_epochs": MAX_EPOCHS, "batch_size": 128, "early_stopping": True}
    if model_kwargs is None:  # the anchor, on the RNA alone
        adata, held = m_train["rna"].copy(), m_held["rna"].copy()
        adata.obs, held.obs = m_train.obs.copy(), m_held.obs.copy()
        scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
        model = scvi.model.SCVI(adata)
        model.train(**fit, enable_progress_bar=False, plan_kwargs=train_kwargs or None)
        result["train_s"] = time.perf_counter() - start
        latents = model.get_latent_representation(), model.get_latent_representation(held)
    else:
        from scgexp.model import MultiVAE

        modalities = {"rna_layer": "rna", "atac_layer": "atac"}
        MultiVAE.setup_mudata(m_train, batch_key="batch", modalities=modalities)
        model = MultiVAE(m_train, **model_kwargs)
        model.train(**fit, enable_progress_bar=False, **train_kwargs)
        result["train_s"] = time.perf_counter() - start
        latents = model.get_latent_representation(m_train), model.get_latent_representation(m_held)
        for modality in ("rna", "atac"):
            expert = tuple(
                model.get_latent_representation(m, modality=modality) for m in (m_train, m_held)
            )
            result[f"expert_{modality}"] = knn_scores(expert, labels)
        predicted = np.asarray(model.predict(m_held, source="atac", target="rna").X)
        result["rna_from_atac"] = per_feature_pearson(predicted, rna_held, per_10k=True)
    variances = np.sort(latents[0].var(0))[::-1]
    result["active_dims"] = int((variances > 0.01).sum())
    result["n_latent"] = len(variances)
    result["joint"] = knn_scores(latents, labels)
    epochs = len(model.history["elbo_train"])
    result.update(epochs=epochs, s_per_epoch=result["train_s"] / epochs)
    # The classical anchors: LSI of ATAC, and the RNA of its nearest training cells. The same
    # LSI as ``_common.lsi``, but fitted on the training cells and applied to the held-out ones.
    tfidf = TfidfTransformer()
    binary_train, binary_held = ((x > 0).astype(np.float32) for x in (atac_train, atac_held))
    svd = TruncatedSVD(21, random_state=0).fit(tfidf.fit_transform(binary_train))
    lsi_train = svd.transform(tfidf.transform(binary_train))[:, 1:]
    lsi_held = svd.transform(tfidf.transform(binary_held))[:, 1:]
    _, neighbours = NearestNeighbors(n_neighbors=N_NEIGHBOURS).fit(lsi_train).kneighbors(lsi_held)
    per_10k = rna_train / np.maximum(rna_train.sum(1, keepdims=True), 1.0) * 1e4
    baseline = per_feature_pearson(per_10k[neighbours].mean(1), rna_held, per_10k=True)
    result["knn_baseline_rna_from_atac"] = baseline
    result["lsi"] = knn_scores((lsi_train, lsi_held), labels)
    queue.put(result)


COLUMNS = [
    ("active_dims", "active dims", 0),
    ("joint.train_cv", "joint: train (CV)", 3),
    ("joint.heldout", "joint: held-out", 3),
    ("expert_rna.train_cv", "RNA expert: train", 3),
    ("expert_rna.heldout", "RNA expert: held-out", 3),
    ("expert_atac.train_cv", "ATAC expert: train", 3),
    ("expert_atac.heldout", "ATAC expert: held-out", 3),
    ("rna_from_atac.pearson_mean", "RNA from ATAC r", 3),
    ("s_per_epoch", "s/epoch", 2),
    ("epochs", "epochs", 0),
]


def _get(row: dict, path: str):
    for key in path.split("."):
        row = row.get(key) if isinstance(row, dict) else None
    return row


def write_table(results: list[dict], command: str) -> str:
    """The mean over seeds of each measure, each seed's value in brackets."""
    lines = [
        "# MultiVAE on held-out SNARE-seq cells",
        "",
        f"Command: `{command}`. {N_CELLS} cells, {N_PEAKS} peaks, 80/20 split stratified by "
        "cell type; "
        f"kNN ({N_NEIGHBOURS}) cell-type accuracy; values: mean over seeds (each seed).",
        "",
        environment_line(results),
        "",
        "| variant | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for variant, (_, _, description) in VARIANTS.items():
        rows = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not rows:
            continue
        cells = []
        for path, _, digits in COLUMNS:
            values = [_get(r, path) for r in rows]
            if any(v is None for v in values):
                cells.append("—")
                continue
            text = [f"{v:.{digits}f}" for v in values]
            mean = f"{np.mean(values):.{digits}f}"
            cells.append(mean if len(values) == 1 else f"{mean} ({' / '.join(text)})")
        lines.append(f"| {variant}: {description} | " + " | ".join(cells) + " |")
    anchors = results[0]
    lines += [
        "",
        f"Classical anchors (the same for every row): LSI of ATAC, kNN accuracy "
        f"{anchors['lsi']['train_cv']:.3f} (train) / {anchors['lsi']['heldout']:.3f} (held-out); "
        "RNA from ATAC as the mean of the nearest training cells in the LSI, r "
        f"{anchors['knn_baseline_rna_from_atac']['pearson_mean']:.3f}.",
        "",
    ]
    notes = sorted({r["note"] for r in results if "note" in r})
    lines += [f"{sum('note' in r for r in results)} of the runs were {note}.\n" for note in notes]
    text = "\n".join(lines)
    (RESULTS / "multivae_heldout.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", default=["0", "1"])
    args = parser.parse_args()
    if not (DATA / FILE).exists():
        raise SystemExit(f"{DATA / FILE} is absent; the benchmark needs ../shared/data.")
    cache = RESULTS / "multivae_heldout_raw.json"
    results = json.loads(cache.read_text()) if cache.exists() else []
    for variant in args.variants:
        for seed in args.seeds:
            result = run_isolated(run_one, variant, seed)
            results = store_result(cache, result, ("variant", "seed"))
            print(variant, seed, json.dumps(result)[:300], flush=True)
    print(write_table(results, "python benchmarks/multivae_heldout.py"))


if __name__ == "__main__":
    main()
