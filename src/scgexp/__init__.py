"""scgexp: deep-learning models for gene-expression analysis in the scverse ecosystem."""

import importlib
from importlib.metadata import version

import rich.pretty  # noqa: F401  (scvi-tools' view_anndata_setup uses it unimported)

__version__ = version("scgexp")
__all__ = ["data", "model"]


def __getattr__(name: str):
    # scgexp.data and scgexp.model import scvi-tools and torch (seconds): on first use, so that
    # the command line answers --help and argument errors at once.
    if name in __all__:
        module = importlib.import_module(f"scgexp.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'scgexp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
