"""Benchmark SAILER against scvi-tools PEAKVI and LSI on scATAC-seq (real and simulated).

Data: the ``atac`` modality of SNARE-seq mouse cortex (batch = library, labels ``cell_type``);
a random subset of 400 of its cells (small-data check); and ``scgexp.data.simulate_scatac``
(2,000 cells, 3,000 peaks, 3 batches, each about twice as deep as the previous: depth and batch
strongly confounded, cell types independent of both), also at 400 cells (small-data check with
a known truth: the SNARE-seq subset, about 33 cells per library with a median of 82 open peaks,
has no structure any method finds).
Methods: PEAKVI (same batch key, same epoch budget and KL warm-up, early stopping), LSI (TF-IDF
of binarised peaks with each cell scaled to unit length, truncated SVD to 20 components, first
dropped; ``_common.lsi``), SAILER with its default invariance (``"both"``) and
the ablation ``None`` / ``"mi"`` / ``"adversarial"``.
Metrics: NMI/ARI of Leiden clusters against cell types (best over resolutions, as scib does),
cell-type silhouette, batch silhouette and iLISI (scib-metrics); mutual information between
the latent and log depth (mean over dimensions of scikit-learn ``mutual_info_regression``;
depth = open peaks per cell + uniform(0, 1) noise, then log) and between the latent and batch
(``mutual_info_classif``); seconds per epoch, seconds to early stop, peak RSS.

Each (dataset, method) runs in its own process (1 CPU thread), so peak memory is per method.

Run from the project root::

    python benchmarks/bench_sailer.py     # writes benchmarks/results/sailer.md, figures
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from _common import (
    best_leiden,
    environment_line,
    fmt,
    lsi,
    run_isolated,
    shared_file,
    slug,
    store_result,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multimodal"
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "_static"
SEED = 0
BATCH_SIZE = 128
COMMAND = "python benchmarks/bench_sailer.py"

# Epoch budgets (equal for every neural model on a data set; early stopping may end sooner).
# On the simulator both models train to early stop (400: SAILER's default budget there); the
# SNARE-seq budgets fit the CPU. The invariance ablation runs on every data set.
ANCHORS = ["SAILER", "PEAKVI", "LSI"]
ABLATION = ["SAILER (None)", "SAILER (mi)", "SAILER (adversarial)"]
DATASETS = {
    "simulated": {"max_epochs": 400, "methods": ANCHORS + ABLATION},
    "simulated_small": {"max_epochs": 400, "methods": ANCHORS + ABLATION},
    "snareseq_small": {"max_epochs": 100, "methods": ANCHORS + ABLATION},
    "snareseq_1500": {"max_epochs": 100, "methods": ANCHORS},
    "snareseq": {"max_epochs": 60, "methods": ANCHORS + ABLATION},
}
METHODS = ANCHORS + ABLATION
INVARIANCE = {"SAILER": "both", "SAILER (None)": None, "SAILER (mi)": "mi"}
INVARIANCE["SAILER (adversarial)"] = "adversarial"


def load(name: str):
    """AnnData with integer peak counts in ``X``, ``obs['batch']`` and ``obs['cell_type']``."""
    from scipy import sparse

    if name.startswith("simulated"):
        from scgexp.data import simulate_scatac

        n_cells = 400 if name == "simulated_small" else 2000
        adata = simulate_scatac(n_cells=n_cells, n_peaks=3000, n_batches=3, seed=SEED)
        del adata.layers["true_open"]
    else:
        import mudata

        adata = mudata.read_h5mu(shared_file(DATA / "snareseq_mouse_cortex_rna_atac_10309.h5mu"))[
            "atac"
        ]
        adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
        if name in ("snareseq_small", "snareseq_1500"):
            n_cells = 400 if name == "snareseq_small" else 1500
            rng = np.random.default_rng(SEED)
            adata = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()
            adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    return adata


# PEAKVI's model arguments by method name (its default latent is √(√peaks) wide: 7 dimensions
# on 3,000 peaks, against SAILER's 10).
PEAKVI_VARIANTS = {"PEAKVI": {}, "PEAKVI (n_latent=10)": {"n_latent": 10}}


def noisy_log_depth(adata) -> np.ndarray:
    """log(open peaks + uniform(0, 1)): without the noise, ties inflate the kNN MI estimate."""
    rng = np.random.default_rng(SEED)
    n_open = np.asarray((adata.X > 0).sum(1)).ravel()
    return np.log(n_open + rng.uniform(0, 1, size=adata.n_obs))


def whole_latent_metrics(adata, latent: np.ndarray) -> dict:
    """Depth R² and batch balanced accuracy of 15-NN predictors from the whole latent (5-fold).

    ``adata``: the benchmark data set (``load``) that ``latent`` embeds.
    """
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    log_depth = noisy_log_depth(adata)
    batches = adata.obs["batch"].astype(str).to_numpy()
    folds = KFold(5, shuffle=True, random_state=0)
    r2 = cross_val_score(KNeighborsRegressor(15), latent, log_depth, cv=folds, scoring="r2")
    stratified = StratifiedKFold(5, shuffle=True, random_state=0)
    accuracy = cross_val_score(
        KNeighborsClassifier(15), latent, batches, cv=stratified, scoring="balanced_accuracy"
    )
    return {
        "n_latent": latent.shape[1],
        "depth_r2": float(r2.mean()),
        "batch_accuracy": float(accuracy.mean()),
    }


def run_seeds(dataset: str, methods: list[str], seeds: list[int], cache) -> list[dict]:
    """Train each method at each training seed (``run_one``, each in its own process).

    Adds the whole-latent metrics to each row and caches it in ``cache`` (JSON, one row per
    data set, method and seed); returns all cached rows.
    """
    adata = load(dataset)
    rows: list[dict] = []
    for seed in seeds:
        for method in methods:
            result = run_isolated(run_one, dataset, method, seed)
            result["train_seed"] = seed
            latent = np.load(latent_path(dataset, method, seed))
            result.update(whole_latent_metrics(adata, latent))
            rows = store_result(cache, result, ("dataset", "method", "train_seed"))
            print(f"{method} seed {seed}: depth R² {result['depth_r2']:.3f}", flush=True)
    return rows


def mean_sd_table(rows: list[dict], methods: list[str], keys: list[tuple[str, str]]) -> list[str]:
    """Markdown table lines: one row per method, each ``(key, title)`` as mean ± SD over seeds."""
    lines = [
        "| method | seeds | " + " | ".join(title for _, title in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        if not own:
            continue
        cells = []
        for key, _ in keys:
            values = np.array([r[key] for r in own], dtype=float)
            digits = 0 if key == "n_latent" else 4 if key == "mi_depth" else 3
            cells.append(
                f"{values.mean():.{digits}f}"
                + (f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 and digits else "")
            )
        lines.append(f"| {method} | {len(own)} | " + " | ".join(cells) + " |")
    return lines


def variant_tables(rows: list[dict], variants, keys, first_column: str = "variant") -> list[str]:
    """Markdown lines: per data set, one row per variant, each key as mean ± SD over seeds.

    ``keys``: ``(result key, column title, digits)``; a column no run of a variant has is "—".
    """
    lines = []
    for dataset in [d for d in DATASETS if any(r["dataset"] == d for r in rows)]:
        titles = " | ".join(title for _, title, _ in keys)
        lines += ["", f"## {dataset}", "", f"| {first_column} | seeds | {titles} |"]
        lines.append("|---" * (len(keys) + 2) + "|")
        for variant in variants:
            runs = [r for r in rows if (r["dataset"], r["method"]) == (dataset, variant)]
            if not runs:
                continue
            cells = []
            for key, _, digits in keys:
                values = np.array([r.get(key, np.nan) for r in runs], dtype=float)
                if np.isnan(values).all():
                    cells.append("—")
                    continue
                spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
                cells.append(f"{values.mean():.{digits}f}{spread}")
            lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def latent_metrics(adata, latent: np.ndarray) -> dict:
    import scanpy as sc
    import scib_metrics
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression
    from sklearn.neighbors import NearestNeighbors

    labels = adata.obs["cell_type"].astype(str).to_numpy()
    batches = adata.obs["batch"].astype(str).to_numpy()
    emb = np.asarray(latent, dtype=np.float32)
    view = sc.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=adata.obs.copy())
    view.obsm["X_emb"] = emb
    # Exact neighbours (scanpy's approximate path fails on scipy sparse arrays above 8,192 cells).
    sc.pp.neighbors(
        view, use_rep="X_emb", n_neighbors=15, transformer="sklearn", random_state=SEED
    )
    best = best_leiden(view, labels, np.arange(0.2, 2.01, 0.2), SEED)
    k = min(90, adata.n_obs - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(emb).kneighbors(emb)
    log_depth = noisy_log_depth(adata)
    mi_kwargs = {"n_neighbors": 3, "random_state": SEED}
    return {
        "nmi": best["nmi"],
        "ari": best["ari"],
        "silhouette_label": float(scib_metrics.silhouette_label(emb, labels)),
        "silhouette_batch": float(scib_metrics.silhouette_batch(emb, labels, batches)),
        "ilisi": float(scib_metrics.ilisi_knn(NeighborsResults(indices, distances), batches)),
        "mi_depth": float(np.mean(mutual_info_regression(emb, log_depth, **mi_kwargs))),
        "mi_batch": float(np.mean(mutual_info_classif(emb, batches, **mi_kwargs))),
    }


def latent_path(name: str, method: str, train_seed: int = SEED) -> Path:
    suffix = "" if train_seed == SEED else f"_seed{train_seed}"
    return RESULTS / f"sailer_{name}_{slug(method)}{suffix}_latent.npy"


def run_one(
    name: str, method: str, queue, train_seed: int = SEED, sailer_kwargs: dict | None = None
) -> None:
    """Train one method on one dataset and put its metrics on the queue (in a subprocess).

    ``train_seed`` seeds the training only (initial weights, minibatches); the data stay the same.
    ``sailer_kwargs`` (SAILER only) replace the method's model arguments.
    """
    import logging
    import warnings

    import scvi
    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    scvi.settings.seed = train_seed
    adata = load(name)
    max_epochs = DATASETS[name]["max_epochs"]
    kl_warmup = min(50, max_epochs // 3)  # equal KL annealing for both neural models
    result = {"dataset": name, "method": method, "n_obs": adata.n_obs, "n_vars": adata.n_vars}
    start = time.perf_counter()
    if method == "LSI":
        latent = lsi(adata.X, seed=SEED)
        result.update(train_s=time.perf_counter() - start, epochs=None, s_per_epoch=None)
    else:
        if method.startswith("PEAKVI"):
            scvi.model.PEAKVI.setup_anndata(adata, batch_key="batch")
            model = scvi.model.PEAKVI(adata, **PEAKVI_VARIANTS[method])
            train_kwargs = {"n_epochs_kl_warmup": kl_warmup, "early_stopping_patience": 20}
        else:
            from scgexp.sailer import SAILER

            SAILER.setup_anndata(adata, batch_key="batch")
            model = SAILER(adata, **(sailer_kwargs or {"invariance": INVARIANCE[method]}))
            train_kwargs = {
                "n_epochs_kl_warmup": kl_warmup,
                "n_epochs_warmup": min(10, max_epochs // 10),
            }
        model.train(
            max_epochs=max_epochs,
            batch_size=BATCH_SIZE,
            early_stopping=True,
            enable_progress_bar=False,
            **train_kwargs,
        )
        train_s = time.perf_counter() - start
        epochs = len(model.history["elbo_train"])
        result.update(train_s=train_s, epochs=epochs, s_per_epoch=train_s / epochs)
        latent = model.get_latent_representation()
    np.save(latent_path(name, method, train_seed), latent)
    result.update(latent_metrics(adata, latent))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


COLUMNS = [
    ("nmi", "NMI", 3),
    ("ari", "ARI", 3),
    ("silhouette_label", "cell-type ASW", 3),
    ("silhouette_batch", "batch ASW", 3),
    ("ilisi", "iLISI", 3),
    ("mi_depth", "MI depth (nats)", 4),
    ("mi_batch", "MI batch (nats)", 4),
    ("s_per_epoch", "s/epoch", 2),
    ("epochs", "epochs", 0),
    ("train_s", "train s", 1),
    ("peak_rss_mb", "peak RSS MB", 0),
]


def write_table(results: list[dict]) -> str:
    lines = [
        "# SAILER benchmark",
        "",
        f"Command: `{COMMAND}` (1 CPU thread per run, batch size {BATCH_SIZE}, seed 0; epoch "
        "budget per data set equal for SAILER and PEAKVI, both with early stopping and the same "
        "KL warm-up, a third of the budget up to 50 epochs).",
        "",
        environment_line(results),
        "",
        'SAILER = default invariance `"both"`; `SAILER (x)` = ablation. MI depth: mean over '
        "latent dimensions of `mutual_info_regression(z, log(open peaks + U(0, 1)))`; MI batch: "
        "`mutual_info_classif(z, batch)`. Batch ASW and iLISI: 1 = well mixed.",
        "",
    ]
    for name, spec in DATASETS.items():
        rows = [r for r in results if r["dataset"] == name]
        if not rows:
            continue
        lines += [
            f"## {name} ({rows[0]['n_obs']} cells × {rows[0]['n_vars']} peaks, "
            f"up to {spec['max_epochs']} epochs)",
            "",
            "| method | " + " | ".join(c[1] for c in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        for r in rows:
            cells = [fmt(r.get(k), d) for k, _, d in COLUMNS]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        peakvi = next((r for r in rows if r["method"] == "PEAKVI"), None)
        if peakvi is not None:
            lines += ["", "Ratios vs PEAKVI (method / PEAKVI):", ""]
            for r in rows:
                if not r["method"].startswith("SAILER"):
                    continue
                parts = []
                for key in ("nmi", "ari", "ilisi", "mi_depth", "mi_batch", "s_per_epoch"):
                    a, b = r.get(key), peakvi.get(key)
                    if a is not None and b:
                        parts.append(f"{key} {a / b:.2f}")
                lines.append(f"- {r['method']}: " + ", ".join(parts))
        lines.append("")
    text = "\n".join(lines)
    (RESULTS / "sailer.md").write_text(text)
    return text


def figures() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    for name in ("snareseq", "simulated"):
        adata = load(name)
        adata.obs["log_depth"] = np.log(np.asarray((adata.X > 0).sum(1)).ravel())
        shown = [
            m
            for m in ("SAILER", "PEAKVI", "LSI")
            if (RESULTS / f"sailer_{name}_{slug(m)}_latent.npy").exists()
        ]
        if not shown:
            continue
        fig, axes = plt.subplots(3, len(shown), figsize=(4.2 * len(shown), 11), squeeze=False)
        for j, method in enumerate(shown):
            view = sc.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=adata.obs)
            view.obsm["X_emb"] = np.load(RESULTS / f"sailer_{name}_{slug(method)}_latent.npy")
            sc.pp.neighbors(view, use_rep="X_emb", transformer="sklearn", random_state=SEED)
            sc.tl.umap(view, random_state=SEED)
            for i, key in enumerate(["cell_type", "batch", "log_depth"]):
                sc.pl.umap(
                    view,
                    color=key,
                    ax=axes[i, j],
                    show=False,
                    title=f"{method}: {key}",
                    legend_loc="on data" if key == "cell_type" else "right margin",
                    legend_fontsize=6,
                    size=6,
                )
        fig.tight_layout()
        fig.savefig(FIGURES / f"sailer_{name}_umap.png", dpi=90)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: per data set")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir() and any(name.startswith("snareseq") for name in args.datasets):
        raise SystemExit(f"{DATA} is absent; the SNARE-seq data sets need ../shared/data.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(parents=True, exist_ok=True)
    cache = RESULTS / "sailer_raw.json"
    results = json.loads(cache.read_text()) if cache.exists() else []
    for name in args.datasets:
        for method in args.methods or DATASETS[name]["methods"]:
            start = time.perf_counter()
            result = run_isolated(run_one, name, method)
            results = store_result(cache, result, ("dataset", "method"))
            print(f"{name} {method}: {time.perf_counter() - start:.0f} s {result}", flush=True)
    order = {m: i for i, m in enumerate(METHODS)}
    results.sort(key=lambda r: (list(DATASETS).index(r["dataset"]), order.get(r["method"], 99)))
    print(write_table(results))
    if not args.no_figures:
        figures()


if __name__ == "__main__":
    main()
