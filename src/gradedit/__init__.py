"""gradedit: find where a language model encodes a feature, rewrite it, and measure the blast radius.

The public names below are imported on first use (PEP 562), so ``import gradedit`` — and the
``gradedit`` command's ``--help`` — does not pay for torch and transformers until they are needed.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import metrics
    from .blast import BlastReport, TargetSpec, blast_radius, pareto_sweep
    from .data import features
    from .data.schema import PairDataset
    from .edits import WeightEdit
    from .errors import DataError, EditError, GradeditError, TokenError
    from .gradiend.feature_model import FeatureModel
    from .gradiend.model import ModelWithGradiend
    from .gradiend.train import TrainConfig, Trainer
    from .models import LanguageModel, load_model, select_parameters, zoo
    from .models.param_map import ParamMap

_EXPORTS: dict[str, str] = {
    "BlastReport": "gradedit.blast", "TargetSpec": "gradedit.blast", "blast_radius": "gradedit.blast",
    "pareto_sweep": "gradedit.blast", "PairDataset": "gradedit.data.schema", "WeightEdit": "gradedit.edits",
    "DataError": "gradedit.errors", "EditError": "gradedit.errors", "GradeditError": "gradedit.errors",
    "TokenError": "gradedit.errors", "FeatureModel": "gradedit.gradiend.feature_model",
    "ModelWithGradiend": "gradedit.gradiend.model", "TrainConfig": "gradedit.gradiend.train",
    "Trainer": "gradedit.gradiend.train", "LanguageModel": "gradedit.models", "load_model": "gradedit.models",
    "select_parameters": "gradedit.models", "zoo": "gradedit.models", "ParamMap": "gradedit.models.param_map",
}
_SUBMODULES = {"metrics": "gradedit.metrics", "features": "gradedit.data.features"}

__all__ = [
    "__version__",
    "BlastReport",
    "DataError",
    "EditError",
    "FeatureModel",
    "GradeditError",
    "LanguageModel",
    "ModelWithGradiend",
    "PairDataset",
    "ParamMap",
    "TargetSpec",
    "TokenError",
    "TrainConfig",
    "Trainer",
    "WeightEdit",
    "blast_radius",
    "features",
    "load_model",
    "metrics",
    "pareto_sweep",
    "select_parameters",
    "zoo",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    """Import a public name's home module on first access and cache the name here."""
    if name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'gradedit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
