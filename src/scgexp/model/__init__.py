"""The scgexp models, as scvi-tools model classes."""

from scgexp.dgex import DGEX

__all__ = ["DGEX"]
