"""Building blocks shared by scgexp models: invariance penalties for latent spaces."""

from scgexp.nn._invariance import (
    Invariance,
    InvarianceInputs,
    InvarianceMethod,
    pairwise_gaussian_kl,
)

__all__ = ["Invariance", "InvarianceInputs", "InvarianceMethod", "pairwise_gaussian_kl"]
