"""Benchmark MultiVAE against scvi-tools MULTIVI (RNA + ATAC) and TOTALVI (RNA + protein).

RNA + ATAC (SNARE-seq mouse cortex): the RNA of 20% of the cells (fixed seed) is hidden (all-zero
rows, flagged missing), both models train on this mosaic data; then
- latent space: NMI/ARI of Leiden clusters against ``cell_type`` (best over resolutions, as
  scib does), cell-type silhouette and batch silhouette (scib-metrics, batch mixing);
- cross-modal prediction: RNA of the hidden cells predicted from their ATAC, per-gene Pearson
  correlation of log1p(prediction per 10k) with log1p(held-out RNA per 10k);
- cost: seconds per epoch (same batch size and epoch cap), epochs and seconds to early stop,
  peak RSS of the process.

RNA + protein (CITE-seq, 400 PBMCs): the proteins of one batch are hidden (totalVI's protein
imputation setting), both models train, then predict the hidden proteins from RNA (decoded as
the batch with proteins); per-protein Pearson of log1p values; batch silhouette of the latent.

A classical anchor without training (``--methods "kNN baseline"``): the LSI of ATAC
(scikit-learn TF-IDF, truncated SVD, first component dropped; ``_common.lsi``) or the PCA of
log-normalised RNA (CITE-seq) as latent space, and each hidden cell's prediction the mean of
its 15 nearest cells with the hidden modality there (scikit-learn). A cell-independent
prediction (the mean profile) has per-feature Pearson 0 by construction.

Each (dataset, method) runs in its own process, so peak memory is per method.

Run from the project root::

    python benchmarks/bench_multivae.py   # writes benchmarks/results/multivae.md and figures
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from _common import best_leiden, environment_line, fmt, lsi, run_isolated

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multimodal"
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "_static"
SEED = 0
BATCH_SIZE = 128
HIDDEN_FRACTION = 0.2
KNN_BASELINE = "kNN baseline"  # the classical anchor, see knn_baseline
N_NEIGHBOURS = 15

DATASETS = {
    "snareseq": {
        "file": "snareseq_mouse_cortex_rna_atac_10309.h5mu",
        "second": "atac",
        "label_key": "cell_type",
        "batch_key": "batch",
        "max_epochs": 20,  # equal cap for both models (CPU budget); early stopping may end sooner
        "methods": ["MultiVAE", "MULTIVI", KNN_BASELINE],
    },
    "cite": {
        "file": "scvi_testdata_pbmc10k5k_cite_400cells.h5mu",
        "second": "prot",
        "label_key": None,
        "batch_key": "batch",
        "max_epochs": 100,
        "methods": ["MultiVAE", "TOTALVI", KNN_BASELINE],
    },
}


#: MultiVAE with non-default settings, run with ``--methods "<name>"`` to measure a default.
VARIANTS = {
    "MultiVAE (no invariance)": {"invariance": None},
    "MultiVAE (one layer)": {"n_layers_encoder": 1, "n_layers_decoder": 1},
    "MultiVAE (protein mixture)": {"protein_likelihood": "mixture"},
    "MultiVAE (protein mixture, no invariance)": {
        "protein_likelihood": "mixture",
        "invariance": None,
    },
}

#: MULTIVI with MultiVAE's learning rate and KL warm-up: at MULTIVI's defaults (1e-4, a 50-epoch
#: warm-up) its KL weight reaches 0.4 within the 20-epoch cap, where MultiVAE's reaches 1.
ANCHOR_VARIANTS = {
    "MULTIVI (lr 1e-3, KL warm-up 20 epochs)": {"lr": 1e-3, "n_epochs_kl_warmup": 20},
}


def load(name: str):
    """The MuData with one modality hidden for some cells, and the hidden truth."""
    import mudata as md
    from scipy import sparse

    spec = DATASETS[name]
    mdata = md.read_h5mu(DATA / spec["file"])
    rng = np.random.default_rng(SEED)
    if name == "snareseq":
        hidden_mod = "rna"
        hidden = np.zeros(mdata.n_obs, dtype=bool)
        hidden[rng.choice(mdata.n_obs, round(HIDDEN_FRACTION * mdata.n_obs), replace=False)] = True
    else:
        hidden_mod = "prot"
        batches = mdata.obs[spec["batch_key"]].astype(str)
        hidden = (batches == sorted(batches.unique())[-1]).to_numpy()
    for key, mod in mdata.mod.items():  # proteins dense: TOTALVI's prior fit needs it
        if key == "prot":
            mod.X = np.asarray(mod.X.toarray() if sparse.issparse(mod.X) else mod.X, np.float32)
        else:
            mod.X = sparse.csr_matrix(mod.X, dtype=np.float32)
    matrix = mdata[hidden_mod].X
    if sparse.issparse(matrix):
        truth = matrix[hidden].toarray()
        masked = matrix.tolil()
        masked[np.flatnonzero(hidden)] = 0
        mdata[hidden_mod].X = sparse.csr_matrix(masked)
    else:
        truth = matrix[hidden].copy()
        masked = matrix.copy()
        masked[hidden] = 0
        mdata[hidden_mod].X = masked
    mdata.obs["has_hidden_mod"] = ~hidden
    return mdata, hidden, truth


def _patch_scanpy_knn() -> None:
    """scanpy 1.11 calls ``getnnz`` on the ``csr_array`` pynndescent gives for large data."""
    from scipy import sparse

    if not hasattr(sparse.csr_array, "getnnz"):

        def getnnz(self, axis=None):
            return np.diff(self.indptr) if axis == 1 else self.nnz

        sparse.csr_array.getnnz = getnnz


def latent_metrics(mdata, latent: np.ndarray, name: str) -> dict:
    import anndata as ad
    import scanpy as sc
    import scib_metrics

    spec = DATASETS[name]
    view = ad.AnnData(np.zeros((mdata.n_obs, 1), dtype=np.float32), obs=mdata.obs.copy())
    view.obsm["X_emb"] = latent
    batches = view.obs[spec["batch_key"]].astype(str).to_numpy()
    emb = np.asarray(latent, dtype=np.float32)
    result = {}
    if spec["label_key"] is None:
        labels = np.zeros(mdata.n_obs, dtype=int).astype(str)
        result["silhouette_batch"] = float(scib_metrics.silhouette_batch(emb, labels, batches))
        return result
    labels = view.obs[spec["label_key"]].astype(str).to_numpy()
    _patch_scanpy_knn()
    sc.pp.neighbors(view, use_rep="X_emb", n_neighbors=15, random_state=SEED)
    best = best_leiden(view, labels, np.arange(0.2, 2.01, 0.2), SEED)
    result.update(
        nmi=best["nmi"],
        ari=best["ari"],
        silhouette_label=float(scib_metrics.silhouette_label(emb, labels)),
        silhouette_batch=float(scib_metrics.silhouette_batch(emb, labels, batches)),
    )
    return result


def per_feature_pearson(predicted: np.ndarray, truth: np.ndarray, per_10k: bool) -> dict:
    """Mean and median per-feature Pearson of log1p values (features that vary in the truth)."""
    if per_10k:
        truth = truth / np.maximum(truth.sum(1, keepdims=True), 1.0) * 1e4
    log_pred, log_true = np.log1p(predicted), np.log1p(truth)
    keep = log_true.std(0) > 0
    a = log_pred[:, keep] - log_pred[:, keep].mean(0)
    b = log_true[:, keep] - log_true[:, keep].mean(0)
    r = (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0) + 1e-12)
    return {
        "pearson_mean": float(np.mean(r)),
        "pearson_median": float(np.median(r)),
        "n_features": int(keep.sum()),
    }


def knn_baseline(mdata, hidden: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The classical anchor: a latent space without training, and the mean of neighbours.

    The hidden modality of each hidden cell is the mean of its nearest observed cells' there.
    """
    from scipy import sparse
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    if name == "snareseq":  # RNA from ATAC
        latent = lsi(mdata["atac"].X, seed=SEED)
        target = sparse.csr_matrix(mdata["rna"].X)
        sums = np.maximum(np.asarray(target.sum(1)).ravel(), 1.0)
        target = np.asarray(sparse.diags(1e4 / sums) @ target.toarray())  # per 10k
    else:  # proteins from RNA
        rna = sparse.csr_matrix(mdata["rna"].X)
        sums = np.maximum(np.asarray(rna.sum(1)).ravel(), 1.0)
        log_rna = (sparse.diags(1e4 / sums) @ rna).log1p()
        latent = PCA(20, random_state=SEED).fit_transform(log_rna.toarray())
        target = np.asarray(mdata["prot"].X)
    observed = np.flatnonzero(~hidden)
    knn = NearestNeighbors(n_neighbors=N_NEIGHBOURS).fit(latent[observed])
    _, neighbours = knn.kneighbors(latent[hidden])
    predicted = target[observed][neighbours].mean(axis=1)
    return latent.astype(np.float32), predicted


def run_one(name: str, method: str, queue) -> None:
    """Train one method on one dataset and put its metrics on the queue (in a subprocess)."""
    import logging
    import warnings

    import scvi
    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    scvi.settings.seed = SEED
    spec = DATASETS[name]
    mdata, hidden, truth = load(name)
    second = spec["second"]
    result = {
        "dataset": name,
        "method": method,
        "n_obs": mdata.n_obs,
        "n_rna": mdata["rna"].n_vars,
        f"n_{second}": mdata[second].n_vars,
    }
    data_key = "atac_layer" if second == "atac" else "protein_layer"
    modalities = {"rna_layer": "rna", data_key: second}
    train_kwargs = {
        "max_epochs": spec["max_epochs"],
        "batch_size": BATCH_SIZE,
        "early_stopping": True,
        "enable_progress_bar": False,
    }
    observed_batch = sorted(mdata.obs[spec["batch_key"]].astype(str).unique())[0]
    start = time.perf_counter()
    is_ours = method.startswith("MultiVAE")
    if method == KNN_BASELINE:
        latent, predicted = knn_baseline(mdata, hidden, name)
        result["train_s"] = time.perf_counter() - start
        result.update(latent_metrics(mdata, latent, name))
        result.update(per_feature_pearson(predicted, truth, per_10k=name == "snareseq"))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(result)
        return
    if is_ours:
        from scgexp.multivae import MultiVAE

        presence = {"rna" if second == "atac" else "protein": "has_hidden_mod"}
        MultiVAE.setup_mudata(
            mdata, batch_key=spec["batch_key"], presence_keys=presence, modalities=modalities
        )
        model = MultiVAE(mdata, **VARIANTS.get(method, {}))
        model.train(**train_kwargs)
    elif method.startswith("MULTIVI"):
        scvi.model.MULTIVI.setup_mudata(mdata, batch_key=spec["batch_key"], modalities=modalities)
        model = scvi.model.MULTIVI(mdata)
        model.train(**train_kwargs, **ANCHOR_VARIANTS.get(method, {}))
    else:
        scvi.model.TOTALVI.setup_mudata(mdata, batch_key=spec["batch_key"], modalities=modalities)
        model = scvi.model.TOTALVI(mdata)
        model.train(**train_kwargs)
    train_s = time.perf_counter() - start
    key = next(k for k in ("train_loss", "train_loss_epoch", "elbo_train") if k in model.history)
    epochs = len(model.history[key])
    result.update(train_s=train_s, epochs=epochs, s_per_epoch=train_s / epochs)
    result["early_stopped"] = epochs < spec["max_epochs"]
    latent = model.get_latent_representation()
    if method in spec["methods"]:
        np.save(RESULTS / f"multivae_{name}_{method}_latent.npy", latent)
    result.update(latent_metrics(mdata, latent, name))

    idx = np.flatnonzero(hidden)
    if name == "snareseq":  # RNA of the hidden cells from their ATAC
        if is_ours:
            predicted = model.predict(mdata[idx], source="atac", target="rna").X
        else:  # MULTIVI encodes the cells from ATAC alone, as their RNA rows are zero
            predicted = model.get_normalized_expression(indices=idx, return_numpy=True) * 1e4
        result.update(per_feature_pearson(np.asarray(predicted), truth, per_10k=True))
    else:  # proteins of the hidden batch from RNA, decoded as the batch with proteins
        if is_ours:
            predicted = model.predict(
                mdata[idx], source="rna", target="protein", transform_batch=observed_batch
            ).X
        else:
            _, predicted = model.get_normalized_expression(  # the mean of 25 draws, not one
                indices=idx,
                transform_batch=[observed_batch],
                gene_list=mdata["rna"].var_names[:1],  # proteins only are scored
                n_samples=25,
                return_mean=True,
                return_numpy=True,
            )
        result.update(per_feature_pearson(np.asarray(predicted), truth, per_10k=False))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


COLUMNS = [
    ("nmi", "NMI", 3),
    ("ari", "ARI", 3),
    ("silhouette_label", "cell-type ASW", 3),
    ("silhouette_batch", "batch ASW", 3),
    ("pearson_mean", "cross-modal Pearson (mean)", 3),
    ("pearson_median", "cross-modal Pearson (median)", 3),
    ("s_per_epoch", "s/epoch", 2),
    ("epochs", "epochs", 0),
    ("early_stopped", "early stop", 0),
    ("train_s", "train s", 1),
    ("peak_rss_mb", "peak RSS MB", 0),
]


def write_table(results: list[dict], command: str) -> str:
    lines = [
        "# MultiVAE benchmark",
        "",
        f"Command: `{command}` (1 CPU thread per run, batch size {BATCH_SIZE}, seed {SEED}, "
        "each method in its own process, default settings of every model; rows named "
        '"MultiVAE (...)" are variants run with `--methods "<name>"`).',
        "",
        environment_line(results),
        "",
    ]
    for name, spec in DATASETS.items():
        rows = [r for r in results if r["dataset"] == name]
        if not rows:
            continue
        second = spec["second"]
        what = (
            "RNA of 20% of cells hidden, predicted from ATAC (per-gene Pearson, log1p per 10k)"
            if name == "snareseq"
            else "proteins of one batch hidden, predicted from RNA (per-protein Pearson, log1p)"
        )
        lines += [
            f"## {name} ({rows[0]['n_obs']} cells; {rows[0]['n_rna']} genes, "
            f"{rows[0][f'n_{second}']} {second} features)",
            "",
            f"Up to {spec['max_epochs']} epochs for every model, early stopping on. "
            f"Cross-modal: {what}.",
            "",
            "| method | " + " | ".join(c[1] for c in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        for r in rows:
            cells = [fmt(r.get(k), d) if d else fmt(r.get(k)) for k, _, d in COLUMNS]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        ours = next((r for r in rows if r["method"] == "MultiVAE"), None)
        anchors = [r for r in rows if not r["method"].startswith("MultiVAE")]
        for anchor in anchors if ours else []:
            parts = []
            for key in (
                "nmi",
                "ari",
                "silhouette_label",
                "silhouette_batch",
                "pearson_mean",
                "s_per_epoch",
                "peak_rss_mb",
            ):
                a, b = ours.get(key), anchor.get(key)
                if a is not None and b:
                    parts.append(f"{key} {a / b:.2f}")
            lines += ["", f"Ratios MultiVAE / {anchor['method']}: " + ", ".join(parts) + "."]
        if any(r["method"] == KNN_BASELINE for r in rows):
            lines += [
                "",
                f"{KNN_BASELINE}: no training; latent "
                + ("LSI of ATAC" if name == "snareseq" else "PCA of RNA")
                + f", prediction the mean of the {N_NEIGHBOURS} nearest cells with the hidden "
                "modality (a cell-independent prediction has Pearson 0).",
            ]
        lines.append("")
    text = "\n".join(lines)
    (RESULTS / "multivae.md").write_text(text)
    return text


def figures(results: list[dict]) -> None:
    import anndata as ad
    import matplotlib
    import mudata as md

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    metrics = ["nmi", "ari", "silhouette_label", "pearson_mean"]
    rows = [r for r in results if r["dataset"] == "snareseq"]
    if rows:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            values = [r.get(m) or 0.0 for m in metrics]
            ax.bar(np.arange(len(metrics)) + i * width, values, width, label=r["method"])
        labels = ["NMI", "ARI", "cell-type ASW", "cross-modal Pearson (mean)"]
        ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, labels, rotation=15)
        ax.set_ylim(0, 1)
        ax.set_title("SNARE-seq (RNA + ATAC)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        fig.savefig(FIGURES / "multivae_benchmark_metrics.png", dpi=120)
        plt.close(fig)

    shown = [m for m in DATASETS["snareseq"]["methods"] if m != KNN_BASELINE]
    paths = {m: RESULTS / f"multivae_snareseq_{m}_latent.npy" for m in shown}
    if missing := [m for m, path in paths.items() if not path.exists()]:
        print(f"UMAP figure kept as it was: no saved latent for {', '.join(missing)}.")
        return
    mdata = md.read_h5mu(DATA / DATASETS["snareseq"]["file"])
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.5))
    for ax, method in zip(np.atleast_1d(axes), shown, strict=True):
        view = ad.AnnData(np.zeros((mdata.n_obs, 1), dtype=np.float32), obs=mdata.obs.copy())
        view.obsm["X_emb"] = np.load(paths[method])
        _patch_scanpy_knn()
        sc.pp.neighbors(view, use_rep="X_emb", random_state=SEED)
        sc.tl.umap(view, random_state=SEED)
        sc.pl.umap(view, color="cell_type", ax=ax, show=False, title=method, legend_fontsize=6)
    fig.tight_layout()
    fig.savefig(FIGURES / "multivae_snareseq_umap.png", dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent; the benchmark needs ../shared/data.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(parents=True, exist_ok=True)
    cache = RESULTS / "multivae_raw.json"
    results = json.loads(cache.read_text()) if cache.exists() else []
    for name in args.datasets:
        for method in args.methods or DATASETS[name]["methods"]:
            known = [*DATASETS[name]["methods"], *VARIANTS]
            known += list(ANCHOR_VARIANTS) if name == "snareseq" else []
            if method not in known:
                continue
            results = [r for r in results if (r["dataset"], r["method"]) != (name, method)]
            start = time.perf_counter()
            result = run_isolated(run_one, name, method)
            results.append(result)
            print(f"{name} {method}: {time.perf_counter() - start:.0f} s {result}", flush=True)
            cache.write_text(json.dumps(results, indent=1))

    def rank(method: str) -> int:
        return {"MultiVAE": 0, KNN_BASELINE: 3}.get(method, 1 if method in VARIANTS else 2)

    results.sort(key=lambda r: (list(DATASETS).index(r["dataset"]), rank(r["method"])))
    print(write_table(results, "python benchmarks/bench_multivae.py"))
    if not args.no_figures:
        figures(results)


if __name__ == "__main__":
    main()
