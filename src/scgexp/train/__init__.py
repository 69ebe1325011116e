"""Training plans and callbacks shared by scgexp models."""

from scgexp.train._callbacks import KeepReferenceEntries, RestoreBestWeights
from scgexp.train._mixin import TrainingMixin
from scgexp.train._plans import InvarianceTrainingPlan
from scgexp.train._trainingplan import TrainingDivergedError, TrainingPlan

__all__ = [
    "InvarianceTrainingPlan",
    "KeepReferenceEntries",
    "RestoreBestWeights",
    "TrainingDivergedError",
    "TrainingMixin",
    "TrainingPlan",
]
