"""Pareto sweeps: on-target effect vs off-target damage over a family of edits ``make_edit(value)``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._progress import progress
from ..edits import WeightEdit
from ..errors import ConfigError
from ..models import LanguageModel
from .control import random_like
from .radius import EditResult, Target, evaluate_edits

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def _off_target(res: EditResult, target: Target) -> float:
    """max |ce_delta| over the corpora other than the target corpus (all corpora for a TargetSpec)."""
    vals = [abs(v) for g, v in res.ce_delta.items() if g != target]
    return max(vals) if vals else float("nan")


def _row(value: float, method: str, res: EditResult, target: Target, prefix: str = "") -> dict[str, Any]:
    nan = float("nan")
    ot = res.on_target or {}
    row: dict[str, Any] = {
        f"{prefix}on_target": ot.get("delta", nan),
        f"{prefix}on_target_before": ot.get("before", nan),
        f"{prefix}on_target_after": ot.get("after", nan),
        f"{prefix}off_target": _off_target(res, target),
        f"{prefix}off_target_kl": res.global_kl if res.global_kl is not None else nan,
        f"{prefix}surrounding_kl": res.surrounding_kl if res.surrounding_kl is not None else nan,
    }
    if not prefix:
        row = {"value": float(value), "method": method, **row}
        row.update({f"ce_delta_{g}": v for g, v in res.ce_delta.items()})
        row.update({f"kl_{g}": v for g, v in res.kl.items()})
    return row


def pareto_sweep(lm: LanguageModel, make_edit: Callable[[float], WeightEdit], values: Sequence[float],
                 corpora: Mapping[str, Sequence[str]], target: Target, *, method: str = "edit",
                 control: bool = False, seed: int = 0, batch_size: int | None = None,
                 chunk: int = 8) -> pd.DataFrame:
    """One row per value of ``make_edit(value)``: on-target effect vs off-target damage.

    Columns: ``value``, ``method``, ``on_target`` (the on-target delta of ``blast_radius``; with
    ``_before``/``_after``), ``off_target`` (max |ce_delta| over the non-target corpora),
    ``off_target_kl`` (token-weighted mean KL over them), ``surrounding_kl``, ``ce_delta_<key>`` and
    ``kl_<key>`` per corpus, and with ``control=True`` the same ``control_*`` numbers for a random edit
    of each value's structure and norm. The base model is scored once per batch and shared by up to
    ``chunk`` edits (values are processed ``chunk`` at a time).

    Raises:
        ConfigError: no values, a non-finite value, or ``chunk`` < 1 (plus everything ``blast_radius`` raises).
    """
    import pandas as pd

    values = [float(v) for v in values]
    if not values:
        raise ConfigError("values is empty; give the edit strengths to sweep, e.g. [0.5, 1, 2]")
    if any(not math.isfinite(v) for v in values):
        raise ConfigError(f"values must be finite, got {values}; give finite edit strengths")
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    rows: list[dict[str, Any]] = []
    starts = range(0, len(values), chunk)
    for s in progress(starts, desc=f"pareto {method}", disable=len(starts) < 2):
        part = values[s : s + chunk]
        edits = [make_edit(v) for v in part]
        bad = [type(e).__name__ for e in edits if not isinstance(e, WeightEdit)]
        if bad:
            raise TypeError(f"make_edit must return a WeightEdit, got {bad[0]}")
        controls = [random_like(e, lm.model, seed) for e in edits] if control else []
        _, results = evaluate_edits(lm, edits + controls, corpora, target, batch_size=batch_size)
        for i, v in enumerate(part):
            row = _row(v, method, results[i], target)
            if control:
                row.update(_row(v, method, results[len(part) + i], target, prefix="control_"))
            rows.append(row)
        logger.info("pareto %s: %d/%d values done", method, len(rows), len(values))
    return pd.DataFrame(rows)


def pareto_front(frame: pd.DataFrame, x: str = "on_target", y: str = "off_target", *,
                 maximize_x: bool = True, minimize_y: bool = True) -> pd.DataFrame:
    """The rows of ``frame`` not dominated by any other row, sorted by ``x``.

    A row dominates another when it is at least as good on both columns and better on one; "good"
    is large ``x`` (``maximize_x``) and small ``y`` (``minimize_y``). Rows with NaN in ``x`` or ``y``
    are ignored.

    Raises:
        KeyError: ``x`` or ``y`` is not a column (the message lists the columns).
    """
    for col in (x, y):
        if col not in frame.columns:
            raise KeyError(f"column {col!r} is not in the frame; columns: {list(frame.columns)}")
    ok = frame[[x, y]].notna().all(axis=1)
    sub = frame[ok]
    xs = sub[x].to_numpy(dtype=float) * (1.0 if maximize_x else -1.0)  # larger is better
    ys = sub[y].to_numpy(dtype=float) * (1.0 if minimize_y else -1.0)  # smaller is better
    keep = []
    for i in range(len(sub)):
        dominated = ((xs >= xs[i]) & (ys <= ys[i]) & ((xs > xs[i]) | (ys < ys[i]))).any()
        keep.append(not dominated)
    return sub[keep].sort_values(x)
