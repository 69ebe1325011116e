"""Embedded data, simulators, readers and input checks."""

from scgexp.data._checks import (
    InputError,
    check_feature_names,
    check_known_categories,
    check_matrix,
    check_obs_keys,
    check_query,
)
from scgexp.data._gct import read_gct, read_gctx
from scgexp.data._landmarks import mark_landmarks, read_landmark_genes, select_landmarks
from scgexp.data._matrix import row_and_column_sums
from scgexp.data._mudata import pad_modalities
from scgexp.data._pbmc import pbmc68k_counts
from scgexp.data._simulate import (
    simulate_bulk_expression,
    simulate_multiome,
    simulate_scatac,
    simulate_scrna,
)

__all__ = [
    "InputError",
    "check_feature_names",
    "check_known_categories",
    "check_matrix",
    "check_obs_keys",
    "check_query",
    "mark_landmarks",
    "pad_modalities",
    "pbmc68k_counts",
    "read_gct",
    "read_gctx",
    "read_landmark_genes",
    "row_and_column_sums",
    "select_landmarks",
    "simulate_bulk_expression",
    "simulate_multiome",
    "simulate_scatac",
    "simulate_scrna",
]
