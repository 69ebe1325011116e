"""Training plans and callbacks shared by scgexp models."""

from scgexp.train._callbacks import RestoreBestWeights

__all__ = ["RestoreBestWeights"]
