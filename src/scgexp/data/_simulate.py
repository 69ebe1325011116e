"""Seeded simulators with known ground truth, one per model family.

Every simulator returns sparse counts (or, for bulk data, log-expression) together with the
truth that generated them, so tests can check that a model learned something real.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from scgexp.data._checks import InputError


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def _check_arguments(sizes: dict, seed, ranges: dict | None = None) -> None:
    """Refuse bad sizes, seeds and numbers, each by its name.

    Sizes are positive whole numbers, ``seed`` a non-negative whole number or ``None``, and
    ``ranges`` maps names to ``(value, low, high)``, bounds included.
    """
    for name, value in sizes.items():
        if isinstance(value, bool) or not (isinstance(value, int | np.integer) and value > 0):
            raise InputError(f"{name} must be a positive whole number, not {value!r}.")
    if seed is not None and (
        isinstance(seed, bool) or not (isinstance(seed, int | np.integer) and seed >= 0)
    ):
        raise InputError(f"seed must be a non-negative whole number or None, not {seed!r}.")
    for name, (value, low, high) in (ranges or {}).items():
        is_number = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool) or not (is_number and low <= value <= high):
            raise InputError(f"{name} must be a number from {low} to {high}, not {value!r}.")


def _bulk_parameters(rng, n_samples, n_genes, n_programs, n_tissues) -> dict[str, np.ndarray]:
    """Draw the tissues, program activities and gene responses of :func:`simulate_bulk_expression`.

    Kept apart so that ``benchmarks/dgex_bulk_ceiling.py`` can rebuild the true response
    functions from the seed (the draws come first, in this order).
    """
    tissue = rng.integers(n_tissues, size=n_samples)
    tissue_means = rng.normal(0.0, 1.0, size=(n_tissues, n_programs))
    activity = tissue_means[tissue] + 0.5 * rng.normal(size=(n_samples, n_programs))
    n_regulators = rng.integers(1, min(4, n_programs) + 1, size=n_genes)  # 1-4 programs
    weights = np.zeros((n_genes, n_programs), dtype=np.float32)
    for g, k in enumerate(n_regulators):
        programs = rng.choice(n_programs, size=k, replace=False)
        weights[g, programs] = rng.normal(0.0, 2.0, size=k)
    return {
        "tissue": tissue,
        "tissue_means": tissue_means,
        "activity": activity,
        "weights": weights,
        "slope": rng.uniform(0.5, 2.0, size=(n_genes, n_programs)).astype(np.float32),
        "threshold": rng.normal(0.0, 1.0, size=(n_genes, n_programs)).astype(np.float32),
        "baseline": rng.normal(6.0, 2.0, size=n_genes).astype(np.float32),
    }


def simulate_bulk_expression(
    n_samples: int = 2_000,
    n_landmarks: int = 200,
    n_targets: int = 1_000,
    n_programs: int = 50,
    n_tissues: int = 10,
    noise_sd: float = 0.3,
    seed: int = 0,
) -> AnnData:
    """Simulate bulk log-expression driven by latent transcriptional programs (for DGEX).

    Generative model (per sample ``s``, gene ``g``):

    * each sample belongs to one of ``n_tissues`` tissues; a tissue sets the mean activity of
      each program, and samples vary around it: ``a_sk = mu_tk + 0.5 * N(0, 1)``;
    * a program acts on its genes through a Hill (saturating) response, as a transcription
      factor does on a promoter: ``f_gk(a) = 1 / (1 + exp(-h_gk * (a - c_gk)))`` with slope
      ``h_gk ~ U(0.5, 2)`` and threshold ``c_gk ~ N(0, 1)``;
    * each gene is regulated by 1–4 programs with signed weights ``w_gk ~ N(0, 2²)``;
      ``log2 expression = b_g + sum_k w_gk f_gk(a_sk) + noise_sd * N(0, 1)``, with baseline
      ``b_g ~ N(6, 2²)`` as in microarray data.

    Landmarks are a random subset of the genes, as in an assay designed before the programs are
    known. Linear models capture the near-linear part of each response; the saturation is what
    a nonlinear model can add.

    Parameters
    ----------
    n_samples, n_landmarks, n_targets
        Size of the data.
    n_programs
        Number of latent programs.
    n_tissues
        Number of tissues (sample groups).
    noise_sd
        Standard deviation of the independent measurement noise (log2 units).
    seed
        Random seed. It draws the whole system (the response functions too), not only the
        samples: for training and new data of one system, split one simulation.

    Returns
    -------
    AnnData with dense log2 expression in ``X``; ``var["landmark"]`` (True for landmarks);
    ``obs["tissue"]``; the program activities in ``obsm["program_activity"]``; the noise-free
    expression of the targets is not stored (it can be recomputed from ``uns["simulation"]``).

    Examples
    --------
    >>> adata = scgexp.data.simulate_bulk_expression(n_samples=500, seed=1)
    >>> int(adata.var["landmark"].sum())
    200
    """
    _check_arguments(
        {
            "n_samples": n_samples,
            "n_landmarks": n_landmarks,
            "n_targets": n_targets,
            "n_programs": n_programs,
            "n_tissues": n_tissues,
        },
        seed,
        {"noise_sd": (noise_sd, 0, np.inf)},
    )
    rng = np.random.default_rng(seed)
    n_genes = n_landmarks + n_targets
    params = _bulk_parameters(rng, n_samples, n_genes, n_programs, n_tissues)
    tissue, activity = params["tissue"], params["activity"]
    weights, slope = params["weights"], params["slope"]
    threshold, baseline = params["threshold"], params["baseline"]

    expression = np.empty((n_samples, n_genes), dtype=np.float32)
    step = max(1, 32_000_000 // (n_genes * n_programs))  # ~128 MB of responses at a time
    for start in range(0, n_samples, step):
        a = activity[start : start + step, None, :].astype(np.float32)
        response = 1.0 / (1.0 + np.exp(-slope * (a - threshold)))
        signal = np.einsum("sgk,gk->sg", response, weights)
        noise = noise_sd * rng.normal(size=signal.shape)
        expression[start : start + step] = baseline + signal + noise

    order = rng.permutation(n_genes)
    is_landmark = np.zeros(n_genes, dtype=bool)
    is_landmark[order[:n_landmarks]] = True
    adata = AnnData(
        X=expression,
        obs=pd.DataFrame(
            {"tissue": pd.Categorical([f"tissue_{t}" for t in tissue])},
            index=_names("sample", n_samples),
        ),
        var=pd.DataFrame({"landmark": is_landmark}, index=_names("gene", n_genes)),
    )
    adata.obsm["program_activity"] = activity.astype(np.float32)
    adata.uns["simulation"] = {
        "model": "simulate_bulk_expression",
        "n_landmarks": n_landmarks,
        "n_targets": n_targets,
        "n_programs": n_programs,
        "n_tissues": n_tissues,
        "noise_sd": noise_sd,
        "seed": seed,
    }
    return adata


def _cell_states(rng, n_cells: int, n_cell_types: int, n_latent: int):
    cell_type = rng.integers(n_cell_types, size=n_cells)
    centres = rng.normal(0.0, 1.5, size=(n_cell_types, n_latent))
    state = centres[cell_type] + 0.3 * rng.normal(size=(n_cells, n_latent))
    return cell_type, state


def _rna_counts(rng, state, batch, n_genes, n_batches, dropout, library_log_mean):
    n_cells, n_latent = state.shape
    loadings = rng.normal(0.0, 0.6, size=(n_latent, n_genes))
    gene_base = rng.normal(-1.0, 1.0, size=n_genes)
    batch_effect = rng.normal(0.0, 0.5, size=(n_batches, n_genes))
    log_rate = gene_base + state @ loadings + batch_effect[batch]
    rate = np.exp(log_rate)
    rate /= rate.sum(axis=1, keepdims=True)  # expression proportions per cell
    library = np.exp(rng.normal(library_log_mean, 0.5, size=(n_cells, 1)))
    mean = rate * library
    theta = np.exp(rng.normal(1.0, 0.5, size=n_genes))
    counts = rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float32)
    # Technical dropout: low-mean entries are lost more often (logistic in log mean).
    p_drop = dropout / (1.0 + np.exp(np.log(mean + 1e-8)))
    counts[rng.random(counts.shape) < p_drop] = 0.0
    return counts, mean.astype(np.float32), library.ravel()


def simulate_scrna(
    n_cells: int = 1_000,
    n_genes: int = 500,
    n_cell_types: int = 5,
    n_batches: int = 2,
    n_latent: int = 5,
    dropout: float = 0.3,
    library_log_mean: float = 8.0,
    seed: int = 0,
) -> AnnData:
    """Simulate scRNA-seq counts with cell types, batch effects, library size and dropout.

    Generative model: a cell type fixes a centre in an ``n_latent``-dimensional state space and
    cells scatter around it; gene ``g``'s expression proportion in cell ``c`` is
    ``softmax_g(b_g + z_c · W_g + beta_{batch(c), g})`` (log-linear loadings ``W`` and a
    gene-wise batch shift ``beta``); library sizes are log-normal; counts are negative binomial
    with gene-wise inverse dispersion; extra technical dropout removes a count with probability
    ``dropout / (1 + mean)``, stronger for lowly expressed entries.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_cell_types
        Number of cell types (each cell drawn uniformly).
    n_batches
        Number of batches (``batch_0``, ``batch_1``, ...), drawn independently of cell type.
    n_genes
        Number of genes.
    n_latent
        Dimensions of the cell-state space.
    dropout
        Strength of the extra technical dropout, from 0 (none) to 1.
    library_log_mean
        Mean of the log library size, 0 to 15 (8: about 3,000 counts per cell).
    seed
        Seed of the random generator. It draws the whole simulated system (cell types,
        programs, batch effects), not only the cells: for training and new data of one
        system, split one simulation (e.g. ``adata[:800]`` and ``adata[800:]``).

    Returns
    -------
    AnnData with counts (float32 CSR) in ``X`` and ``layers["counts"]``, the true NB means in
    ``layers["true_mean"]`` (dense), ``obs["cell_type"]``, ``obs["batch"]``,
    ``obs["library_size"]`` (true), the true cell states in ``obsm["true_state"]`` and
    ``uns["simulation"]``.

    Examples
    --------
    >>> adata = scgexp.data.simulate_scrna(n_cells=300, seed=0)
    >>> sorted(adata.obs["batch"].cat.categories)
    ['batch_0', 'batch_1']
    """
    _check_arguments(
        {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_cell_types": n_cell_types,
            "n_batches": n_batches,
            "n_latent": n_latent,
        },
        seed,
        {"dropout": (dropout, 0, 1), "library_log_mean": (library_log_mean, 0, 15)},
    )
    rng = np.random.default_rng(seed)
    cell_type, state = _cell_states(rng, n_cells, n_cell_types, n_latent)
    batch = rng.integers(n_batches, size=n_cells)
    counts, mean, library = _rna_counts(
        rng, state, batch, n_genes, n_batches, dropout, library_log_mean
    )
    adata = AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame(
            {
                "cell_type": pd.Categorical([f"type_{t}" for t in cell_type]),
                "batch": pd.Categorical([f"batch_{b}" for b in batch]),
                "library_size": library,
            },
            index=_names("cell", n_cells),
        ),
        var=pd.DataFrame(index=_names("gene", n_genes)),
    )
    adata.layers["counts"] = adata.X.copy()
    adata.layers["true_mean"] = mean
    adata.obsm["true_state"] = state.astype(np.float32)
    adata.uns["simulation"] = {"model": "simulate_scrna", "dropout": dropout, "seed": seed}
    return adata


def _atac_counts(rng, state, batch, n_peaks, n_batches, depth):
    n_latent = state.shape[1]
    loadings = rng.normal(0.0, 1.0, size=(n_latent, n_peaks))
    peak_base = rng.normal(-2.0, 1.0, size=n_peaks)
    batch_effect = rng.normal(0.0, 0.5, size=(n_batches, n_peaks))
    logits = peak_base + state @ loadings + batch_effect[batch]
    open_prob = 1.0 / (1.0 + np.exp(-logits))
    # Detection grows with the peak's openness (relative to the cell's mean) and the depth.
    capture = 1.0 - np.exp(-depth[:, None] * open_prob / open_prob.mean(axis=1, keepdims=True))
    observed = rng.random(open_prob.shape) < capture
    counts = observed * (1 + rng.poisson(0.3 * depth[:, None], size=observed.shape))
    return counts.astype(np.float32), open_prob.astype(np.float32)


def simulate_scatac(
    n_cells: int = 1_000,
    n_peaks: int = 2_000,
    n_cell_types: int = 5,
    n_batches: int = 2,
    n_latent: int = 5,
    depth_range: tuple[float, float] = (0.02, 0.3),
    seed: int = 0,
) -> AnnData:
    """Simulate scATAC-seq peak counts whose read depth is confounded with batch (for SAILER).

    Generative model: cells get a latent state from their cell type (as in
    :func:`simulate_scrna`); peak ``p``'s openness in cell ``c`` is
    ``open = sigmoid(b_p + z_c · W_p + beta_{batch(c), p})``, and the peak is detected with
    probability ``1 - exp(-d_c * open / mean_p(open))``, where ``d_c`` is the cell's depth (one
    draw: openness is not sampled first, so ``open`` ranks peaks but is not itself the chance
    of detection); detected peaks carry ``1 + Poisson(0.3 d_c)`` fragments. Depth is
    log-uniform within ``depth_range`` (at most 1) and shifted by batch (batch ``b`` is about
    ``2**b`` times deeper), so depth and batch are strongly confounded, as when libraries are
    sequenced to different depths; shifted depths are capped at 1 (with the default range,
    from the third batch on).

    Parameters
    ----------
    n_cells, n_cell_types, n_batches
        As in :func:`simulate_scrna`.
    n_peaks
        Number of peaks.
    n_latent
        As in :func:`simulate_scrna`.
    depth_range
        Low and high capture depth before the batch shift, ``0 < low <= high <= 1``.
    seed
        As in :func:`simulate_scrna`.

    Returns
    -------
    AnnData with fragment counts (float32 CSR) in ``X``, ``obs["cell_type"]``, ``obs["batch"]``,
    ``obs["depth"]`` (true capture depth), ``layers["true_open"]`` (the openness ``open``)
    and ``uns["simulation"]``.

    Examples
    --------
    >>> adata = scgexp.data.simulate_scatac(n_cells=300, seed=0)
    >>> adata.n_vars
    2000
    """
    _check_arguments(
        {
            "n_cells": n_cells,
            "n_peaks": n_peaks,
            "n_cell_types": n_cell_types,
            "n_batches": n_batches,
            "n_latent": n_latent,
        },
        seed,
    )
    if (
        np.ndim(depth_range) != 1
        or len(depth_range) != 2
        or not all(isinstance(d, int | float | np.integer | np.floating) for d in depth_range)
        or not 0 < depth_range[0] <= depth_range[1] <= 1
    ):
        raise InputError(
            f"depth_range must be (low, high) with 0 < low <= high <= 1, not {depth_range}."
        )
    rng = np.random.default_rng(seed)
    cell_type, state = _cell_states(rng, n_cells, n_cell_types, n_latent)
    batch = rng.integers(n_batches, size=n_cells)
    low, high = np.log(depth_range[0]), np.log(depth_range[1])
    depth = np.exp(rng.uniform(low, high, size=n_cells) + np.log(2.0) * batch)
    depth = np.minimum(depth, 1.0)
    counts, open_prob = _atac_counts(rng, state, batch, n_peaks, n_batches, depth)
    adata = AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame(
            {
                "cell_type": pd.Categorical([f"type_{t}" for t in cell_type]),
                "batch": pd.Categorical([f"batch_{b}" for b in batch]),
                "depth": depth,
            },
            index=_names("cell", n_cells),
        ),
        var=pd.DataFrame(index=[f"chr1_{i * 1000}_{i * 1000 + 500}" for i in range(n_peaks)]),
    )
    adata.layers["true_open"] = open_prob
    adata.uns["simulation"] = {"model": "simulate_scatac", "seed": seed}
    return adata


def simulate_multiome(
    n_cells: int = 1_000,
    n_genes: int = 500,
    n_peaks: int = 1_000,
    n_proteins: int = 0,
    n_cell_types: int = 5,
    n_batches: int = 2,
    missing_fraction: float = 0.0,
    seed: int = 0,
) -> MuData:
    """Simulate paired RNA + ATAC (+ protein) counts sharing one cell state (for MultiVAE).

    RNA follows :func:`simulate_scrna`, ATAC follows :func:`simulate_scatac` (depth not tied to
    batch), both driven by the same latent state, so each modality carries the cell types.
    Proteins, when asked for, are negative binomial with a cell-type-driven foreground on top of
    a per-protein background, as in CITE-seq.

    Parameters
    ----------
    n_cells, n_cell_types, n_batches
        As in :func:`simulate_scrna`.
    n_genes, n_peaks, n_proteins
        Number of features of each modality (no protein modality with ``n_proteins=0``).
    missing_fraction
        Share of cells whose ATAC (first half of those cells) or RNA (second half) is missing:
        their rows are all zero and ``obs["has_<modality>"]`` is ``False``.
    seed
        As in :func:`simulate_scrna`.

    Returns
    -------
    MuData with modalities ``rna``, ``atac`` (and ``prot``), counts in ``X`` of each, the true
    expected counts in ``rna.layers["true_mean"]`` and open probabilities in
    ``atac.layers["true_open"]`` (dense, also for cells whose data are missing), the expected
    counts in ``prot.layers["true_mean"]`` and their foreground part in
    ``prot.layers["true_foreground"]``, and
    ``obs["cell_type"]``, ``obs["batch"]`` in every modality and in the global ``obs``.

    Examples
    --------
    >>> mdata = scgexp.data.simulate_multiome(n_cells=200, missing_fraction=0.2)
    >>> list(mdata.mod)
    ['rna', 'atac']
    """
    _check_arguments(
        {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_peaks": n_peaks,
            "n_cell_types": n_cell_types,
            "n_batches": n_batches,
        },
        seed,
        {"missing_fraction": (missing_fraction, 0, 1)},
    )
    if isinstance(n_proteins, bool) or not (
        isinstance(n_proteins, int | np.integer) and n_proteins >= 0
    ):
        raise InputError(f"n_proteins must be a whole number, 0 or more, not {n_proteins!r}.")
    rng = np.random.default_rng(seed)
    cell_type, state = _cell_states(rng, n_cells, n_cell_types, n_latent=5)
    batch = rng.integers(n_batches, size=n_cells)
    rna, rna_mean, _ = _rna_counts(rng, state, batch, n_genes, n_batches, 0.3, 7.0)
    depth = np.exp(rng.uniform(np.log(0.05), np.log(0.5), size=n_cells))
    atac, open_prob = _atac_counts(rng, state, batch, n_peaks, n_batches, depth)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{t}" for t in cell_type]),
            "batch": pd.Categorical([f"batch_{b}" for b in batch]),
        },
        index=_names("cell", n_cells),
    )
    has = {"rna": np.ones(n_cells, bool), "atac": np.ones(n_cells, bool)}
    n_missing = round(missing_fraction * n_cells)
    if n_missing:
        missing = rng.choice(n_cells, size=n_missing, replace=False)
        has["atac"][missing[: n_missing // 2]] = False
        has["rna"][missing[n_missing // 2 :]] = False
    rna[~has["rna"]] = 0.0
    atac[~has["atac"]] = 0.0
    modalities = {
        "rna": AnnData(
            sparse.csr_matrix(rna), obs=obs.copy(), var=pd.DataFrame(index=_names("gene", n_genes))
        ),
        "atac": AnnData(
            sparse.csr_matrix(atac),
            obs=obs.copy(),
            var=pd.DataFrame(index=[f"chr1_{i * 1000}_{i * 1000 + 500}" for i in range(n_peaks)]),
        ),
    }
    if n_proteins:
        loadings = rng.normal(0.0, 1.0, size=(state.shape[1], n_proteins))
        background = np.exp(rng.normal(3.0, 0.5, size=n_proteins))
        foreground = np.exp(state @ loadings) * 10.0
        mean = background + foreground
        protein = rng.negative_binomial(5.0, 5.0 / (5.0 + mean)).astype(np.float32)
        modalities["prot"] = AnnData(
            sparse.csr_matrix(protein),
            obs=obs.copy(),
            var=pd.DataFrame(index=[f"CD{i}" for i in range(n_proteins)]),
            layers={
                "true_mean": mean.astype(np.float32),
                "true_foreground": foreground.astype(np.float32),
            },
        )
    modalities["rna"].layers["true_mean"] = rna_mean  # also for cells whose rows are missing
    modalities["atac"].layers["true_open"] = open_prob
    for name in ("rna", "atac"):
        for mod in modalities.values():
            mod.obs[f"has_{name}"] = has[name]
    with warnings.catch_warnings():  # mudata's notice of a future default
        warnings.filterwarnings("ignore", r"From 0\.4 \.update\(\)", FutureWarning)
        mdata = MuData(modalities)
    for column in ["cell_type", "batch", "has_rna", "has_atac"]:
        mdata.obs[column] = modalities["rna"].obs[column].to_numpy()
    mdata.uns["simulation"] = {"model": "simulate_multiome", "seed": seed}
    return mdata
