"""scgexp: deep-learning models for gene-expression analysis in the scverse ecosystem."""

import importlib
from importlib.metadata import version

import rich.pretty  # noqa: F401  (scvi-tools' view_anndata_setup uses it unimported)

__version__ = version("scgexp")
__all__ = ["data", "model"]
# Every public subpackage, as `import scgexp; scgexp.nn.Invariance` expects.
_SUBPACKAGES = (*__all__, "nn", "train", "dataloaders", "dgex", "zinb", "sailer", "multivae")


def __getattr__(name: str):
    # They import scvi-tools and torch (seconds): on first use, so that the command line
    # answers --help and argument errors at once.
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"scgexp.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'scgexp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBPACKAGES})
