"""Building the redirect study's edits, with the class-text tokens each one read.

Per component family: choose the component on the selection text, then calibrate its strength unit
``α₁`` on the same text (:func:`gradedit.demo.redirect_select.unit_alpha`). Then the points:
``analytic-<family>`` at ``k · α₁``, ``trained-<family>`` for every ``n × λ`` (Adam learning rate
``train_lr · α₁ / √d``, so the write vector can travel a few ``α₁`` in the given steps whatever the
component's scale), and ``lora`` for every ``n × λ``.

Token accounting per point (class text only; unrelated text is not target text): ``selection`` (the
selection passages, read to choose and orient the component), ``calibration`` (the same passages read
again for ``α₁``), ``fit`` (the example texts trained on) and the distinct ``total`` — once from the
methods' own bookkeeping (``tokens_used``) and once measured by a hook on the input embedding
(:class:`gradedit.demo.strength.TokenReads`, ``tokens_hook``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..edits import ComponentSet, WeightEdit
from ..errors import EditError
from ..models import LanguageModel
from .redirect_data import Example, StudyTexts, text_tokens
from .redirect_select import Choice, Unit, choose_component, redirect_write, unit_alpha
from .strength import TokenReads

if TYPE_CHECKING:
    from .redirect import RedirectConfig

logger = logging.getLogger(__name__)

__all__ = ["Family", "Point", "build_points", "prepare_families"]


@dataclass
class Point:
    """One edit of the study and what it cost (``measured`` is filled in by the held-out measurement).

    ``info`` holds method details (the absolute ``alpha`` and ``alpha / σ`` of an analytic point, the
    last training step of a trained one)."""

    family: str
    method: str
    params: dict[str, Any]
    edit: WeightEdit = field(repr=False)
    tokens_used: dict[str, int]
    fire_positions_used: dict[str, int]
    tokens_hook: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    component: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.family + " " + " ".join(f"{k}={v:g}" for k, v in self.params.items())

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "edit"}
        d["label"] = self.label
        d["edit_norm"] = self.edit.norm()
        return d


@dataclass
class Family:
    """A component family ready for edits: its chosen component, its strength unit, and the class-text
    rows read so far (selection and calibration)."""

    choice: Choice
    unit: Unit
    reads: TokenReads = field(repr=False)


def _clone(reads: TokenReads) -> TokenReads:
    new = reads.fresh()
    new.rows = {k: set(v) for k, v in reads.rows.items()}
    return new


def prepare_families(lm: LanguageModel, cfg: RedirectConfig, texts: StudyTexts, fams: dict[str, ComponentSet],
                     reads: TokenReads) -> tuple[dict[str, Family], dict[str, str]]:
    """Choose and calibrate per family; a family without a selective component goes to ``failed``."""
    tid = lm.token_id(cfg.target)
    sel_fires = texts.fires_of(texts.selection)
    sel_reads = reads.fresh()
    choices: dict[str, Choice] = {}
    failed: dict[str, str] = {}
    with sel_reads.record("selection"):  # every family reads the same selection text
        for fam, cs in fams.items():
            try:
                choices[fam] = choose_component(lm, cs, fam, texts.selection, sel_fires, texts.unrelated_selection,
                                                kind=cfg.score, min_score=cfg.min_score, batch_size=cfg.batch_size)
            except EditError as err:
                logger.warning("%s", err)
                failed[fam] = str(err)
    out = {}
    for fam, ch in choices.items():
        r = _clone(sel_reads)
        with r.record("calibration"):
            unit = unit_alpha(lm, ch, tid, texts.selection, sel_fires, gain=cfg.unit_gain, batch_size=cfg.batch_size)
        out[fam] = Family(ch, unit, r)
    return out, failed


def build_points(lm: LanguageModel, cfg: RedirectConfig, texts: StudyTexts, examples: list[Example],
                 families: dict[str, Family], reads: TokenReads, lora_modules: list[str]) -> list[Point]:
    """Every analytic, trained and LoRA edit of the study (see the module docstring)."""
    from .redirect_fit import fit_lora, fit_write_vector

    tid = lm.token_id(cfg.target)
    S = sum(text_tokens(lm, t) for t in texts.selection)
    n_sel = sum(len(f) for f in texts.fires_of(texts.selection))
    points: list[Point] = []
    for fam, f in families.items():
        c = f.choice.component
        for k in cfg.alphas:
            t0 = time.perf_counter()
            edit = redirect_write(lm, c, tid, k * f.unit.alpha, f.choice.sign)
            points.append(Point(f"analytic-{fam}", "analytic", {"alpha": k}, edit,
                                {"selection": S, "calibration": S, "fit": 0, "total": S},
                                {"selection": n_sel, "fit": 0}, f.reads.counts(), time.perf_counter() - t0, c.label,
                                {"alpha_abs": k * f.unit.alpha, "alpha_over_sigma": k * f.unit.alpha / c.sigma}))
    for fam, f in families.items():
        c = f.choice.component
        lr = cfg.train_lr * f.unit.alpha / math.sqrt(c.U.numel())
        for n in cfg.fit_sizes:
            for lam in cfg.kl_weights:
                t0, r = time.perf_counter(), _clone(f.reads)
                with r.record("fit"):
                    edit, hist = fit_write_vector(lm, c, examples[:n], texts.unrelated_fit, tid, kl_weight=lam,
                                                  steps=cfg.train_steps, lr=lr, max_kl_tokens=cfg.max_kl_tokens)
                fit = edit.metadata["target_tokens_used"]["fit"]
                points.append(Point(f"trained-{fam}", "trained", {"n": n, "lambda": lam}, edit,
                                    {"selection": S, "calibration": S, "fit": fit, "total": S + fit},
                                    {"selection": n_sel, "fit": n}, r.counts(), time.perf_counter() - t0, c.label,
                                    {"lr": lr, **hist[-1]}))
    if cfg.lora:
        for n in cfg.fit_sizes:
            for lam in cfg.kl_weights:
                t0, r = time.perf_counter(), reads.fresh()
                with r.record("fit"):
                    edit, hist = fit_lora(lm, examples[:n], texts.unrelated_fit, cfg.target, lora_modules,
                                          kl_weight=lam, rank=cfg.lora_rank, steps=cfg.lora_steps, lr=cfg.lora_lr,
                                          seed=cfg.seed)
                fit = edit.metadata["target_tokens_used"]["fit"]
                points.append(Point("lora", "lora", {"n": n, "lambda": lam, "rank": cfg.lora_rank}, edit,
                                    {"selection": 0, "calibration": 0, "fit": fit, "total": fit},
                                    {"selection": 0, "fit": n}, r.counts(), time.perf_counter() - t0, None,
                                    {"modules": list(lora_modules), **(hist[-1] if hist else {})}))
    return points
