"""Matryoshka training on sentence-transformers' trainer: multi-scale losses, dim schedules, a projection
head model, training data formats, and the loop that ties them together (``matryoshka train``)."""

from matryoshka.train.losses import MatryoshkaTrainingLoss, dim_weights
from matryoshka.train.schedules import DimSchedule

__all__ = ["DimSchedule", "MatryoshkaTrainingLoss", "dim_weights"]
