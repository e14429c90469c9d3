"""Decoder evaluation: sweep (feature_factor, learning_rate), score each point, select under an LMS
constraint, refine the learning rate by bisection.

Every point is applied to the base model IN PLACE and restored bit-exactly (only the mapped entries
are snapshotted); the base model's outputs are computed once.

Metrics, per class C of the two target classes:
- strengthen C (key ``"C"``): mean P(C's tokens) at the prediction point of the OTHER class's rows;
- weaken C (key ``"C_weaken"``): 1 − mean P(C's tokens) on C's own rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import dist
from ..._progress import progress
from ..._version import __version__
from ...data.schema import PairDataset
from ..model import ModelWithGradiend
from .fast import fast_points, supported
from .probe import DecoderProbe, bias_scores
from .results import DecoderResults, Selection
from .selectors import (
    Selector,
    constraint_of,
    explain_no_point,
    raises_metric,
    resolve_selector,
    result_key,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_FEATURE_FACTORS", "DEFAULT_RELATIVE_LRS", "DEFAULT_SEARCH", "DecoderProbe", "SEARCHES", "bias_scores", "evaluate_decoder",
           "fingerprint", "load_cached", "lr_scale", "make_probe", "resolve_search", "select_point"]

DEFAULT_FEATURE_FACTORS = (-1.0, 1.0)
#: default learning rates are this many times ``lr_scale`` (update norm / weight norm on the mapped entries)
DEFAULT_RELATIVE_LRS = tuple(float(x) for x in np.logspace(-5, -1, 5))
SEARCHES = ("grid", "fast")
#: the search ``evaluate_decoder`` uses when none is given (and the selector allows it)
DEFAULT_SEARCH = "grid"


def lr_scale(mwg: ModelWithGradiend) -> float:
    """||θ_mapped|| / ||decoder(1)||: the learning rate at which the update is as large as the weights."""
    fm = mwg.feature_model
    named = dict(mwg.lm.model.named_parameters())
    with torch.no_grad():
        w = float(mwg.param_map.gather({n: named[n] for n in mwg.param_map.names}).double().norm())
        d = float(fm.decode(1.0).double().norm())  # python floats: the feature model may sit on another device
    return w / d if d > 0 else 1.0


def fingerprint(mwg: ModelWithGradiend, data: PairDataset, neutral: Sequence[str], grid: dict[str, Any]) -> str:
    """Hash of everything that determines a sweep's numbers."""
    fm = mwg.feature_model
    h = hashlib.sha256()
    precision = {"autocast": mwg.lm.autocast} if mwg.lm.autocast else {}  # bf16/fp16 scores are other numbers
    h.update(json.dumps({"grid": grid, "model": mwg.lm.name, "version": __version__, "data": data.fingerprint(),
                         "fm": {k: v for k, v in fm.to_config().items() if k != "metadata"}, **precision},
                        sort_keys=True, default=str).encode())
    for t in (fm.encoder_weight, fm.decoder_weight, fm.decoder_bias):
        if t is not None:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update("\n".join(neutral).encode())
    return h.hexdigest()[:20]


def evaluate_decoder(mwg: ModelWithGradiend, data: PairDataset, classes: tuple[str, str], neutral: Sequence[str],
                     *, target_class: str | Sequence[str] | None = None, increase_target_probabilities: bool = True,
                     feature_factors: Sequence[float] | None = None, learning_rates: Sequence[float] | None = None,
                     selector: str | Selector | None = None, refine_steps: int = 4,
                     batch_size: int = 16, max_rows_per_class: int | None = 64,
                     cache_dir: Path | None = None, split: str = "",
                     bias_prompts: Sequence[str] | None = None, search: str | None = None,
                     tolerance: float = 0.05, derivatives: str = "fd") -> DecoderResults:
    """Select per requested class and direction the strongest point within the selector's constraint.

    ``search="grid"`` scores every (feature factor, lr) of the grid, then refines the lr by
    ``refine_steps`` bisections. ``search="fast"`` (:mod:`.fast`) predicts each feature factor's
    constraint boundary from lr-derivatives at lr = 0 (``derivatives``: ``"fd"``, first-order jvps at
    ±h, or ``"jvp2"`` jvp-of-jvp — exact, but one nested pass cost ≈ 8 scoring passes on smollm2-135m
    against ≈ 2 for an fd jvp, for the same selected point), then brackets and bisects it on real passes until hi/lo ≤ 1 + ``tolerance`` within
    [min, max] of ``learning_rates``; it needs a perplexity or LMS selector. ``None`` =
    :data:`DEFAULT_SEARCH` when the selector allows it, else the grid. ``info["forward_passes"]``
    counts scoring passes (+ derivative passes for the fast search).

    ``split`` names the data split ``data`` comes from; it is recorded with every selection (the
    selected value is measured on these rows, so report held-out figures on another split).
    With ``cache_dir``, results are stored under a fingerprint of every input (data hash, neutral
    text, grid, feature-model weights, model id, library version) and reused only on an exact match.
    ``max_rows_per_class`` caps the prompts scored per class (a seeded sample; ``None`` = all rows).
    ``bias_prompts`` also scores every point's bias on these neutral prompts (grid metric ``"debias"``;
    pass the same list to :func:`evaluate_debias` and it reuses the points).

    Under ``torchrun`` / ``accelerate launch`` every scoring (and derivative) pass is split over the
    ranks by rows (:class:`DecoderProbe`), so every rank holds the same grid and makes the same
    selection as one process would (up to float addition order); rank 0 alone reads and writes the
    caches.
    """
    dist.init()
    targets = _targets(target_class, classes)
    keys = [result_key(c, increase_target_probabilities) for c in targets]
    select = resolve_selector(selector)
    ffs = [float(f) for f in (feature_factors or DEFAULT_FEATURE_FACTORS)]
    scale = lr_scale(mwg)
    lrs = sorted(float(x) for x in (learning_rates or [scale * r for r in DEFAULT_RELATIVE_LRS]))
    if any(lr <= 0 for lr in lrs):
        raise ValueError("learning_rates must be positive (the sign of the edit is the feature factor's)")
    sel_name = getattr(select, "__name__", repr(select))
    mode = resolve_search(search, select)
    grid_key = {"ffs": ffs, "lrs": lrs, "targets": targets, "increase": increase_target_probabilities,
                "selector": sel_name, "refine": refine_steps, "classes": list(classes),
                "max_rows_per_class": max_rows_per_class, "rule": "admissible"}
    if mode == "fast":  # the grid's key is unchanged, so its caches stay valid
        grid_key = {**grid_key, "search": "fast", "refine": None, "tolerance": tolerance, "derivatives": derivatives}
    fp = fingerprint(mwg, data, neutral, {**grid_key, "bias_prompts": list(bias_prompts or [])})
    cached = cache_dir / f"decoder_{fp}.json" if cache_dir is not None else None
    hit = load_cached(cached)
    if hit is not None:
        return hit
    probe = make_probe(mwg, data, classes, neutral, batch_size, max_rows_per_class, cache_dir, bias_prompts)
    base = probe.base_point()
    extra: dict[str, Any] = {"search": "grid"}
    if mode == "fast":
        grid, extra = fast_points(probe, ffs, keys, select, base, (lrs[0], lrs[-1]), tolerance=tolerance,
                                  derivatives=derivatives)
    else:
        grid = [probe.score_at(ff, lr) for ff, lr in progress([(f, r) for f in ffs for r in lrs], desc="decoder grid")]
        for key in keys:
            grid += _refine(probe, grid, key, base, select, refine_steps)
    extra["forward_passes"] = probe.passes + extra.get("jvp_passes", 0)
    extra["scoring_passes"] = probe.passes
    selections = {key: select_point(select, grid, key, cls, base, increase_target_probabilities, split)
                  for key, cls in zip(keys, targets)}
    constraint = constraint_of(select)
    info = {"lr_scale": scale, "selector": sel_name, "neutral_texts": len(neutral), "rows": len(probe.prompts),
            "split": split, "class_tokens": probe.tokens, "constraint": asdict(constraint) if constraint is not None
            else {"measure": None, "factor": None, "upper": None, "label": f"selector {sel_name} (no stated bound)"},
            **extra}
    results = DecoderResults(selections, grid, base, fp, info)
    if cached is not None and dist.is_main():
        results.save(cached)
    return results


def load_cached(path: Path | None) -> DecoderResults | None:
    """The results cached at ``path`` (read on rank 0, the same on every rank), or ``None``."""
    if path is None:
        return None
    found = dist.main_decides(lambda: DecoderResults.load(path).to_dict() if path.is_file() else None)
    if found is None:
        return None
    logger.info("decoder results loaded from cache %s", path)
    return DecoderResults.from_dict(found)


def resolve_search(search: str | None, select: Selector) -> str:
    """``"grid"`` or ``"fast"``: ``None`` is :data:`DEFAULT_SEARCH` if the selector has a perplexity or
    LMS bound (the fast search predicts those), else ``"grid"``."""
    if search is None:
        return DEFAULT_SEARCH if supported(select) is not None else "grid"
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    if search == "fast" and supported(select) is None:
        raise ValueError(f"search='fast' needs a selector with a perplexity or LMS bound, not "
                         f"{getattr(select, '__name__', select)!r}; use search='grid'")
    return search


def make_probe(mwg: ModelWithGradiend, data: PairDataset, classes: tuple[str, str], neutral: Sequence[str],
               batch_size: int, max_rows_per_class: int | None, cache_dir: Path | None,
               bias_prompts: Sequence[str] | None) -> DecoderProbe:
    """A ``DecoderProbe`` sharing scored points (file in ``cache_dir``) with every sweep of the same inputs."""
    probe = DecoderProbe(mwg, data, classes, neutral, batch_size, max_rows_per_class, bias_prompts=bias_prompts)
    if cache_dir is not None:
        probe_fp = fingerprint(mwg, data, neutral, {"classes": list(classes), "max_rows_per_class": max_rows_per_class,
                                                    "bias_prompts": list(bias_prompts or [])})
        probe.use_point_cache(cache_dir / f"points_{probe_fp}.json")
    return probe


def select_point(select: Selector, grid: list[dict[str, Any]], key: str, cls: str, base: dict[str, Any],
                 increase: bool, split: str) -> Selection:
    """The selector's choice as a ``Selection``; the base ("no admissible point", logged) when it chose
    nothing or a point that does not raise the metric above its base value."""
    best = select(grid, key, base)
    admissible = best is not base and raises_metric(best, base, key)
    reason = ""
    if not admissible:
        name = getattr(select, "__name__", repr(select))
        reason = explain_no_point(grid, key, base, constraint_of(select), name)
        logger.warning("%s (selector %s); keeping the base model for %s", reason, name, key)
        best = base
    return Selection(key=key, target_class=cls, increase=increase, value=best["metrics"][key],
                     base_value=base["metrics"][key], feature_factor=best["feature_factor"],
                     learning_rate=best["learning_rate"], lms=best["lms"], base_lms=base["lms"],
                     perplexity=best["perplexity"], base_perplexity=base["perplexity"], admissible=admissible,
                     reason=reason, split=split)


def _targets(target_class: str | Sequence[str] | None, classes: tuple[str, str]) -> list[str]:
    if target_class is None:
        return list(classes)
    wanted = [target_class] if isinstance(target_class, str) else list(target_class)
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise ValueError(f"target_class {unknown} is not one of the trained classes {list(classes)}")
    return wanted


def _refine(probe: DecoderProbe, grid: list[dict[str, Any]], key: str, base: dict[str, Any], select: Selector,
            steps: int) -> list[dict[str, Any]]:
    """Bisect (in log space) between the best point's lr and the next larger lr of the same feature
    factor, keeping the side that the selector prefers — the constraint boundary is usually there."""
    best = select(grid, key, base)
    if steps <= 0 or best is base:
        return []
    ff = best["feature_factor"]
    same = sorted((p for p in grid if p["feature_factor"] == ff), key=lambda p: p["learning_rate"])
    larger = [p for p in same if p["learning_rate"] > best["learning_rate"]]
    if not larger:
        return []
    lo, hi = best, larger[0]
    added = []
    for _ in range(steps):
        mid_lr = math.sqrt(lo["learning_rate"] * hi["learning_rate"])
        mid = dict(probe.score_at(ff, mid_lr), refined=True)
        added.append(mid)
        if select([lo, mid], key, base) is mid:
            lo = mid
        else:
            hi = mid
    return added
