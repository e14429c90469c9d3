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
                   target: float, *, alpha0: float = 1.0, iters: int = 8, max_steps: int = 24,
                   base_ce: float | None = None) -> StrengthMatch:
    """``α`` with ``CE(texts | make_edit(α)) − CE(texts) ≈ target`` (nats), assuming ΔCE grows with ``α``.

    Brackets the target by doubling (or halving) from ``alpha0`` — at most ``max_steps`` probes, so
    edits many orders of magnitude too strong or too weak are still bracketed — then bisects ``iters``
    times on ``log α``. When the target is never reached, returns the strongest probe (``reached`` False).
    """
    if target <= 0:
        raise ValueError(f"target must be a positive CE increase in nats, got {target}")
    if alpha0 <= 0:
        raise ValueError(f"alpha0 must be positive, got {alpha0}")
    base = metrics.cross_entropy(lm, list(texts)) if base_ce is None else base_ce
    probes: list[tuple[float, float]] = []

    def f(alpha: float) -> float:
        d = ce_delta(lm, make_edit(alpha), texts, base)
        probes.append((alpha, d))
        logger.info("strength α=%.4g: ΔCE %+.3f (target %+.3f)", alpha, d, target)
        return d

    a, d = alpha0, f(alpha0)
    factor = 0.5 if d >= target else 2.0
    lo = hi = None
    for _ in range(max_steps):
        if d >= target:
            hi = a
        else:
            lo = a
        if lo is not None and hi is not None:
            break
        a *= factor
        d = f(a)
    best = min(probes, key=lambda p: abs(p[1] - target))
    if lo is None or hi is None:
        strongest = max(probes, key=lambda p: p[1]) if hi is None else best
        logger.warning("strength target %+.3f not bracketed in %d probes; using α=%.4g (ΔCE %+.3f)",
                       target, len(probes), strongest[0], strongest[1])
        return StrengthMatch(alpha=strongest[0], delta=strongest[1], target=target, probes=probes)
    for _ in range(iters):
        if abs(best[1] - target) <= 0.03 * target:
            break
        mid = (lo * hi) ** 0.5
        d = f(mid)
        if abs(d - target) < abs(best[1] - target):
            best = (mid, d)
        if d < target:
            lo = mid
        else:
            hi = mid
    return StrengthMatch(alpha=best[0], delta=best[1], target=target, probes=probes)
