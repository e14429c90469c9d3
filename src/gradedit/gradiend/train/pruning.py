"""Pre-pruning: choose the input space BEFORE training, so only selected entries are ever extracted.

Under ``torchrun`` / ``accelerate launch`` (a joined process group) each rank ranks its block of the
rows and the |gradient| sums are added over ranks; every rank then picks the same entries.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from ... import dist
from ..._progress import progress
from ...models.param_map import ParamMap
from ..gradients import GradientEngine, Source

logger = logging.getLogger(__name__)

#: a progress line at least this often (seconds)
LOG_EVERY_S = 20.0


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
    Memory: one float32 copy of the selected parameters (the running sums) and one parameter's gradient.

    Under a launcher every rank must call it with the same rows: each sums its block of them, the sums
    are added over ranks (float addition order differs from one process, so entries within rounding
    of the cut may swap), and every rank returns the same map.
    """
    if not texts:
        raise ValueError("pre-pruning needs at least one row")
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in engine.params.items()}
    mine = dist.shard_range(len(texts))  # every row in one process
    rows = progress(mine, desc="pre-pruning", leave=False)
    logger.info("pre-pruning: ranking %d entries by mean |gradient| over %d rows%s ...",
                sum(p.numel() for p in engine.params.values()), len(texts),
                f" ({len(mine)} on this rank of {dist.world_size()})" if dist.is_distributed() else "")
    t0 = last = time.time()
    for done, i in enumerate(rows, 1):
        engine.each_gradient([texts[i]], factual_ids[i : i + 1], alternative_ids[i : i + 1], source,
                             lambda n, g: acc[n].add_(g.abs()))
        if time.time() - last >= LOG_EVERY_S:
            logger.info("pre-pruning: %d/%d rows (%.1f s/row)", done, len(mine), (time.time() - t0) / done)
            last = time.time()
    if dist.is_distributed():
        for a in acc.values():  # one tensor at a time (one temporary copy), same order on every rank
            a.copy_(dist.all_reduce_sum(a))
    full = ParamMap.from_params(engine.params)
    k = resolve_topk(topk, full.size)
    keep = top_entries(acc, k)
    logger.info("pre-pruned the input space from %d to %d entries (%.3f%%) using %d rows",
                full.size, k, 100.0 * k / full.size, len(texts))
    return _map_from_selection(full, acc, keep)


def top_entries(scores: dict[str, torch.Tensor], k: int, iters: int = 60) -> dict[str, torch.Tensor]:
    """Flat indices of the ``k`` largest values across all tensors, per tensor (sorted).

    Memory-lean: a bisection on the threshold counts entries tensor by tensor, so no concatenated
    copy of all scores and no global ``torch.topk`` scratch (≈15 bytes per entry) is ever built.
    Ties at the threshold are broken by tensor order, then index.
    """
    lo = min(float(t.min()) for t in scores.values())
    hi = max(float(t.max()) for t in scores.values())
    for _ in range(iters):  # invariant: count(> hi) <= k <= count(>= lo)
        mid = (lo + hi) / 2
        if mid <= lo or mid >= hi:
            break
        if sum(int((t > mid).sum()) for t in scores.values()) > k:
            lo = mid
        else:
            hi = mid
    out: dict[str, torch.Tensor] = {}
    strict = {n: (t.reshape(-1) > hi).nonzero().squeeze(-1) for n, t in scores.items()}
    left = k - sum(int(v.numel()) for v in strict.values())
    for n, t in scores.items():
        idx = strict[n]
        if left > 0:
            flat = t.reshape(-1)
            ties = ((flat >= lo) & (flat <= hi)).nonzero().squeeze(-1)[:left]
            left -= int(ties.numel())
            idx = torch.cat([idx, ties]).sort().values
        out[n] = idx
    return out


def _map_from_selection(full: ParamMap, scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> ParamMap:
    """Global input-space positions of the kept entries -> the selected ParamMap."""
    positions = [keep[n] + off for n, off in zip(full.names, full.offsets) if keep[n].numel()]
    return full.select(torch.cat(positions))
