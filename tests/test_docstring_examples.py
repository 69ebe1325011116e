"""Docstring examples that need no trained model run and print what they show.

Examples that need a trained model (``model``, ``adata``) are read, not run, as in scvi-tools.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch

import scgexp
from scgexp.data import _checks, _matrix, _pbmc, _simulate
from scgexp.model import ZINBAutoencoder
from scgexp.multivae import _module as multivae_module
from scgexp.nn import _invariance

EXAMPLES = [
    scgexp._errors.InputError,
    scgexp._warn.warn_user,
    _checks.cell_positions,
    _checks.check_distinct_keys,
    _checks.check_matrix,
    _checks.check_option,
    _checks.check_setup_arguments,
    _checks.feature_positions,
    _matrix.mean_and_scale,
    _matrix.named_layers,
    _matrix.row_chunks,
    _matrix.stored_values,
    _pbmc.pbmc68k_counts,
    _simulate.simulate_bulk_expression,
    _simulate.simulate_multiome,
    _simulate.simulate_scatac,
    _simulate.simulate_scrna,
    multivae_module.PoissonDetection,
    _invariance.pairwise_gaussian_kl,
]


@pytest.mark.parametrize("function", EXAMPLES, ids=lambda function: function.__qualname__)
def test_example_runs_as_shown(function):
    module = importlib.import_module(function.__module__)
    names = {**vars(module), "scgexp": scgexp, "np": np, "torch": torch}
    names["ZINBAutoencoder"] = ZINBAutoencoder
    tests = doctest.DocTestFinder(recurse=False).find(function, globs=names)
    assert any(test.examples for test in tests), f"{function.__qualname__} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
