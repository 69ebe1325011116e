"""scgexp: deep-learning models for gene-expression analysis in the scverse ecosystem."""

from importlib.metadata import version

from scgexp import data, model

__version__ = version("scgexp")
__all__ = ["data", "model"]
