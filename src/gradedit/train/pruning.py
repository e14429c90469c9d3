"""Pre-pruning: choose the input space BEFORE training, so only selected entries are ever extracted."""

from __future__ import annotations

import logging
import math

import torch

from .._progress import progress
from ..gradients import GradientEngine, Source
from ..param_map import ParamMap

logger = logging.getLogger(__name__)


def resolve_topk(topk: int | float, n: int) -> int:
    """An int count or a fraction in (0, 1] of ``n`` -> a count in [1, n]."""
    if isinstance(topk, float):
        return max(1, min(n, math.ceil(topk * n)))
    return max(1, min(n, int(topk)))


def pre_prune(engine: GradientEngine, texts: list[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
              topk: int | float, *, source: Source = "diff") -> ParamMap:
    """Rank every selected entry by its mean |gradient| over the given rows and keep the top ``topk``.

    The mean of absolute values (not the absolute mean) is used: the two classes' diff gradients point
    in roughly opposite directions, so a plain mean would cancel exactly the entries that matter.
    Memory: two float32 copies of the selected parameters.
    """
    if not texts:
        raise ValueError("pre-pruning needs at least one row")
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in engine.params.items()}
    rows = progress(range(len(texts)), desc="pre-pruning", leave=False)
    for i in rows:
        g = engine.gradients([texts[i]], factual_ids[i : i + 1], alternative_ids[i : i + 1], source)
        for n, t in g.items():
            acc[n].add_(t.abs())
    full = ParamMap.from_params(engine.params)
    scores = full.gather(acc)
    del acc
    k = resolve_topk(topk, full.size)
    keep = torch.topk(scores, k, sorted=False).indices.sort().values
    logger.info("pre-pruned the input space from %d to %d entries (%.3f%%) using %d rows",
                full.size, k, 100.0 * k / full.size, len(texts))
    return full.select(keep)
