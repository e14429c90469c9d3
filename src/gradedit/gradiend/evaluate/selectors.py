"""Decoder selectors: which grid point a sweep keeps for one (class, direction).

Every metric a sweep selects on is *maximised* (strengthen C: P(C) on the other class's rows; weaken
C: 1 − P(C) on C's own rows), so "the requested direction" is always "above the base value". A point
is **admissible** when it raises the metric strictly above the unedited base AND satisfies the
selector's constraint (e.g. LMS ≥ 0.99 × base). Without an admissible point a selector returns the
``base`` dict itself: the sweep reports "no admissible point" and ``rewrite_base_model`` refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import GradeditError

#: selector(points, key, base) -> chosen point; ``points`` are grid dicts, ``key`` e.g. "fem_weaken"
Selector = Callable[[Sequence[dict[str, Any]], str, dict[str, Any]], dict[str, Any]]


class NoAdmissiblePoint(GradeditError, ValueError):
    """A decoder selection found no grid point that moves its metric the requested way within its constraint."""


def result_key(cls: str, increase: bool) -> str:
    """``"fem"`` for strengthening fem, ``"fem_weaken"`` for weakening it."""
    return cls if increase else f"{cls}_weaken"


@dataclass(frozen=True)
class Constraint:
    """A bound on a language-modelling measure of the edited model, relative to the base model.

    Attributes:
        measure: the grid-point field it bounds (``"lms"``, ``"perplexity"``; ``"lms_product"`` = metric × LMS).
        factor: the bound is ``factor × base[measure]``.
        upper: ``True``: the measure may not exceed the bound (perplexity); ``False``: may not fall below it.
        label: how plots and messages name it, e.g. ``"LMS >= 0.99 x base"``.
    """

    measure: str
    factor: float
    upper: bool
    label: str

    def value(self, point: dict[str, Any], key: str) -> float:
        """The constrained measure of ``point`` (metric × LMS for ``lms_product``)."""
        if self.measure == "lms_product":
            return float(point["metrics"][key] * point["lms"])
        return float(point[self.measure])

    def bound(self, base: dict[str, Any], key: str) -> float:
        return self.factor * self.value(base, key)

    def holds(self, point: dict[str, Any], base: dict[str, Any], key: str) -> bool:
        v, b = self.value(point, key), self.bound(base, key)
        return v <= b if self.upper else (v > b if self.measure == "lms_product" else v >= b)


def raises_metric(point: dict[str, Any], base: dict[str, Any], key: str) -> bool:
    """The point moves ``key`` in the requested direction: strictly above the base value."""
    return bool(point["metrics"][key] > base["metrics"][key])


class ConstrainedSelector:
    """Maximise the metric among admissible points (metric above base AND ``constraint`` holds); else
    return ``base`` ("no admissible point"). ``explain`` says which requirement binds."""

    def __init__(self, name: str, constraint: Constraint) -> None:
        self.__name__ = name
        self.constraint = constraint

    def admissible(self, points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in points if raises_metric(p, base, key) and self.constraint.holds(p, base, key)]

    def __call__(self, points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> dict[str, Any]:
        ok = self.admissible(points, key, base)
        return max(ok, key=lambda p: p["metrics"][key]) if ok else base

    def explain(self, points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> str:
        """Why no point is admissible: nothing raises the metric, or the constraint binds."""
        return explain_no_point(points, key, base, self.constraint)

    def __repr__(self) -> str:
        return self.__name__


def explain_no_point(points: Sequence[dict[str, Any]], key: str, base: dict[str, Any],
                     constraint: Constraint | None, selector_name: str = "") -> str:
    """One line naming the requirement that binds when a selection has no admissible point."""
    b = base["metrics"][key]
    raising = [p for p in points if raises_metric(p, base, key)]
    if not points:
        return f"no admissible point for {key!r}: the grid is empty"
    if not raising:
        best = max(p["metrics"][key] for p in points)
        return (f"no admissible point for {key!r}: no grid point raises it above its base value {b:.4g} "
                f"(best {best:.4g}); the requested direction binds")
    if constraint is None:
        return (f"no admissible point for {key!r}: selector {selector_name or '?'} kept none of the "
                f"{len(raising)} grid point(s) that raise it above its base value {b:.4g}")
    best = max(raising, key=lambda p: p["metrics"][key])
    return (f"no admissible point for {key!r}: {len(raising)} grid point(s) raise it above its base value "
            f"{b:.4g} (best {best['metrics'][key]:.4g}) but none keeps {constraint.label} "
            f"(bound {constraint.bound(base, key):.4g}; that best point has {constraint.value(best, key):.4g}); "
            "the constraint binds")


def lms_constraint(ratio: float = 0.99) -> ConstrainedSelector:
    """Maximise the metric among points that raise it and keep LMS ≥ ``ratio`` × the base LMS."""
    return ConstrainedSelector(f"lms_constraint({ratio})", Constraint("lms", ratio, False, f"LMS >= {ratio:g} x base"))


def perplexity_constraint(max_increase: float = 0.02) -> ConstrainedSelector:
    """Maximise the metric among points that raise it and keep neutral perplexity within +``max_increase``."""
    label = f"perplexity <= {1.0 + max_increase:g} x base"
    return ConstrainedSelector(f"perplexity_constraint({max_increase})",
                               Constraint("perplexity", 1.0 + max_increase, True, label))


class _ProductSelector(ConstrainedSelector):
    """Maximise metric × LMS among points that raise the metric and beat the base's metric × LMS."""

    def __call__(self, points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> dict[str, Any]:
        ok = self.admissible(points, key, base)
        return max(ok, key=lambda p: p["metrics"][key] * p["lms"]) if ok else base


metric_times_lms = _ProductSelector("metric_times_lms", Constraint("lms_product", 1.0, False,
                                                                   "metric x LMS > base"))

#: grid-metric key of the bias measure: −mean |log P(A) − log P(B)| on neutral prompts (0 = balanced)
DEBIAS_KEY = "debias"


class BalanceSelector(ConstrainedSelector):
    """Towards balance: among points that lower the mean |log P(A) − log P(B)| on neutral prompts
    below the base model's (grid metric ``"debias"``, its negative) and keep ``constraint``, take the
    most balanced one (the smaller edit on a tie); else the base ("no admissible point").

    The ``key`` it is called with is ignored: it always selects on ``"debias"``.
    """

    def admissible(self, points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in points if DEBIAS_KEY in p["metrics"] and raises_metric(p, base, DEBIAS_KEY)
                and self.constraint.holds(p, base, DEBIAS_KEY)]

    def __call__(self, points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> dict[str, Any]:
        if DEBIAS_KEY not in base["metrics"]:
            raise ValueError("the balance selector needs grid points scored on neutral prompts (metric "
                             f"{DEBIAS_KEY!r}); sweep with evaluate_debias(...) or bias_prompts=[...]")
        ok = self.admissible(points, key, base)
        return max(ok, key=lambda p: (p["metrics"][DEBIAS_KEY], -p["learning_rate"])) if ok else base

    def explain(self, points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> str:
        return explain_no_point(points, DEBIAS_KEY, base, self.constraint)


def balance_constraint(max_increase: float = 0.02, measure: str = "perplexity") -> BalanceSelector:
    """Debias: the most balanced point on neutral prompts whose neutral perplexity stays within
    +``max_increase`` (``measure="lms"``: whose LMS stays ≥ (1 − ``max_increase``) × base)."""
    if measure == "perplexity":
        c = Constraint("perplexity", 1.0 + max_increase, True, f"perplexity <= {1.0 + max_increase:g} x base")
    elif measure == "lms":
        c = Constraint("lms", 1.0 - max_increase, False, f"LMS >= {1.0 - max_increase:g} x base")
    else:
        raise ValueError(f"measure must be 'perplexity' or 'lms', got {measure!r}")
    return BalanceSelector(f"balance_constraint({max_increase}, {measure})", c)


SELECTORS: dict[str, Selector] = {"lms": lms_constraint(0.99), "perplexity": perplexity_constraint(0.02),
                                  "product": metric_times_lms, "balance": balance_constraint(0.02)}


#: the selector ``evaluate_decoder`` uses when none is given
DEFAULT_SELECTOR = "perplexity:0.015"


def resolve_selector(selector: str | Selector | None) -> Selector:
    """A selector from a name (``"lms"``, ``"perplexity"``, ``"product"``, ``"balance"``, ``"lms:0.95"``,
    ``"perplexity:0.01"``, ``"balance:0.01"``), a callable(points, key, base), or ``None``
    (= :data:`DEFAULT_SELECTOR`)."""
    if selector is None:
        selector = DEFAULT_SELECTOR
    if isinstance(selector, str):
        name, _, arg = selector.partition(":")
        if arg and name in ("lms", "perplexity", "balance"):  # "perplexity:0.01" = at most +1% perplexity
            try:
                value = float(arg)
            except ValueError:
                raise ValueError(f"selector {selector!r}: {arg!r} is not a number") from None
            if name == "balance":
                return balance_constraint(value)
            return lms_constraint(value) if name == "lms" else perplexity_constraint(value)
        try:
            return SELECTORS[selector]
        except KeyError:
            raise ValueError(f"unknown selector {selector!r}; use one of {list(SELECTORS)}, 'lms:RATIO', "
                             "'perplexity:MAX_INCREASE', 'balance:MAX_INCREASE' or a callable") from None
    if not callable(selector):
        raise TypeError("selector must be a name, a callable(points, key, base) or None")
    return selector


def constraint_of(selector: Selector) -> Constraint | None:
    """The constraint a selector applies (``None`` for a plain callable)."""
    return getattr(selector, "constraint", None)
