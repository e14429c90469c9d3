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

from ... import metrics
from ..._files import write_json_atomic
from ..._progress import progress
from ..._version import __version__
from ...data.schema import PairDataset
from ...models import LanguageModel
from ..model import ModelWithGradiend
from .results import DecoderResults, Selection
from .selectors import (
    DEBIAS_KEY,
    Selector,
    constraint_of,
    explain_no_point,
    raises_metric,
    resolve_selector,
    result_key,
)

logger = logging.getLogger(__name__)

DEFAULT_FEATURE_FACTORS = (-1.0, 1.0)
#: default learning rates are this many times ``lr_scale`` (update norm / weight norm on the mapped entries)
DEFAULT_RELATIVE_LRS = tuple(float(x) for x in np.logspace(-5, -1, 5))


def bias_scores(lm: LanguageModel, prompts: Sequence[str], ids_a: Sequence[int], ids_b: Sequence[int],
                batch_size: int = 16) -> dict[str, float]:
    """Pronoun bias of ``lm`` on neutral prompts, with P(A) = Σ P(class A tokens) at each prediction point:

    ``mean_abs_log_ratio`` = mean |log P(A) − log P(B)| (0 = balanced on every prompt),
    ``mean_log_ratio`` = mean log P(A) − log P(B) (the signed lean: > 0 towards A), ``p_a``/``p_b`` the
    mean probabilities, ``n`` the prompt count.
    """
    if not prompts:
        raise ValueError("bias_scores needs at least one prompt")
    ids = [*ids_a, *ids_b]
    p = metrics.next_token_logprobs(lm, list(prompts), ids, batch_size=batch_size).double().exp()
    pa, pb = p[:, :len(ids_a)].sum(-1), p[:, len(ids_a):].sum(-1)
    ratio = pa.log() - pb.log()
    return {"mean_abs_log_ratio": float(ratio.abs().mean()), "mean_log_ratio": float(ratio.mean()),
            "p_a": float(pa.mean()), "p_b": float(pb.mean()), "n": len(prompts)}


class DecoderProbe:
    """Everything a grid point is scored with: prompts, class tokens, neutral text and (optionally)
    neutral prompts for the bias measure (grid metric ``"debias"``, see :func:`bias_scores`)."""

    def __init__(self, mwg: ModelWithGradiend, data: PairDataset, classes: tuple[str, str],
                 neutral: Sequence[str], batch_size: int = 16, max_rows_per_class: int | None = None,
                 seed: int = 0, bias_prompts: Sequence[str] | None = None) -> None:
        lm = mwg.lm
        frame = data.to_frame()
        frame = frame[frame["factual_class"].isin(classes)]
        if frame.empty:
            raise ValueError(f"no rows of classes {list(classes)} to evaluate the decoder on")
        if max_rows_per_class is not None:
            keep = [g.sample(min(len(g), max_rows_per_class), random_state=seed).index
                    for _, g in frame.groupby("factual_class")]
            frame = frame.loc[sorted(i for idx in keep for i in idx)]
        self.mwg, self.classes, self.neutral, self.batch_size = mwg, classes, list(neutral), batch_size
        if not self.neutral:
            raise ValueError("decoder evaluation needs neutral texts for the LMS constraint")
        sub = PairDataset.from_frame(frame.reset_index(drop=True))
        self.prompts = sub.prompts(lm.kind, lm.tokenizer.mask_token)
        self.row_class = frame["factual_class"].to_numpy()
        tokens = {c: sorted(set(frame.loc[frame["factual_class"] == c, "factual"])) for c in classes}
        self.tokens = tokens
        self.token_ids = {c: lm.token_ids(tokens[c]) for c in classes}
        self.all_ids = sorted({i for ids in self.token_ids.values() for i in ids})
        self.col = {t: j for j, t in enumerate(self.all_ids)}
        self.points: dict[str, dict[str, Any]] = {}
        self.points_file: Path | None = None
        self.bias_prompts = list(bias_prompts or [])

    def score(self) -> dict[str, Any]:
        """Probabilities and LMS of the model as it is now."""
        lm = self.mwg.lm
        probs = metrics.next_token_logprobs(lm, self.prompts, self.all_ids, batch_size=self.batch_size).exp()
        lm_sc = metrics.lm_scores(lm, self.neutral)
        out: dict[str, Any] = {"lms": lm_sc["lms"], "perplexity": lm_sc["perplexity"], "metrics": {}, "probs": {}}
        for c in self.classes:
            p_c = probs[:, [self.col[t] for t in self.token_ids[c]]].sum(-1).numpy()
            other = [o for o in self.classes if o != c][0]
            on_other = float(p_c[self.row_class == other].mean())
            on_own = float(p_c[self.row_class == c].mean())
            out["probs"][f"P({c}|{other} rows)"] = on_other
            out["probs"][f"P({c}|{c} rows)"] = on_own
            out["metrics"][result_key(c, True)] = on_other
            out["metrics"][result_key(c, False)] = 1.0 - on_own
        if self.bias_prompts:
            a, b = self.classes
            out["bias"] = bias_scores(lm, self.bias_prompts, self.token_ids[a], self.token_ids[b], self.batch_size)
            out["metrics"][DEBIAS_KEY] = -out["bias"]["mean_abs_log_ratio"]
        return out

    def score_at(self, feature_factor: float, learning_rate: float) -> dict[str, Any]:
        key = f"{float(feature_factor)!r}|{float(learning_rate)!r}"
        if key in self.points:
            return dict(self.points[key])
        with self.mwg.applied(learning_rate, feature_factor):
            point = self.score()
        logger.info("decoder point ff=%+g lr=%.3g: LMS %.4f, perplexity %.2f, %s", feature_factor, learning_rate,
                    point["lms"], point["perplexity"], {k: round(v, 4) for k, v in point["metrics"].items()})
        point = {"feature_factor": float(feature_factor), "learning_rate": float(learning_rate), **point}
        self.points[key] = point
        self._save_points()
        return dict(point)

    def base_point(self) -> dict[str, Any]:
        if "base" not in self.points:
            self.points["base"] = {"feature_factor": 0.0, "learning_rate": 0.0, **self.score()}
            self._save_points()
        return dict(self.points["base"])

    def use_point_cache(self, path: Path | None) -> None:
        """Reuse scored points from ``path`` (same model, feature model, rows and neutral text) and add
        new ones to it: strengthening and weakening sweeps share every grid point."""
        self.points_file = path
        if path is not None and path.is_file():
            self.points = json.loads(path.read_text())
            logger.info("reusing %d scored decoder points from %s", len(self.points), path)

    def _save_points(self) -> None:
        if self.points_file is not None:
            write_json_atomic(self.points_file, self.points)


def lr_scale(mwg: ModelWithGradiend) -> float:
    """||θ_mapped|| / ||decoder(1)||: the learning rate at which the update is as large as the weights."""
    fm = mwg.feature_model
    named = dict(mwg.lm.model.named_parameters())
    with torch.no_grad():
        w = mwg.param_map.gather({n: named[n] for n in mwg.param_map.names}).double().norm()
        d = fm.decode(1.0).double().norm()
    return float(w / d) if d > 0 else 1.0


def fingerprint(mwg: ModelWithGradiend, data: PairDataset, neutral: Sequence[str], grid: dict[str, Any]) -> str:
    """Hash of everything that determines a sweep's numbers."""
    fm = mwg.feature_model
    h = hashlib.sha256()
    h.update(json.dumps({"grid": grid, "model": mwg.lm.name, "version": __version__, "data": data.fingerprint(),
                         "fm": {k: v for k, v in fm.to_config().items() if k != "metadata"}}, sort_keys=True,
                        default=str).encode())
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
                     bias_prompts: Sequence[str] | None = None) -> DecoderResults:
    """Sweep the grid, select per requested class and direction, refine by bisection on the lr.

    ``split`` names the data split ``data`` comes from; it is recorded with every selection (the
    selected value is measured on these rows, so report held-out figures on another split).
    With ``cache_dir``, results are stored under a fingerprint of every input (data hash, neutral
    text, grid, feature-model weights, model id, library version) and reused only on an exact match.
    ``max_rows_per_class`` caps the prompts scored per class (a seeded sample; ``None`` = all rows).
    ``bias_prompts`` also scores every point's bias on these neutral prompts (grid metric ``"debias"``;
    pass the same list to :func:`evaluate_debias` and it reuses the points).
    """
    targets = _targets(target_class, classes)
    keys = [result_key(c, increase_target_probabilities) for c in targets]
    select = resolve_selector(selector)
    ffs = [float(f) for f in (feature_factors or DEFAULT_FEATURE_FACTORS)]
    scale = lr_scale(mwg)
    lrs = sorted(float(x) for x in (learning_rates or [scale * r for r in DEFAULT_RELATIVE_LRS]))
    if any(lr <= 0 for lr in lrs):
        raise ValueError("learning_rates must be positive (the sign of the edit is the feature factor's)")
    sel_name = getattr(select, "__name__", repr(select))
    grid_key = {"ffs": ffs, "lrs": lrs, "targets": targets, "increase": increase_target_probabilities,
                "selector": sel_name, "refine": refine_steps, "classes": list(classes),
                "max_rows_per_class": max_rows_per_class, "rule": "admissible"}
    fp = fingerprint(mwg, data, neutral, {**grid_key, "bias_prompts": list(bias_prompts or [])})
    cached = cache_dir / f"decoder_{fp}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        logger.info("decoder results loaded from cache %s", cached)
        return DecoderResults.load(cached)
    probe = make_probe(mwg, data, classes, neutral, batch_size, max_rows_per_class, cache_dir, bias_prompts)
    base = probe.base_point()
    grid = [probe.score_at(ff, lr) for ff, lr in progress([(f, r) for f in ffs for r in lrs], desc="decoder grid")]
    for key in keys:
        grid += _refine(probe, grid, key, base, select, refine_steps)
    selections = {key: select_point(select, grid, key, cls, base, increase_target_probabilities, split)
                  for key, cls in zip(keys, targets)}
    constraint = constraint_of(select)
    info = {"lr_scale": scale, "selector": sel_name, "neutral_texts": len(neutral), "rows": len(probe.prompts),
            "split": split, "class_tokens": probe.tokens, "constraint": asdict(constraint) if constraint is not None
            else {"measure": None, "factor": None, "upper": None, "label": f"selector {sel_name} (no stated bound)"}}
    results = DecoderResults(selections, grid, base, fp, info)
    if cached is not None:
        results.save(cached)
    return results


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
