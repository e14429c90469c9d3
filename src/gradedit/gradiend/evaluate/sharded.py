"""Evaluation work split over ranks (``torchrun`` / ``accelerate launch``), combined on every rank.

Each rank scores a contiguous block of the rows (:func:`gradedit.dist.shard_range`); per-row results
are gathered in rank order (so they are in row order), sums are all-reduced. In a single process
every helper is the plain computation on all rows, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from ... import dist, metrics
from ...models import LanguageModel

__all__ = ["lm_scores_by_rank", "rows_by_rank"]

T = TypeVar("T")


def rows_by_rank(fn: Callable[[list[T]], torch.Tensor], items: Sequence[T], width: int,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``fn(items)`` [n, width]: each rank runs ``fn`` on its block of ``items``, the blocks' rows are
    gathered in rank order (a rank without items contributes ``[0, width]`` of ``dtype``)."""
    if not dist.is_distributed():
        return fn(list(items))
    mine = dist.shard(items)
    part = fn(mine) if mine else torch.zeros(0, width, dtype=dtype)
    return dist.all_gather_rows(part.to(dtype))


def lm_scores_by_rank(lm: LanguageModel, texts: Sequence[str], *, batch_size: int | None = None) -> dict[str, float]:
    """:func:`gradedit.metrics.lm_scores` over ``texts``; under a launcher each rank scores its block and
    the hit, token and NLL sums are added over ranks (the same numbers up to float addition order)."""
    if not dist.is_distributed():
        return metrics.lm_scores(lm, texts, batch_size=batch_size)
    hits, total, nll = 0, 0, 0.0
    mine = dist.shard(texts)
    for c in (metrics.iter_scored(lm, mine, batch_size, desc="LMS") if mine else ()):
        hits += int((c.logprobs.argmax(-1) == c.targets).sum())
        nll -= float(c.logprobs.gather(-1, c.targets[:, None]).double().sum())
        total += c.targets.numel()
    sums = dist.all_reduce_sum(torch.tensor([hits, total, nll], dtype=torch.float64))
    hits, total, nll = int(sums[0]), int(sums[1]), float(sums[2])
    if total == 0:
        raise ValueError("no token could be scored for LMS")
    return {"lms": hits / total, "cross_entropy": nll / total, "perplexity": math.exp(nll / total), "tokens": total}
