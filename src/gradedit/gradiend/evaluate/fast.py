"""Few-pass decoder search: predict each line's constraint boundary from derivatives at lr = 0, then
find it on real forward passes.

Every point of a feature factor's line is θ + lr·v with v = decode(ff), so the neutral CE and the
class probabilities along the line have first and second lr-derivatives at lr = 0 (:mod:`.line`).
For each feature factor:

1. predict the lr where the constraint binds from the quadratic Taylor model of the mean neutral CE
   (perplexity ≤ f × base ⇔ CE rise ≤ log f; for an LMS bound ``ratio`` — top-1, not differentiable —
   the CE rise −log(ratio) is a proxy for the first guess only), and the metrics there;
2. verify on real passes (:meth:`DecoderProbe.score_at`) only near that lr: a feasible and an
   infeasible lr are bracketed (guesses corrected by the real values seen so far) and the bracket
   is bisected until hi / lo ≤ 1 + ``tolerance``.

The selector then chooses among the REAL points only, exactly as on a grid: the selected point
satisfies the constraint on real passes, never on the prediction alone. Feature factors whose
predicted metrics rise for no requested key are not verified (unless none is predicted to rise).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .line import LineFunction, LineTaylor, line_taylor, quadratic_root
from .probe import DecoderProbe
from .selectors import Constraint, Selector, constraint_of

logger = logging.getLogger(__name__)

#: passes per feature factor after which a boundary search stops (the bracket is then reported as is)
MAX_PASSES = 12
#: a metric peak inside the feasible range is bracketed to (1 + tolerance) ** this (see PeakSearch)
PEAK_TOLERANCE_POWER = 4


def key_weights(probe: DecoderProbe, key: str) -> tuple[np.ndarray, float]:
    """``(weights [rows, classes], offset)`` with metric = offset + Σ weights · probs (see ``DecoderProbe.score``)."""
    w = np.zeros((len(probe.prompts), len(probe.classes)))
    for j, c in enumerate(probe.classes):
        other = [o for o in probe.classes if o != c][0]
        if key == c:
            rows = probe.row_class == other
            w[rows, j] = 1.0 / max(int(rows.sum()), 1)
            return w, 0.0
        if key == f"{c}_weaken":
            rows = probe.row_class == c
            w[rows, j] = -1.0 / max(int(rows.sum()), 1)
            return w, 1.0
    raise ValueError(f"the fast search predicts class metrics only, not {key!r}; use search='grid'")


def supported(select: Selector) -> Constraint | None:
    """The selector's constraint if the fast search can predict it (a perplexity or LMS bound)."""
    c = constraint_of(select)
    return c if c is not None and c.measure in ("perplexity", "lms") else None


def ce_rise_target(constraint: Constraint) -> float:
    """The neutral-CE rise at which ``constraint`` binds: exact for perplexity, a proxy for LMS."""
    return math.log(constraint.factor) if constraint.measure == "perplexity" else -math.log(constraint.factor)


class BoundarySearch:
    """Bracket and bisect the largest lr (in [lo_bound, hi_bound]) that keeps the constraint, on real passes."""

    def __init__(self, probe: DecoderProbe, feature_factor: float, taylor: LineTaylor, constraint: Constraint,
                 base: dict[str, Any], key: str, bounds: tuple[float, float], tolerance: float) -> None:
        self.probe, self.ff, self.taylor, self.constraint = probe, feature_factor, taylor, constraint
        self.base, self.key, self.bounds, self.tolerance = base, key, bounds, tolerance
        self.rise = ce_rise_target(constraint)
        self.base_ce = math.log(base["perplexity"])
        self.lo: float | None = None
        self.hi: float | None = None
        self.points: list[dict[str, Any]] = []

    def estimate(self, x: float, point: dict[str, Any]) -> float | None:
        """The boundary guessed from the Taylor model rescaled to match the real CE rise at ``x``
        (LMS: also the real LMS drop per unit of CE rise there)."""
        q = float(self.taylor.ce_rise(x))
        real = math.log(point["perplexity"]) - self.base_ce
        if q <= 0 or real <= 0:
            return None
        target = self.rise
        if self.constraint.measure == "lms":
            drop = self.base["lms"] - point["lms"]
            allowed = self.base["lms"] * (1.0 - self.constraint.factor)
            if drop <= 0:
                return None
            target = allowed * real / drop
        k = real / q
        return quadratic_root(k * float(self.taylor.ce[1]), k * float(self.taylor.ce[2]), target)

    def next_lr(self, est: float | None) -> float:
        lo_b, hi_b = self.bounds
        half = math.sqrt(1.0 + self.tolerance)
        lo, hi = self.lo, self.hi
        if lo is None:
            assert hi is not None
            x = est / half if est is not None and est < hi else hi / 4.0
            return max(x, lo_b)
        if hi is None:
            x = est * half if est is not None and est > lo else lo * 4.0
            return min(x, hi_b)
        mid = math.sqrt(lo * hi)
        if est is None or not lo < est < hi:
            return mid
        below, above = est / half, est * half  # expected feasible / infeasible
        x = below if hi / below < above / lo else above
        ratio = min(hi / below, above / lo)
        return x if lo < x < hi and ratio < math.sqrt(hi / lo) else mid

    def run(self, start: float | None) -> BoundarySearch:
        lo_b, hi_b = self.bounds
        x = hi_b if start is None else min(max(start, lo_b), hi_b)
        for _ in range(MAX_PASSES):
            p = dict(self.probe.score_at(self.ff, x), search="fast", refined=bool(self.points))
            self.points.append(p)
            if self.constraint.holds(p, self.base, self.key):
                self.lo = x if self.lo is None else max(self.lo, x)
            else:
                self.hi = x if self.hi is None else min(self.hi, x)
            if self.lo is not None and self.lo >= hi_b or self.hi is not None and self.hi <= lo_b:
                break
            if self.lo is not None and self.hi is not None and self.hi / self.lo <= 1.0 + self.tolerance:
                break
            x = self.next_lr(self.estimate(x, p))
        return self


class PeakSearch:
    """The metric's best point on [lo_bound, lo] of one line (``lo`` = the feasible end of the boundary
    bracket). If the Taylor model held up to ``lo`` and the metric still rises into it (one pass just
    below ``lo`` shows it), ``lo`` is that point. Otherwise the line is scanned one point per decade
    (plus the Taylor vertex of the metric, if any), and the best scanned point is refined by
    golden-section in log lr until its bracket's hi / lo ≤ (1 + ``tolerance``) ** PEAK_TOLERANCE_POWER."""

    def __init__(self, probe: DecoderProbe, feature_factor: float, key: str, lo_bound: float, tolerance: float,
                 feasible: Callable[[dict[str, Any]], bool]) -> None:
        self.probe, self.ff, self.key, self.lo_bound, self.tolerance = probe, feature_factor, key, lo_bound, tolerance
        self.feasible = feasible
        self.points: list[dict[str, Any]] = []
        self.scanned = False

    def at(self, x: float) -> dict[str, Any]:
        p = dict(self.probe.score_at(self.ff, x), search="fast", refined=True)
        self.points.append(p)
        return p

    def m(self, p: dict[str, Any]) -> float:
        return float(p["metrics"][self.key]) if self.feasible(p) else -math.inf

    def run(self, line: Sequence[dict[str, Any]], lo: float, vertex: float | None, trusted: bool) -> PeakSearch:
        line = list(line)
        top = next(p for p in line if p["learning_rate"] == lo)
        if trusted:
            below = [p for p in line if lo / (1.0 + self.tolerance) ** 2 <= p["learning_rate"] < lo]
            b = max(below, key=lambda p: p["learning_rate"]) if below else self.at(lo / (1.0 + self.tolerance))
            line.append(b)
            if self.m(b) <= self.m(top):
                return self  # rising into the boundary: the boundary point is the line's best
        self.scanned = True
        decades = max(1, math.ceil(math.log10(lo / self.lo_bound) - 1e-9))
        xs = [lo / 10.0**k for k in range(1, decades + 1)]
        xs += [vertex] if vertex is not None and self.lo_bound < vertex < lo else []
        line += [self.at(max(x, self.lo_bound)) for x in xs]
        line = sorted({p["learning_rate"]: p for p in line}.values(), key=lambda p: p["learning_rate"])
        i = max(range(len(line)), key=lambda j: self.m(line[j]))
        if i == 0 or i == len(line) - 1:
            return self  # best at an end of the searched range
        a, b, c = line[i - 1], line[i], line[i + 1]
        # near a smooth maximum the metric changes only quadratically with the lr: a looser bracket suffices
        width = PEAK_TOLERANCE_POWER * math.log1p(self.tolerance)
        while math.log(c["learning_rate"] / a["learning_rate"]) > width and len(self.points) < MAX_PASSES:
            la, lb, lc = (math.log(p["learning_rate"]) for p in (a, b, c))
            left = lb - la > lc - lb
            p = self.at(math.exp(lb - 0.382 * (lb - la)) if left else math.exp(lb + 0.382 * (lc - lb)))
            if self.m(p) > self.m(b):
                a, b, c = (a, p, b) if left else (b, p, c)
            else:
                a, b, c = (p, b, c) if left else (a, b, p)
        return self


def predicted_metrics(probe: DecoderProbe, taylor: LineTaylor, keys: Sequence[str], lr: float) -> dict[str, Any]:
    """Per key: Taylor coefficients [value, d/dlr, d²/dlr²] and the predicted value at ``lr``."""
    out = {}
    for key in keys:
        w, off = key_weights(probe, key)
        m = taylor.metric(w, off)
        out[key] = {"taylor": [float(x) for x in m], "at_boundary": float(m[0] + m[1] * lr + 0.5 * m[2] * lr * lr)}
    return out


def fast_points(probe: DecoderProbe, feature_factors: Sequence[float], keys: Sequence[str], select: Selector,
                base: dict[str, Any], bounds: tuple[float, float], *, tolerance: float = 0.05,
                derivatives: str = "fd", fd_step: float | None = None,
                on_line: Callable[[float], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Real points near each line's constraint boundary and a report of the prediction and its check.

    ``bounds`` is the lr range searched; ``fd_step`` the lr step of ``derivatives="fd"``
    (default 1e-3 × the upper bound).
    """
    constraint = supported(select)
    if constraint is None:
        raise ValueError(f"search='fast' needs a selector with a perplexity or LMS bound, not "
                         f"{getattr(select, '__name__', select)!r}; use search='grid'")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    fn = LineFunction(probe.mwg, probe.prompts, probe.neutral, [probe.token_ids[c] for c in probe.classes],
                      probe.batch_size)
    h = fd_step if fd_step is not None else 1e-3 * bounds[1]
    lines: dict[float, dict[str, Any]] = {}
    taylors: dict[float, LineTaylor] = {}
    for ff in feature_factors:
        taylors[ff] = t = line_taylor(fn, ff, derivatives, h)
        guess = t.boundary(ce_rise_target(constraint))
        at = min(max(guess, bounds[0]), bounds[1]) if guess is not None else bounds[1]
        pred = predicted_metrics(probe, t, keys, at)
        lines[ff] = {"feature_factor": ff, "predicted_lr": guess, "ce_taylor": [float(x) for x in t.ce],
                     "metrics": pred, "rises": any(p["at_boundary"] > base["metrics"][k] or p["taylor"][1] > 0
                                                  for k, p in pred.items())}
        if on_line is not None:
            on_line(ff)
    verify = [ff for ff in feature_factors if lines[ff]["rises"]] or list(feature_factors)
    points: list[dict[str, Any]] = []
    for ff in verify:
        s = BoundarySearch(probe, ff, taylors[ff], constraint, base, keys[0], bounds, tolerance).run(
            lines[ff]["predicted_lr"])
        points += s.points
        lines[ff].update(verified=True, boundary_lo=s.lo, boundary_hi=s.hi, passes=len(s.points))
        logger.info("fast search ff=%+g: predicted boundary lr %s, real bracket [%s, %s] after %d passes", ff,
                    _fmt(lines[ff]["predicted_lr"]), _fmt(s.lo), _fmt(s.hi), len(s.points))
    def feasible(p: dict[str, Any]) -> bool:
        return constraint.holds(p, base, keys[0])

    for ff in verify:
        lo = lines[ff].get("boundary_lo")
        if lo is None:
            continue
        line = [p for p in points if p["feature_factor"] == ff and p["learning_rate"] <= lo]
        for key in keys:
            m = lines[ff]["metrics"][key]["taylor"]
            top = next(p for p in line if p["learning_rate"] == lo)
            if not (m[1] > 0 or top["metrics"][key] > base["metrics"][key]):
                continue
            vertex = -m[1] / m[2] if m[2] < 0 < m[1] else None
            real = math.log(top["perplexity"]) - math.log(base["perplexity"])
            q = float(taylors[ff].ce_rise(lo))
            trusted = lines[ff]["predicted_lr"] is not None and q > 0 and 0.5 <= real / q <= 2.0
            peak = PeakSearch(probe, ff, key, bounds[0], tolerance, feasible).run(line, lo, vertex, trusted)
            points += peak.points
            line += peak.points
            lines[ff].setdefault("peak", {})[key] = {"passes": len(peak.points), "scanned": peak.scanned,
                                                     "taylor_trusted": trusted}
    jvp = sum(t.passes for t in taylors.values())
    info = {"search": "fast", "derivatives": derivatives, "tolerance": tolerance, "lr_bounds": list(bounds),
            "jvp_passes": jvp, "lines": {repr(ff): lines[ff] for ff in feature_factors}}
    return points, info


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.4g}"
