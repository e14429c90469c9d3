"""Language models: the :class:`LanguageModel` wrapper, loading (zoo, folder, hub), parameter selection."""

from __future__ import annotations

from ..errors import TokenError
from . import zoo
from .language_model import LanguageModel, ModelKind, ensure_pad_token, infer_kind
from .loading import load_model
from .params import BLOCK_PATTERN, select_parameters

__all__ = ["BLOCK_PATTERN", "LanguageModel", "ModelKind", "TokenError", "ensure_pad_token", "infer_kind",
           "load_model", "select_parameters", "zoo"]
