"""GRADIEND training: ``TrainConfig`` and the ``Trainer`` facade."""

from .after import NotEvaluated
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["NotEvaluated", "TrainConfig", "Trainer"]
