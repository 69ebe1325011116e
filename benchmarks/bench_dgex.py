"""Benchmark DGEX against LinearRegression, RidgeCV and 10-NN regression, in one run.

Tasks (choose with --tasks):
  cellbench  real single-cell data: train on plates p1+p2, test on p3 (../shared/data)
  bulk       simulated bulk data from scgexp.data (>= 50k training samples, 943 -> 9,000 genes)
  l1000      the cellbench model applied to real L1000 landmark profiles with rank mapping

    python benchmarks/bench_dgex.py --tasks cellbench l1000
    python benchmarks/bench_dgex.py --tasks bulk --bulk-hidden 1000 --bulk-epochs 12

Writes benchmarks/results/dgex_<tasks>.md (e.g. ``dgex_cellbench_l1000.md``) and figures into
docs/_static/.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
import warnings
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scvi
import torch
from _common import shared_file
from sklearn.linear_model import LinearRegression, Ridge, RidgeCV
from sklearn.neighbors import KNeighborsRegressor

import scgexp

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
STATIC = ROOT / "docs" / "_static"
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class RidgeSubsetCV(Ridge):
    """Ridge whose alpha is chosen by RidgeCV (efficient leave-one-out) on <= 500 targets.

    RidgeCV keeps an (n_samples x n_targets) array per alpha, which does not fit in memory at
    D-GEX scale (50k samples x 9,000 targets); one alpha shared by all targets is what RidgeCV
    picks by default anyway.
    """

    def fit(self, x, y):
        columns = np.random.default_rng(0).choice(y.shape[1], min(500, y.shape[1]), False)
        self.alpha = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(x, y[:, columns]).alpha_
        return super().fit(x, y)


def run_anchors(x_train, y_train, x_test) -> dict[str, dict]:
    anchors = {
        "LinearRegression": LinearRegression(),
        "Ridge (CV alpha)": RidgeSubsetCV(),
        "KNN (k=10)": KNeighborsRegressor(n_neighbors=10, n_jobs=1),
    }
    out = {}
    for name, estimator in anchors.items():
        logging.getLogger("bench").warning("fitting %s", name)
        _, fit_s = timed(lambda e=estimator: e.fit(x_train, y_train))
        pred, predict_s = timed(lambda e=estimator: e.predict(x_test))
        out[name] = {"pred": pred.astype(np.float32), "fit_s": fit_s, "predict_s": predict_s}
    return out


def run_dgex(train: ad.AnnData, test_landmarks: ad.AnnData, max_epochs=200, **model_kwargs):
    scvi.settings.seed = 0
    scgexp.model.DGEX.setup_anndata(train)
    model = scgexp.model.DGEX(train, **model_kwargs)
    _, fit_s = timed(lambda: model.train(max_epochs=max_epochs, enable_progress_bar=False))
    epochs = len(model.history["mae_validation"])
    predicted, predict_s = timed(lambda: model.predict(test_landmarks, return_std=True))
    return {
        "model": model,
        "pred": predicted.X,
        "std": predicted.layers["std"],
        "fit_s": fit_s,
        "predict_s": predict_s,
        "epochs": epochs,
        "s_per_epoch": fit_s / epochs,
    }


def score(results: dict, truth: np.ndarray) -> pd.DataFrame:
    gene_mae = {name: np.abs(r["pred"] - truth).mean(0) for name, r in results.items()}
    rows = {}
    for name, r in results.items():
        row = {"MAE": float(gene_mae[name].mean())}
        for other in results:
            if other != name and name == "DGEX":
                row[f"genes better than {other}"] = float(
                    np.mean(gene_mae["DGEX"] < gene_mae[other])
                )
        row["fit s"] = r["fit_s"]
        row["predict s"] = r["predict_s"]
        rows[name] = row
    frame = pd.DataFrame(rows).T
    frame["MAE vs LinearRegression"] = frame["MAE"] / frame.loc["LinearRegression", "MAE"]
    return frame


def figures(name: str, results: dict, truth: np.ndarray, gene_names) -> None:
    gene_mae = {k: np.abs(r["pred"] - truth).mean(0) for k, r in results.items()}
    anchors = [k for k in results if k != "DGEX"]
    best = min(anchors, key=lambda k: gene_mae[k].mean())
    fig, axes = plt.subplots(1, 5, figsize=(22, 4.2))
    ax = axes[0]
    ax.scatter(gene_mae[best], gene_mae["DGEX"], s=3, alpha=0.4)
    lim = [0, max(gene_mae[best].max(), gene_mae["DGEX"].max())]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(
        xlabel=f"per-gene MAE, {best}",
        ylabel="per-gene MAE, DGEX",
        title=f"{name}: DGEX below the line in {np.mean(gene_mae['DGEX'] < gene_mae[best]):.1%}",
    )
    variable = np.argsort(-truth.std(0))[:4]
    for ax, j in zip(axes[1:], variable, strict=True):
        ax.scatter(truth[:, j], results["DGEX"]["pred"][:, j], s=4, alpha=0.5, label="DGEX")
        ax.scatter(truth[:, j], results[best]["pred"][:, j], s=4, alpha=0.3, label=best)
        lims = [truth[:, j].min(), truth[:, j].max()]
        ax.plot(lims, lims, "k--", lw=1)
        ax.set(xlabel="observed", ylabel="predicted", title=str(gene_names[j]))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(STATIC / f"dgex_{name}.png", dpi=100)
    plt.close(fig)


def load_cellbench():
    adata = ad.read_h5ad(shared_file(DATA / "scrna" / "cellbench_5celllines_celseq2_3plates.h5ad"))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    landmarks = pd.read_csv(shared_file(DATA / "dgex" / "dgex_landmarks_943_gpl96.tsv"), sep="\t")
    targets = pd.read_csv(shared_file(DATA / "dgex" / "dgex_targets_9520_gpl96.tsv"), sep="\t")
    keep = adata.var_names.isin(landmarks["ensembl"]) | adata.var_names.isin(targets["ensembl"])
    adata = adata[:, keep].copy()
    scgexp.data.mark_landmarks(adata, landmarks["ensembl"])
    adata.X = adata.X.toarray()
    return adata, landmarks


def task_cellbench(model_kwargs) -> tuple[dict, object]:
    adata, _ = load_cellbench()
    is_test = (adata.obs["batch"] == "p3").to_numpy()
    train, test = adata[~is_test].copy(), adata[is_test].copy()
    lm = train.var["landmark"].to_numpy()
    results = run_anchors(train.X[:, lm], train.X[:, ~lm], test.X[:, lm])
    results["DGEX"] = run_dgex(train, test[:, lm], **model_kwargs)
    truth = test.X[:, ~lm]
    table = score(results, truth)
    figures("cellbench", results, truth, test.var_names[~lm])
    meta = {
        "n_train": int(train.n_obs),
        "n_test": int(test.n_obs),
        "n_landmarks": int(lm.sum()),
        "n_targets": int((~lm).sum()),
        "epochs": results["DGEX"]["epochs"],
        "s_per_epoch": results["DGEX"]["s_per_epoch"],
    }
    return {"table": table, "meta": meta}, results["DGEX"]["model"]


def task_bulk(model_kwargs, n_train: int) -> dict:
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=n_train + 5_000,
        n_landmarks=943,
        n_targets=9_000,
        n_programs=300,
        n_tissues=30,
        seed=0,
    )
    train, test = adata[:n_train].copy(), adata[n_train:].copy()
    del adata
    lm = train.var["landmark"].to_numpy()
    results = run_anchors(train.X[:, lm], train.X[:, ~lm], test.X[:, lm])
    results["DGEX"] = run_dgex(train, test[:, lm], **model_kwargs)
    truth = test.X[:, ~lm]
    table = score(results, truth)
    figures("bulk", results, truth, test.var_names[~lm])
    meta = {
        "n_train": n_train,
        "n_test": 5_000,
        "n_landmarks": 943,
        "n_targets": 9_000,
        "epochs": results["DGEX"]["epochs"],
        "s_per_epoch": results["DGEX"]["s_per_epoch"],
        "peak_rss_gb": peak_rss_gb(),
    }
    return {"table": table, "meta": meta}


def task_l1000(model) -> dict:
    l1000 = ad.read_h5ad(shared_file(DATA / "dgex" / "cmap_l1000_level3_A375_377x978.h5ad"))
    _, landmarks = load_cellbench()
    symbol_to_ensembl = dict(zip(landmarks["symbol"], landmarks["ensembl"], strict=True))
    l1000 = l1000[:, l1000.var_names.isin(symbol_to_ensembl)].copy()
    l1000.var_names = [symbol_to_ensembl[s] for s in l1000.var_names]
    matched = int(model.landmark_names.isin(l1000.var_names).sum())
    mapped = model.predict(l1000, rank_map=True, fill_missing=True, return_std=True)
    naive = model.predict(l1000, rank_map=False, fill_missing=True)
    # One cell line: ranks across profiles stretch each gene over the training range (the
    # share in range then holds by construction); ranks within each profile do not.
    per_sample = model.predict(l1000, rank_map="sample", fill_missing=True)
    train_targets = model.adata[:, model.target_names].X
    low, high = np.percentile(train_targets, [0.5, 99.5])

    def in_range(values):
        return float(np.mean((values >= low) & (values <= high)))

    profile_r = float(np.corrcoef(mapped.X.mean(0), train_targets.mean(0))[0, 1])
    return {
        "meta": {
            "n_profiles": int(l1000.n_obs),
            "landmarks_matched": matched,
            "landmarks_in_model": len(model.landmark_names),
            "share_in_training_range_rank_mapped": in_range(mapped.X),
            "share_in_training_range_naive": in_range(naive.X),
            "share_in_training_range_rank_mapped_per_sample": in_range(per_sample.X),
            "mean_profile_r_rank_mapped_per_sample": float(
                np.corrcoef(per_sample.X.mean(0), train_targets.mean(0))[0, 1]
            ),
            "mean_profile_r_with_training_mean_rank_mapped": profile_r,
            "mean_profile_r_naive": float(
                np.corrcoef(naive.X.mean(0), train_targets.mean(0))[0, 1]
            ),
            "median_predicted_std": float(np.median(mapped.layers["std"])),
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["cellbench", "l1000", "bulk"])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bulk-hidden", type=int, default=2000, help="DGEX n_hidden on bulk")
    parser.add_argument("--bulk-epochs", type=int, default=200, help="DGEX max_epochs on bulk")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    STATIC.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out, lines = (
        {},
        [
            "# DGEX benchmark",
            "",
            "Command: `python benchmarks/bench_dgex.py --tasks "
            + " ".join(args.tasks)
            + f" --n-train {args.n_train} --bulk-hidden {args.bulk_hidden}"
            f" --bulk-epochs {args.bulk_epochs} --threads {args.threads}`",
            "",
        ],
    )
    model = None
    for task in args.tasks:
        if task == "cellbench" or (task == "l1000" and model is None):
            result, model = task_cellbench({})
            out["cellbench"] = result
        if task == "bulk":
            kwargs = {"n_hidden": args.bulk_hidden, "max_epochs": args.bulk_epochs}
            out["bulk"] = task_bulk(kwargs, args.n_train)
        if task == "l1000":
            out["l1000"] = task_l1000(model)
        print(task, "done", flush=True)
    for task, result in out.items():
        lines += [f"## {task}", "", "```", json.dumps(result["meta"], indent=1), "```", ""]
        if "table" in result:
            lines += [result["table"].to_markdown(floatfmt=".4g"), ""]
    (RESULTS / f"dgex_{'_'.join(args.tasks)}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
