"""Weight edits: one ``WeightEdit`` object for GRADIEND rewrites, component edits and LoRA.

``WeightEdit.dense / low_rank / rank_one / component_scale / indexed`` build edits; ``+`` combines
them, ``alpha * edit`` scales them; ``with edit.applied(model):`` applies in place and restores
bit-exactly; ``edit.save(dir)`` / ``WeightEdit.load(dir)``; ``edit.export_lora(dir, model)``.

Methods that produce edits: ``svd_components`` + ``selectivity`` (which rank-1 components fire on
target text), ``tune_scalar`` (scale a few components, fitted on a handful of target tokens),
``replace_write_vector`` / ``suppress_token`` / ``train_write_vector``, and ``train_lora`` (the
LoRA baseline: CE on targets + KL elsewhere).
"""

from __future__ import annotations

from .components.activations import component_activations, selectivity, top_selective
from .components.scalar import tune_scalar
from .components.svd import Component, ComponentSet, svd_components
from .components.write_vector import replace_write_vector, suppress_token, train_write_vector
from .lora.data import TargetData
from .lora.train import LoraConfig, LoraResult, train_lora
from .peft_export import LoraExport, choose_rank, export_lora
from .terms import DenseTerm, EditError, EditTerm, IndexedTerm, LowRankTerm
from .weight_edit import EditHandle, WeightEdit

__all__ = [
    "Component",
    "ComponentSet",
    "LoraConfig",
    "LoraResult",
    "TargetData",
    "component_activations",
    "replace_write_vector",
    "selectivity",
    "suppress_token",
    "svd_components",
    "top_selective",
    "train_lora",
    "train_write_vector",
    "tune_scalar",
    "DenseTerm",
    "EditError",
    "EditHandle",
    "EditTerm",
    "IndexedTerm",
    "LoraExport",
    "LowRankTerm",
    "WeightEdit",
    "choose_rank",
    "export_lora",
]
