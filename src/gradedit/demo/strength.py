"""Matching edits of different methods at the same on-target effect (e.g. the same German CE increase).

Every edit has a strength knob ``α`` (``edit * α``: the component scale's ``s − 1``, LoRA's ``B A``,
GRADIEND's learning rate all scale linearly). ``match_strength`` finds the ``α`` at which the edit
raises cross-entropy on calibration text by a target amount, by bracketing and bisection. The
calibration text must be disjoint from the evaluation text, so the match is not chosen on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import metrics
from ..edits import WeightEdit
from ..models import LanguageModel

logger = logging.getLogger(__name__)


@dataclass
class StrengthMatch:
    """The matched strength and every (α, ΔCE) probed on the way (for Pareto-style plots)."""

    alpha: float
    delta: float
    target: float
    probes: list[tuple[float, float]] = field(default_factory=list)

    @property
    def reached(self) -> bool:
        """Whether the target was met within 10% (else ``alpha`` is the strongest probed)."""
        return abs(self.delta - self.target) <= 0.1 * abs(self.target)


def ce_delta(lm: LanguageModel, edit: WeightEdit, texts: Sequence[str], base_ce: float) -> float:
    """CE(texts) with the edit applied minus ``base_ce`` (nats/token); the model is restored after."""
    with edit.applied(lm.model):
        return metrics.cross_entropy(lm, list(texts)) - base_ce


def match_strength(lm: LanguageModel, make_edit: Callable[[float], WeightEdit], texts: Sequence[str],
                   target: float, *, alpha0: float = 1.0, iters: int = 7, max_doublings: int = 5,
                   base_ce: float | None = None) -> StrengthMatch:
    """``α`` with ``CE(texts | make_edit(α)) − CE(texts) ≈ target`` (nats), assuming ΔCE grows with ``α``.

    Brackets by doubling/halving from ``alpha0``, then bisects ``iters`` times (on ``log α``).
    """
    if target <= 0:
        raise ValueError(f"target must be a positive CE increase in nats, got {target}")
    base = metrics.cross_entropy(lm, list(texts)) if base_ce is None else base_ce
    probes: list[tuple[float, float]] = []

    def f(alpha: float) -> float:
        d = ce_delta(lm, make_edit(alpha), texts, base)
        probes.append((alpha, d))
        logger.info("strength α=%.4g: ΔCE %+.3f (target %+.3f)", alpha, d, target)
        return d

    lo, hi = 0.0, alpha0
    d_hi = f(hi)
    for _ in range(max_doublings):
        if d_hi >= target:
            break
        lo, hi = hi, hi * 2
        d_hi = f(hi)
    else:
        if d_hi < target:
            return StrengthMatch(alpha=hi, delta=d_hi, target=target, probes=probes)
    if lo == 0.0:  # alpha0 already overshoots: halve down to a lower bracket
        lo = hi / 2
        for _ in range(max_doublings):
            if f(lo) < target:
                break
            hi, lo = lo, lo / 2
    best = min(probes, key=lambda p: abs(p[1] - target))
    for _ in range(iters):
        mid = (lo * hi) ** 0.5
        d = f(mid)
        if abs(d - target) < abs(best[1] - target):
            best = (mid, d)
        if d < target:
            lo = mid
        else:
            hi = mid
        if abs(d - target) <= 0.03 * target:
            break
    return StrengthMatch(alpha=best[0], delta=best[1], target=target, probes=probes)
