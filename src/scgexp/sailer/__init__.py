"""SAILER: a confounder-invariant latent space for scATAC-seq."""

from scgexp.sailer._model import SAILER
from scgexp.sailer._module import SAILERModule

__all__ = ["SAILER", "SAILERModule"]
