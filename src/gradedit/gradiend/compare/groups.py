"""Which layers and module types each feature model's top-k entries sit in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from .topk import TopK, layer_of, module_of

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OTHER", "group_table"]

OTHER = "other"
"""The layer group of parameters outside the transformer blocks (embeddings, final norm, head)."""


def _group(name: str, by: str) -> str:
    if by == "layer":
        layer = layer_of(name)
        return OTHER if layer is None else str(layer)
    return module_of(name)


def group_table(topks: Sequence[TopK], by: Literal["layer", "module"] = "layer",
                weight: Literal["count", "mass"] = "count") -> pd.DataFrame:
    """Share of each model's top-k set per group: rows = groups, columns = models; each column sums to 1.

    ``by="layer"`` groups by block index (``"other"`` for parameters outside the blocks, listed last),
    ``by="module"`` by module type (``mlp.down_proj``, ``self_attn.q_proj``, ...). ``weight="count"``
    counts entries; ``"mass"`` sums their importance instead.
    """
    import pandas as pd

    if by not in ("layer", "module"):
        raise ValueError(f"by must be 'layer' or 'module', got {by!r}")
    if weight not in ("count", "mass"):
        raise ValueError(f"weight must be 'count' or 'mass', got {weight!r}")
    cols: dict[str, dict[str, float]] = {}
    for t in topks:
        which, _ = t.space.locate(t.keys)
        groups = np.array([_group(t.space.names[w], by) for w in which.tolist()], dtype=object)
        w = np.ones(len(t)) if weight == "count" else t.importance
        total = float(w.sum())
        cols[t.model] = {str(g): float(w[groups == g].sum()) / total if total > 0 else float("nan")
                         for g in dict.fromkeys(groups.tolist())}
    table = pd.DataFrame(cols).fillna(0.0)
    if by == "layer":
        order = sorted((g for g in table.index if g != OTHER), key=int) + [g for g in table.index if g == OTHER]
    else:
        order = sorted(table.index)
    table = table.loc[order]
    table.index.name = by
    return table
