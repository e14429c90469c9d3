"""Debiasing as a rewrite: sweep the decoder and pick the point most balanced between the two classes
on neutral prompts (|log P(A) − log P(B)| → 0), under a perplexity or LMS constraint.

The sweep scores the same grid points as :func:`.decoder.evaluate_decoder` (and shares them through
the point cache when given the same ``bias_prompts``); the feature factors default to −1, 0 and +1
(0 applies the decoder bias alone). The bias measure is a U-shaped function of the learning rate
(it crosses balance), so the refinement brackets the best point from both sides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ... import dist
from ..._progress import progress
from ...data.schema import PairDataset
from ..model import ModelWithGradiend
from .decoder import (
    DEFAULT_RELATIVE_LRS,
    DecoderProbe,
    fingerprint,
    load_cached,
    lr_scale,
    make_probe,
    select_point,
)
from .results import DecoderResults
from .selectors import DEBIAS_KEY, Selector, constraint_of, resolve_selector

logger = logging.getLogger(__name__)

DEBIAS_FEATURE_FACTORS = (-1.0, 0.0, 1.0)
DEFAULT_DEBIAS_SELECTOR = "balance:0.02"


def evaluate_debias(mwg: ModelWithGradiend, data: PairDataset, classes: tuple[str, str], neutral: Sequence[str],
                    prompts: Sequence[str], *, feature_factors: Sequence[float] | None = None,
                    learning_rates: Sequence[float] | None = None, selector: str | Selector | None = None,
                    refine_steps: int = 3, batch_size: int = 16, max_rows_per_class: int | None = 64,
                    cache_dir: Path | None = None, split: str = "") -> DecoderResults:
    """Sweep (feature factor × lr), score each point's bias on ``prompts`` and perplexity/LMS on
    ``neutral``, and select the most balanced admissible point (selection key ``"debias"``).

    Args:
        prompts: neutral prompts where either class fits next, e.g.
            ``gradedit.data.templates.occupation_prompts("selection")``; keep a held-out set for the report.
        selector: default ``"balance:0.02"`` (neutral perplexity within +2 %); ``"balance:X"`` or
            ``balance_constraint(x, "lms")`` for others.
        data, classes, split: the class rows; their tokens define P(A) and P(B) (the class probabilities
            are scored too, so the points serve strengthen/weaken sweeps as well).

    Returns:
        ``DecoderResults`` with ``["debias"]`` (``value`` = −mean |log-ratio|: 0 is balanced) and
        ``info["bias"]`` = the bias measure of the base and of the selected point on ``prompts``.

    Under a launcher the scoring passes are split over the ranks by rows, as in ``evaluate_decoder``.
    """
    dist.init()
    if not prompts:
        raise ValueError("evaluate_debias needs neutral prompts, e.g. gradedit.data.templates.occupation_prompts()")
    select = resolve_selector(selector or DEFAULT_DEBIAS_SELECTOR)
    ffs = [float(f) for f in (feature_factors or DEBIAS_FEATURE_FACTORS)]
    scale = lr_scale(mwg)
    lrs = sorted(float(x) for x in (learning_rates or [scale * r for r in DEFAULT_RELATIVE_LRS]))
    if any(lr <= 0 for lr in lrs):
        raise ValueError("learning_rates must be positive (the sign of the edit is the feature factor's)")
    sel_name = getattr(select, "__name__", repr(select))
    grid_key = {"ffs": ffs, "lrs": lrs, "selector": sel_name, "refine": refine_steps, "classes": list(classes),
                "max_rows_per_class": max_rows_per_class, "debias": list(prompts)}
    fp = fingerprint(mwg, data, neutral, grid_key)
    cached = cache_dir / f"debias_{fp}.json" if cache_dir is not None else None
    hit = load_cached(cached)
    if hit is not None:
        return hit
    probe = make_probe(mwg, data, classes, neutral, batch_size, max_rows_per_class, cache_dir, prompts)
    base = probe.base_point()
    logger.info("debias: base mean |log P(%s) - log P(%s)| = %.3f on %d prompts", *classes,
                base["bias"]["mean_abs_log_ratio"], len(prompts))
    grid = [probe.score_at(ff, lr) for ff, lr in progress([(f, r) for f in ffs for r in lrs], desc="debias grid")]
    grid += refine_bracket(probe, grid, base, select, refine_steps)
    selection = select_point(select, grid, DEBIAS_KEY, "balance", base, True, split)
    chosen = next((p for p in grid if p["feature_factor"] == selection.feature_factor
                   and p["learning_rate"] == selection.learning_rate), base)
    constraint = constraint_of(select)
    info = {"lr_scale": scale, "selector": sel_name, "neutral_texts": len(neutral), "rows": len(probe.prompts),
            "split": split, "bias_prompts": len(prompts), "classes": list(classes), "class_tokens": probe.tokens,
            "bias": {"base": base["bias"], "selected": chosen["bias"]},
            "constraint": asdict(constraint) if constraint is not None
            else {"measure": None, "factor": None, "upper": None, "label": f"selector {sel_name} (no stated bound)"}}
    results = DecoderResults({DEBIAS_KEY: selection}, grid, base, fp, info)
    logger.info("debias: selected ff=%+g lr=%.3g: mean |log-ratio| %.3f -> %.3f (selection prompts)",
                selection.feature_factor, selection.learning_rate, base["bias"]["mean_abs_log_ratio"],
                chosen["bias"]["mean_abs_log_ratio"])
    if cached is not None and dist.is_main():
        results.save(cached)
    return results


def refine_bracket(probe: DecoderProbe, grid: list[dict[str, Any]], base: dict[str, Any], select: Selector,
                   steps: int) -> list[dict[str, Any]]:
    """Narrow the learning rate around the selected point from both sides: each step scores the
    geometric midpoints towards its lower and upper neighbours (of the same feature factor) and moves
    the bracket to the selector's choice. The lower end of the lowest point is lr / 10."""
    best = select(grid, DEBIAS_KEY, base)
    if steps <= 0 or best is base:
        return []
    ff = best["feature_factor"]
    same = sorted((p for p in grid if p["feature_factor"] == ff), key=lambda p: p["learning_rate"])
    i = next(k for k, p in enumerate(same) if p["learning_rate"] == best["learning_rate"])
    lo_lr = same[i - 1]["learning_rate"] if i > 0 else best["learning_rate"] / 10
    hi_lr = same[i + 1]["learning_rate"] if i + 1 < len(same) else best["learning_rate"] * 10
    added: list[dict[str, Any]] = []
    for _ in range(steps):
        b = best["learning_rate"]
        mids = [dict(probe.score_at(ff, math.sqrt(lo_lr * b)), refined=True),
                dict(probe.score_at(ff, math.sqrt(b * hi_lr)), refined=True)]
        added += mids
        choice = select([best, *mids], DEBIAS_KEY, base)
        if choice is mids[0]:
            hi_lr, best = b, mids[0]
        elif choice is mids[1]:
            lo_lr, best = b, mids[1]
        else:
            lo_lr, hi_lr = mids[0]["learning_rate"], mids[1]["learning_rate"]
    return added
