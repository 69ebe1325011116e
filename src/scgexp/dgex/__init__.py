"""D-GEX: infer the transcriptome from landmark genes."""

from scgexp.dgex._model import DGEX
from scgexp.dgex._module import DGEXModule

__all__ = ["DGEX", "DGEXModule"]
