"""Real PBMC counts rebuilt from the file that ships inside scanpy (no download)."""

from __future__ import annotations

import numpy as np
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from scgexp.data._matrix import dense


def pbmc68k_counts() -> AnnData:
    """Return 700 real 10x PBMCs × 765 genes as raw counts, with cell types.

    scanpy ships ``pbmc68k_reduced`` with log-normalised values in ``raw.X`` (normalised to 1e4
    per cell) and each cell's whole-transcriptome total count in its ``obs["n_counts"]``. The
    counts are rebuilt as ``round(expm1(raw.X) / 1e4 * n_counts)`` (largest rounding error
    about 0.08).

    Returns
    -------
    AnnData with integer counts (float32 CSR) in ``X`` and in ``layers["counts"]``,
    ``obs["cell_type"]`` (the 10 ``bulk_labels``) and the original annotations (no batch
    column: the sample is one batch). Genes with no counts are removed. The 765 genes hold
    about a fifth of each cell's counts: the original whole-transcriptome totals are kept as
    ``obs["n_counts_all_genes"]`` and ``obs["n_genes_all_genes"]`` (renamed from ``n_counts``
    and ``n_genes``, which would not describe ``X``).

    Examples
    --------
    >>> import scgexp
    >>> adata = scgexp.data.pbmc68k_counts()
    >>> adata.shape
    (700, 765)
    """
    reduced = sc.datasets.pbmc68k_reduced()
    raw = reduced.raw.to_adata()
    lognorm = dense(raw.X)
    totals = reduced.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    counts = np.round(np.expm1(lognorm) / 1e4 * totals).astype(np.float32)
    keep = counts.sum(axis=0) > 0
    adata = AnnData(
        X=sparse.csr_matrix(counts[:, keep]),
        obs=reduced.obs.copy(),
        var=raw.var.loc[keep].copy(),
    )
    adata.obs = adata.obs.rename(
        columns={"n_counts": "n_counts_all_genes", "n_genes": "n_genes_all_genes"}
    )
    adata.obs["cell_type"] = adata.obs["bulk_labels"].astype("category")
    adata.layers["counts"] = adata.X.copy()
    adata.uns["source"] = "scanpy.datasets.pbmc68k_reduced, counts rebuilt from raw.X"
    return adata
