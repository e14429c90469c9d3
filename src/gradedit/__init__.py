"""gradedit: find where a language model encodes a feature, rewrite it, and measure the blast radius."""

from __future__ import annotations

import logging

from . import metrics  # noqa: E402
from ._version import __version__  # noqa: E402
from .blast import BlastReport, TargetSpec, blast_radius, pareto_sweep  # noqa: E402
from .data import features  # noqa: E402
from .data.schema import DataError, PairDataset  # noqa: E402
from .edits import EditError, WeightEdit  # noqa: E402
from .gradiend.feature_model import FeatureModel  # noqa: E402
from .gradiend.model import ModelWithGradiend  # noqa: E402
from .gradiend.train import TrainConfig, Trainer  # noqa: E402
from .models import LanguageModel, TokenError, load_model, select_parameters, zoo
from .models.param_map import ParamMap  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "BlastReport",
    "TargetSpec",
    "blast_radius",
    "pareto_sweep",
    "DataError",
    "EditError",
    "FeatureModel",
    "LanguageModel",
    "ModelWithGradiend",
    "PairDataset",
    "ParamMap",
    "TokenError",
    "TrainConfig",
    "WeightEdit",
    "Trainer",
    "load_model",
    "metrics",
    "select_parameters",
    "features",
    "zoo",
]
