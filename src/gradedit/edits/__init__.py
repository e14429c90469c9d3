"""Weight edits: one ``WeightEdit`` object for GRADIEND rewrites, component edits and LoRA.

``WeightEdit.dense / low_rank / rank_one / component_scale / indexed`` build edits; ``+`` combines
them, ``alpha * edit`` scales them; ``with edit.applied(model):`` applies in place and restores
bit-exactly; ``edit.save(dir)`` / ``WeightEdit.load(dir)``; ``edit.export_lora(dir, model)``.
"""

from __future__ import annotations

from .base import EditHandle, WeightEdit
from .lora_export import LoraExport, choose_rank, export_lora
from .terms import DenseTerm, EditError, EditTerm, IndexedTerm, LowRankTerm

__all__ = [
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
