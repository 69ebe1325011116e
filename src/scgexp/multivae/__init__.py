"""MultiVAE: joint representation of RNA, ATAC and protein, with mosaic cells."""

from scgexp.multivae._model import MultiVAE
from scgexp.multivae._module import MultiVAEModule

__all__ = ["MultiVAE", "MultiVAEModule"]
