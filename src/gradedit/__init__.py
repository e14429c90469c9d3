"""gradedit: find where a language model encodes a feature, rewrite it, and measure the blast radius."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

from . import metrics, zoo  # noqa: E402
from .models import LanguageModel, TokenError, load_model, select_parameters  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "LanguageModel",
    "TokenError",
    "load_model",
    "select_parameters",
    "metrics",
    "zoo",
]
