"""Rank-1 components of linear layers (from the SVD or from a parameter decomposition), which of them
fire on target text, and the edits built on them: a fitted scalar, a replaced or trained write vector."""

from __future__ import annotations

from .activations import component_activations, other_sets, selectivity, top_selective
from .scalar import DEFAULT_MODULES, default_modules, tune_scalar
from .svd import Component, ComponentSet, clear_svd_cache, linear_modules, logical_weight, svd_components
from .write_vector import replace_write_vector, suppress_token, train_write_vector

__all__ = ["DEFAULT_MODULES", "Component", "ComponentSet", "clear_svd_cache", "component_activations",
           "default_modules", "linear_modules", "logical_weight", "other_sets", "replace_write_vector", "selectivity",
           "suppress_token", "svd_components", "top_selective", "train_write_vector", "tune_scalar"]
