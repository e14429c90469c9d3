"""Deterministic train/val/test assignment: exact counts, whole groups, per-class quotas, hash order."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence

from .columns import SPLITS

__all__ = ["assign_splits", "keep_first", "split_counts", "stratified_splits"]


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Row counts per split summing to ``n`` (largest-remainder rounding)."""
    raw = [f * n for f in fractions]
    counts = [math.floor(r + 1e-9) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _rank(seed: int, key: object) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def assign_splits(
    n: int,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    groups: Sequence[object] | None = None,
) -> list[str]:
    """Deterministic ``"train"/"val"/"test"`` labels for ``n`` rows.

    Rows (or, with ``groups``, distinct group values) are ordered by ``sha256(seed, key)``, so the
    result is the same on every platform and Python/numpy version. Without groups the counts are
    exact (largest remainder); with groups every row of a group lands in one split (for held-out
    vocabulary or sentences) and the counts are as close to ``fractions`` as whole groups allow.
    """
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    if groups is None:
        order = sorted(range(n), key=lambda i: _rank(seed, i))
        out = [""] * n
        start = 0
        for name, count in zip(SPLITS, split_counts(n, fr)):
            for i in order[start : start + count]:
                out[i] = name
            start += count
        return out
    keys = [str(g) for g in groups]
    if len(keys) != n:
        raise ValueError(f"groups has {len(keys)} values for {n} rows")
    sizes = Counter(keys)
    bounds = (fr[0] * n, (fr[0] + fr[1]) * n)
    assigned: dict[str, str] = {}
    done = 0
    for key in sorted(sizes, key=lambda k: _rank(seed, k)):
        middle = done + sizes[key] / 2
        assigned[key] = SPLITS[0] if middle < bounds[0] else SPLITS[1] if middle < bounds[1] else SPLITS[2]
        done += sizes[key]
    return [assigned[k] for k in keys]


def stratified_splits(classes: Sequence[str], groups: Sequence[str], fractions: Sequence[float],
                      seed: int) -> list[str]:
    """Splits with each class's rows divided by ``fractions`` and every group in ONE split.

    Per class, each split has a quota (largest-remainder rounding of ``fractions``). Groups are
    placed largest first, then in ``sha256(seed, group)`` order, each into the split with the most
    relative room left among those that can hold it (else the one with the most room), so splits
    fill in proportion and the per-class counts are exact unless multi-row groups force an overflow.
    """
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    quota = {c: dict(zip(SPLITS, split_counts(n, fractions))) for c, n in Counter(classes).items()}
    room = {c: dict(q) for c, q in quota.items()}
    out = [""] * len(classes)
    for g in sorted(members, key=lambda g: (-len(members[g]), _rank(seed, g))):
        need = Counter(classes[i] for i in members[g])
        fits = [s for s in SPLITS if all(room[c][s] >= k for c, k in need.items())]
        score = {s: (sum(room[c][s] / quota[c][s] for c in need if quota[c][s]), -i) for i, s in enumerate(SPLITS)}
        best = max(fits or SPLITS, key=score.__getitem__)
        for c, k in need.items():
            room[c][best] -= k
        for i in members[g]:
            out[i] = best
    return out


def keep_first(indices: Sequence[int], n: int, keys: Sequence[str], seed: int) -> list[int]:
    """``n`` of ``indices`` chosen by hash rank of their keys, returned in corpus order."""
    chosen = sorted(indices, key=lambda i: (_rank(seed, keys[i]), i))[:n]
    return sorted(chosen)
