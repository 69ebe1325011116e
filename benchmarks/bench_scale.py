"""Benchmark scgexp's data paths: in-memory tensors vs scvi-tools' loader, and streaming.

Two parts, each measurement in its own process (so peak memory is its own):

``loaders``
    Seconds per training epoch of every model with ``data_mode="memory"`` (registered arrays
    loaded once as tensors, minibatches gathered by index) and ``data_mode="standard"``
    (scvi-tools' ``AnnDataLoader``: an AnnData slice and a scipy densification per minibatch),
    at equal batch size, on the SNARE-seq data in ``../shared/data`` (ATAC for ZINBAutoencoder
    and SAILER, RNA for DGEX, both for MultiVAE) and on a 100k-cell simulated set. Also the
    time to iterate the loader alone (no model), which is the part the data path can change.
``stream``
    Training on a backed ``.h5ad`` (``data_mode="stream"``) at 50k, 200k and 1M simulated
    cells: peak RSS and seconds per epoch. The large files tile one 50k-cell simulation, so
    the cost is what is measured, not biology.

Run from the project root::

    python benchmarks/bench_scale.py loaders stream   # writes benchmarks/results/scale.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "multimodal"
SNARE = SHARED / "snareseq_mouse_cortex_rna_atac_10309.h5mu"
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "_static"
CACHE = Path(tempfile.gettempdir()) / "scgexp_bench_scale"
BATCH_SIZE = 128
STREAM_CELLS = (50_000, 200_000, 1_000_000)
MODELS = ("DGEX", "ZINBAutoencoder", "SAILER", "MultiVAE")


# ---------------------------------------------------------------- data


def _snare(model: str):
    import mudata as md
    import scanpy as sc

    mdata = md.read_h5mu(SNARE)
    if model == "MultiVAE":
        return mdata
    if model == "DGEX":  # D-GEX on the RNA: the 300 most expressed genes predict the others
        rna = mdata["rna"].copy()
        sc.pp.filter_cells(rna, min_counts=1)
        sc.pp.normalize_total(rna, 1e4)
        sc.pp.log1p(rna)
        top = np.argsort(-np.asarray(rna.X.mean(0)).ravel())[:300]
        rna.var["landmark"] = np.isin(np.arange(rna.n_vars), top)
        return rna
    atac = mdata["atac"].copy()
    sc.pp.filter_cells(atac, min_counts=1)
    return atac


def _simulated(model: str, n_cells: int):
    import scanpy as sc

    from scgexp import data

    if model == "MultiVAE":
        mdata = data.simulate_multiome(n_cells=n_cells, seed=0)
        del mdata["rna"].layers["true_mean"], mdata["atac"].layers["true_open"]
        return mdata
    if model == "SAILER":
        return data.simulate_scatac(n_cells=n_cells, seed=0)
    adata = data.simulate_scrna(n_cells=n_cells, n_genes=2000, seed=0)
    del adata.layers["true_mean"], adata.layers["counts"]
    if model == "DGEX":
        sc.pp.normalize_total(adata, 1e4)
        sc.pp.log1p(adata)
        adata.var["landmark"] = np.arange(adata.n_vars) < 500
    return adata


def _setup(model: str, data):
    """Register ``data`` and build the model with its defaults."""
    from scgexp import model as models

    cls = getattr(models, model)
    if model == "DGEX":
        cls.setup_anndata(data)
    elif model == "ZINBAutoencoder":
        cls.setup_anndata(data, batch_key="batch")
    elif model == "SAILER":
        cls.setup_anndata(data, batch_key="batch")
    else:
        cls.setup_mudata(data, modalities=_multivae_modalities(data))
    return cls(data)


def _multivae_modalities(mdata) -> dict:
    return {"rna_layer": "rna", "atac_layer": "atac"}


def _stream_file(n_cells: int) -> Path:
    """A backed-ready .h5ad with ``n_cells`` cells, tiled from one 50k-cell simulation."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    from scgexp import data

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"stream_{n_cells}.h5ad"
    if path.exists():
        return path
    base = data.simulate_scrna(n_cells=50_000, n_genes=1000, library_log_mean=7.0, seed=0)
    reps = n_cells // base.n_obs
    adata = ad.AnnData(
        X=sparse.vstack([base.X] * reps, format="csr"),
        obs=pd.DataFrame(
            {"batch": np.tile(base.obs["batch"].to_numpy(), reps)},
            index=[f"cell_{i}" for i in range(n_cells)],
        ),
        var=base.var,
    )
    adata.obs["batch"] = adata.obs["batch"].astype("category")
    adata.write_h5ad(path)
    return path


# ---------------------------------------------------------------- one measurement


class _EpochTimer:
    def __init__(self):
        import lightning.pytorch as pl

        class Timer(pl.Callback):
            def __init__(self):
                self.starts, self.seconds = [], []

            def on_train_epoch_start(self, trainer, pl_module):
                self.starts.append(time.perf_counter())

            def on_train_epoch_end(self, trainer, pl_module):
                self.seconds.append(time.perf_counter() - self.starts[-1])

        self.callback = Timer()


def _loader_seconds(model, mode: str) -> float:
    """Seconds to draw every training minibatch once, without the model."""
    from scgexp.dataloaders import DataSplitter

    splitter = DataSplitter(model.adata_manager, data_mode=mode, batch_size=BATCH_SIZE)
    splitter.setup()
    start = time.perf_counter()
    for _ in splitter.train_dataloader():
        pass
    return time.perf_counter() - start


def measure(model_name: str, dataset: str, mode: str, epochs: int) -> dict:
    """Train ``epochs`` epochs; return seconds per epoch, loader-only seconds and peak RSS."""
    import anndata as ad
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if dataset == "snare":
        data = _snare(model_name)
    elif dataset.startswith("sim"):
        data = _simulated(model_name, int(dataset[3:]))
    else:
        data = ad.read_h5ad(_stream_file(int(dataset[6:])), backed="r")
    model = _setup(model_name, data)
    loader = _loader_seconds(model, mode) if mode != "stream" else None
    timer = _EpochTimer().callback
    start = time.perf_counter()
    model.train(
        max_epochs=epochs,
        batch_size=BATCH_SIZE,
        data_mode=mode,
        callbacks=[timer],
        enable_progress_bar=False,
        early_stopping=False,
    )
    total = time.perf_counter() - start
    result = {
        "model": model_name,
        "dataset": dataset,
        "mode": mode,
        "n_cells": int(data.n_obs),
        "seconds_per_epoch": float(np.median(timer.seconds[1:] or timer.seconds)),
        "train_seconds": total,
        "loader_seconds": loader,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }
    if torch.cuda.is_available():
        result["gpu_utilization"] = torch.cuda.utilization()
    return result


def run_isolated(*args: str) -> dict:
    """One measurement in a fresh interpreter (its own peak RSS)."""
    out = subprocess.run(
        [sys.executable, __file__, "_one", *args], capture_output=True, text=True, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# ---------------------------------------------------------------- reports


def loaders_table(results: list[dict]) -> str:
    rows = [
        "| model | data | cells | s/epoch memory | s/epoch standard | ratio | "
        "loader s memory | loader s standard | loader ratio | loader share of epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["model"], r["dataset"], r["mode"]): r for r in results}
    for (model, dataset, mode), fast in by_key.items():
        if mode != "memory" or (model, dataset, "standard") not in by_key:
            continue
        slow = by_key[(model, dataset, "standard")]
        rows.append(
            f"| {model} | {dataset} | {fast['n_cells']:,} | {fast['seconds_per_epoch']:.1f} | "
            f"{slow['seconds_per_epoch']:.1f} | "
            f"{fast['seconds_per_epoch'] / slow['seconds_per_epoch']:.2f} | "
            f"{fast['loader_seconds']:.2f} | {slow['loader_seconds']:.2f} | "
            f"{fast['loader_seconds'] / slow['loader_seconds']:.2f} | "
            f"{slow['loader_seconds'] / slow['seconds_per_epoch']:.1%} |"
        )
    return "\n".join(rows)


def stream_table(results: list[dict]) -> str:
    rows = [
        "| cells | s/epoch | s per 1k cells | peak RSS (GB) |",
        "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["n_cells"]):
        rows.append(
            f"| {r['n_cells']:,} | {r['seconds_per_epoch']:.1f} | "
            f"{1000 * r['seconds_per_epoch'] / r['n_cells']:.3f} | {r['peak_rss_gb']:.2f} |"
        )
    return "\n".join(rows)


def stream_figure(results: list[dict]) -> None:
    import matplotlib.pyplot as plt

    results = sorted(results, key=lambda r: r["n_cells"])
    cells = [r["n_cells"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].plot(cells, [r["seconds_per_epoch"] for r in results], "o-")
    axes[0].set(xlabel="cells", ylabel="seconds per epoch", xscale="log", yscale="log")
    axes[1].plot(cells, [r["peak_rss_gb"] for r in results], "o-")
    axes[1].set(xlabel="cells", ylabel="peak RSS (GB)", xscale="log", ylim=(0, None))
    for ax in axes:
        ax.set_title("ZINBAutoencoder, backed .h5ad", fontsize=9)
    fig.tight_layout()
    fig.savefig(FIGURES / "scale_stream.png", dpi=120)


def loaders_figure(results: list[dict]) -> None:
    import matplotlib.pyplot as plt

    pairs = {}
    for r in results:
        pairs.setdefault((r["model"], r["dataset"]), {})[r["mode"]] = r
    labels, fast, slow = [], [], []
    for (model, dataset), modes in pairs.items():
        if {"memory", "standard"} <= modes.keys():
            labels.append(f"{model}\n{dataset}")
            fast.append(modes["memory"]["seconds_per_epoch"])
            slow.append(modes["standard"]["seconds_per_epoch"])
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels)), 3.2))
    ax.bar(x - 0.2, slow, 0.4, label="standard (AnnDataLoader)")
    ax.bar(x + 0.2, fast, 0.4, label="memory (scgexp)")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("seconds per epoch (CPU, 1 thread)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "scale_loaders.png", dpi=120)


def main() -> None:
    if sys.argv[1:2] == ["_one"]:  # a single measurement, in its own process
        model, dataset, mode, epochs = sys.argv[2:6]
        print("RESULT " + json.dumps(measure(model, dataset, mode, int(epochs))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["loaders", "stream"])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sim-cells", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stream-cells", nargs="+", type=int, default=list(STREAM_CELLS))
    options = parser.parse_args()
    from scgexp import model as models

    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw_path = RESULTS / "scale_raw.json"
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    if "loaders" in options.parts:
        results = []
        datasets = ([] if not SNARE.exists() else ["snare"]) + [f"sim{options.sim_cells}"]
        for model in options.models:
            if not hasattr(models, model):
                continue
            for dataset in datasets:
                for mode in ("memory", "standard"):
                    result = run_isolated(model, dataset, mode, str(options.epochs))
                    print(json.dumps(result), flush=True)
                    results.append(result)
        # Runs for some models add to (or replace) earlier runs' results for the others.
        new = {(r["model"], r["dataset"], r["mode"]) for r in results}
        earlier = raw.get("loaders", {}).get("results", [])
        kept = [r for r in earlier if (r["model"], r["dataset"], r["mode"]) not in new]
        commands = raw.get("loaders", {}).get("commands", [])
        raw["loaders"] = {"commands": [*commands, command], "results": kept + results}
        loaders_figure(raw["loaders"]["results"])
    if "stream" in options.parts:
        results = []
        for n_cells in options.stream_cells:
            _stream_file(n_cells)
            result = run_isolated("ZINBAutoencoder", f"stream{n_cells}", "stream", "1")
            print(json.dumps(result), flush=True)
            results.append(result)
        raw["stream"] = {"command": command, "results": results}
        stream_figure(results)
    raw_path.write_text(json.dumps(raw, indent=1))
    report = ["# Data paths: in-memory, standard and streaming", ""]
    if "loaders" in raw:
        report += [
            "Commands: "
            + ", ".join(f"`{c}`" for c in raw["loaders"]["commands"])
            + f" (CPU, one thread, batch {BATCH_SIZE}).",
            "",
            loaders_table(raw["loaders"]["results"]),
            "",
        ]
    if "stream" in raw:
        report += [
            f"Command: `{raw['stream']['command']}` (ZINBAutoencoder, 1,000 genes, one epoch).",
            "",
            stream_table(raw["stream"]["results"]),
            "",
        ]
    (RESULTS / "scale.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
