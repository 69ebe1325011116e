"""ZINB autoencoder (DCA): denoise and impute scRNA-seq counts."""

from scgexp.zinb._model import ZINBAutoencoder
from scgexp.zinb._module import ZINBAutoencoderModule

__all__ = ["ZINBAutoencoder", "ZINBAutoencoderModule"]
