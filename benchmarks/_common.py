"""Helpers shared by the benchmark scripts: isolated runs and table formatting."""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import multiprocessing as mp
import os
from queue import Empty
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def slug(method: str) -> str:
    """A method name as a file-name part, e.g. ``"SAILER (mi)"`` -> ``"SAILER__mi"``."""
    return "".join(c if c.isalnum() else "_" for c in method).strip("_")


# Package versions recorded with each row: single runs have differed between environments by
# as much as between seeds.
PACKAGES = (
    "torch",
    "scvi-tools",
    "scanpy",
    "anndata",
    "numpy",
    "scikit-learn",
    "igraph",
    "leidenalg",
)


def versions() -> str:
    """The versions of :data:`PACKAGES` in this environment, e.g. ``"torch 2.13.0, ..."``."""
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in PACKAGES)


def environment_line(rows: list[dict]) -> str:
    """A Markdown line naming the environment(s) the rows ran in (``versions`` of each row)."""
    counts: dict[str, int] = {}
    for row in rows:
        key = row.get("versions", "not recorded")
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return f"Environment: {next(iter(counts))}."
    parts = [f"{n} row{'s' * (n > 1)}: {env}" for env, n in counts.items()]
    return "Environments: " + "; ".join(parts) + "."


def run_isolated(run_one: Callable, name: str, method: str, *extra) -> dict:
    """``run_one(name, method, queue, *extra)`` in a fresh process (own peak memory); its result.

    The result records the package versions (``"versions"``). A child that dies (error, out of
    memory) raises instead of leaving the caller waiting.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=run_one, args=(name, method, queue, *extra))
    process.start()
    while True:
        try:
            result = queue.get(timeout=10)
            break
        except Empty as empty:
            if not process.is_alive():
                message = f"{name} {method} failed (exit code {process.exitcode})"
                raise RuntimeError(message) from empty
    process.join()
    return {**result, "versions": versions()}


def store_result(cache: Path, result: dict, keys: tuple[str, ...]) -> list[dict]:
    """Add ``result`` to the JSON list in ``cache``, replacing the row with the same ``keys``.

    The file is re-read under a lock and replaced atomically, so several benchmark processes
    can share one cache. Returns all rows.
    """
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(cache.read_text()) if cache.exists() else []
        same = lambda row: all(row.get(k) == result.get(k) for k in keys)  # noqa: E731
        rows = [row for row in rows if not same(row)] + [result]
        partial = cache.with_suffix(".partial")
        partial.write_text(json.dumps(rows, indent=1))
        os.replace(partial, cache)
    return rows


def fmt(value, digits: int = 3) -> str:
    """A table cell: ``—`` for missing values, yes/no for flags, floats to ``digits``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def lsi(counts, n_components: int = 20, seed: int = 0) -> np.ndarray:
    """LSI of peaks: TF-IDF of the binarised matrix, truncated SVD, first component dropped.

    scikit-learn's ``TfidfTransformer`` (smooth IDF, each cell scaled to unit length). The
    first component follows depth. Used by ``bench_sailer.py`` (its LSI anchor) and
    ``bench_multivae.py`` (the kNN baseline).
    """
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    binary = (sparse.csr_matrix(counts) > 0).astype(np.float32)
    tfidf = TfidfTransformer().fit_transform(binary)
    return TruncatedSVD(n_components + 1, random_state=seed).fit_transform(tfidf)[:, 1:]


def knn_accuracy(latent: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-fold accuracy of a 15-nearest-neighbour classifier of ``labels`` (5 folds, stratified).

    Steadier than the best Leiden clustering, whose NMI / ARI move by hundredths between runs.
    """
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return cross_val_score(KNeighborsClassifier(15), latent, labels, cv=5)


def best_leiden(adata, labels: np.ndarray, resolutions: np.ndarray, seed: int = 0) -> dict:
    """NMI and ARI of the Leiden clustering (over ``resolutions``) with the best NMI, as scib does.

    ``adata`` must have a neighbour graph (``sc.pp.neighbors``); clusters go to
    ``obs["cluster"]``.
    """
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    best = {"nmi": -1.0, "ari": -1.0}
    for resolution in resolutions:
        sc.tl.leiden(
            adata,
            resolution=resolution,
            random_state=seed,
            key_added="cluster",
            flavor="igraph",
            n_iterations=2,
        )
        nmi = normalized_mutual_info_score(labels, adata.obs["cluster"])
        if nmi > best["nmi"]:
            best = {"nmi": nmi, "ari": adjusted_rand_score(labels, adata.obs["cluster"])}
    return {"nmi": float(best["nmi"]), "ari": float(best["ari"])}


def previous_rows(out) -> dict[tuple[str, str], str]:
    """The table's existing rows by (data set, method), as written."""
    if not out.exists():
        return {}
    cells = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ")]
    return {(c[0][2:], c[1]): " | ".join(c) for c in cells if c[1] != "method"}


def shared_file(path):
    """``path`` (under ``../shared/data``), or a stop that says the shared data are needed."""
    if not path.exists():
        raise SystemExit(f"{path} is absent; this benchmark needs ../shared/data.")
    return path
