"""The scgexp models, as scvi-tools model classes."""

from scgexp.dgex import DGEX
from scgexp.multivae import MultiVAE
from scgexp.sailer import SAILER
from scgexp.zinb import ZINBAutoencoder

__all__ = ["DGEX", "SAILER", "MultiVAE", "ZINBAutoencoder"]
