"""scgexp: deep-learning models for gene-expression analysis in the scverse ecosystem."""

from importlib.metadata import version

import rich.pretty  # noqa: F401  (scvi-tools' view_anndata_setup uses it unimported)

from scgexp import data, model

__version__ = version("scgexp")
__all__ = ["data", "model"]
