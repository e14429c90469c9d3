"""GRADIEND training: ``TrainConfig`` and the ``Trainer`` facade."""

from .config import TrainConfig
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
