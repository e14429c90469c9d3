"""The German-removal study's edit methods, each producing a unit-strength :class:`WeightEdit`.

(a) ``gradiend``: the GRADIEND ``language`` feature (German word vs its translation) trained on the
    model, rewritten towards "not German" (``ModelWithGradiend.as_edit``);
(b) ``component-sel{N|all}``: one (or a few) rank-1 SVD components of the MLP gate/up projections,
    chosen by activation selectivity on the first N German tokens of the selection text (or all of
    it), with a scalar fitted on ``fit_tokens`` German tokens (:func:`gradedit.edits.components.scalar.tune_scalar`);
(c) ``decomposed-sel{N|all}-k{k}``: the same with the ``k`` most German-selective *alive* components of
    a parameter decomposition (:func:`gradedit.edits.components.decomposed.decomposed_components`):
    one selection on N German tokens, then one scalar fit per ``k`` from the same ``fit_tokens``;
    each ``k`` is its own row;
(d) ``lora-r{1,4}-{n}tok``: rank-1 / rank-4 LoRA on the MLP projections trained on ``n`` German tokens
    with a KL penalty on other-language text (:func:`gradedit.edits.lora.train_lora`).

Every German token a method reads is counted by purpose (``selection``, ``fit``, ``calibration``) in
the edit's ``metadata["target_tokens_used"]`` and, independently, by a hook on the input embedding
(:class:`~gradedit.demo.strength.TokenReads`) while the method is built and calibrated.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..data import corpora
from ..edits import WeightEdit
from ..models import LanguageModel
from .german_config import LANGS, GermanDemoConfig, Texts, budget_name
from .strength import StrengthMatch, TokenReads

if TYPE_CHECKING:
    from ..decompose import Decomposition

logger = logging.getLogger(__name__)


@dataclass
class Method:
    """One edit method's result: the unit-strength edit, what data it consumed, and its matched strength.

    ``reads`` measures the German text the model read while building and calibrating this method."""

    name: str
    edit: WeightEdit
    data: dict[str, Any]
    seconds: float
    match: StrengthMatch | None = None
    reads: TokenReads | None = field(default=None, repr=False)

    def at(self, alpha: float) -> WeightEdit:
        return self.edit * alpha


def _recording(reads: TokenReads | None, purpose: str) -> contextlib.AbstractContextManager[None]:
    return reads.record(purpose) if reads is not None else contextlib.nullcontext()


def _scalar_options(cfg: GermanDemoConfig) -> dict[str, Any]:
    """``tune_scalar`` options shared by the SVD and decomposed component methods."""
    # s ≤ 1: removal flips or shrinks a component; a 16-token fit otherwise tends to amplify it (s > 1)
    return {"max_target_tokens": cfg.fit_tokens, "remove": True, "max_leak": cfg.component_max_leak,
            "s_range": (-8.0, 1.0), "max_other_tokens": cfg.component_other_tokens, "steps": cfg.component_steps,
            "lr": 0.3}


def component_method(lm: LanguageModel, cfg: GermanDemoConfig, texts: Texts,
                     selection_tokens: int | None = None, reads: TokenReads | None = None) -> Method:
    """(b) scalar(s) on the SVD components most German-selective on the first ``selection_tokens``
    German tokens (None: all selection text), fitted on ``fit_tokens`` German tokens."""
    from ..edits.components.scalar import tune_scalar

    t0 = time.perf_counter()
    others = dict(texts.fit)
    reads = reads.fresh() if reads is not None else None
    with _recording(reads, "build"):
        edit = tune_scalar(lm, texts.selection["de"], other_texts=others, components="auto",
                           n_components=cfg.n_components, selection_texts=texts.selection["de"],
                           selection_score=cfg.component_score, selection_tokens=selection_tokens,
                           **_scalar_options(cfg))
    meta = edit.metadata
    sel = meta["selection"]
    data = {"selection_tokens_budget": selection_tokens, "selection_german_sentences": sel["n_texts"],
            "fit_german_tokens": meta["n_target_tokens"],
            "selection_other_tokens": sel["other_tokens"],
            "kl_other_sentences": sum(len(v) for v in others.values()),
            "components": meta.get("components"), "scales": meta.get("s")}
    return Method(f"component-sel{budget_name(selection_tokens)}", edit, data, time.perf_counter() - t0, reads=reads)


def load_decomposition(cfg: GermanDemoConfig) -> Decomposition | None:
    """The decomposition of ``cfg.decomposition`` (not yet checked against a model), or None when the
    config gives none or builds no ``decomposed-sel*`` method."""
    if cfg.decomposition is None or not cfg.plan().decomposed:
        return None
    from ..decompose import Decomposition

    return Decomposition.load(cfg.decomposition)


def decomposed_methods(lm: LanguageModel, cfg: GermanDemoConfig, texts: Texts, dec: Decomposition,
                       selection_tokens: int | None, ks: tuple[int, ...],
                       reads: TokenReads | None = None) -> tuple[list[Method], dict[str, str]]:
    """(c) scalars on the ``k`` (each of ``ks``) alive decomposed components most German-selective on the
    first ``selection_tokens`` German selection tokens (None: all), each fitted on ``fit_tokens`` German tokens.

    One selection serves every ``k``; each row counts it as its own ``selection`` tokens. Returns the
    rows and, per row that could not be built (fewer alive components than ``k``), the reason.

    Raises:
        DecompositionError: ``dec`` is of another model (other module names or weights).
    """
    from ..edits.components.activations import selectivity
    from ..edits.components.decomposed import decomposed_components
    from ..edits.components.scalar import tune_scalar
    from ..edits.fitting import Positions, TokenLedger

    dec.check(lm)
    family = f"decomposed-sel{budget_name(selection_tokens)}"
    t0 = time.perf_counter()
    others = dict(texts.fit)
    german = texts.selection["de"]
    pool = decomposed_components(dec)
    sel_reads = reads.fresh() if reads is not None else None
    with _recording(sel_reads, "selection"):
        sel = selectivity(lm, pool, german, others, score=cfg.component_score, max_target_tokens=selection_tokens)
    t_sel = time.perf_counter() - t0
    selection = {"source": "decomposition", "max_tokens": selection_tokens, "n_tokens": sel.n_tokens["target"],
                 "n_texts": sum(n > 0 for n in sel.target_counts),
                 "other_tokens": {k: v for k, v in sel.n_tokens.items() if k != "target"},
                 "pool": len(pool), "score": cfg.component_score, "ranking": sel.rows(max(5, max(ks)))}
    fit_pos = Positions.from_texts(lm, german, cfg.fit_tokens)  # what tune_scalar reads: the same first tokens
    rows, skipped = [], {}
    for k in ks:
        name = f"{family}-k{k}"
        if k > len(pool):
            skipped[name] = (f"the decomposition has {len(pool)} alive component(s) in "
                             f"{len(dec.modules)} module(s), fewer than k={k}")
            continue
        t1 = time.perf_counter()
        r = sel_reads.fresh() if sel_reads is not None else None
        if r is not None and sel_reads is not None:
            r.rows["selection"] = set(sel_reads.rows.get("selection", set()))
        with _recording(r, "fit"):
            edit = tune_scalar(lm, german, other_texts=others, components=sel.top(k), **_scalar_options(cfg))
        ledger = TokenLedger()
        for text, n in zip(german, sel.target_counts):
            ledger.add("selection", text, n)
        ledger.add_positions(lm, "fit", german, fit_pos)
        meta = edit.metadata
        if meta["n_target_tokens"] != fit_pos.n:  # tune_scalar reads the first fit_tokens; so must the ledger
            raise RuntimeError(f"{name}: the fit read {meta['n_target_tokens']} German tokens, expected {fit_pos.n}")
        meta.update(target_tokens_used=ledger.counts(), selection=selection, components_from="decomposition",
                    decomposition=str(cfg.decomposition), decomposition_objective=dec.objective)
        data = {"selection_tokens_budget": selection_tokens, "selection_german_sentences": selection["n_texts"],
                "fit_german_tokens": meta["n_target_tokens"], "selection_other_tokens": selection["other_tokens"],
                "kl_other_sentences": sum(len(v) for v in others.values()), "k": k,
                "alive_components": len(pool), "decomposition": str(cfg.decomposition),
                "decomposition_objective": dec.objective, "decomposed_modules": dec.modules,
                "components": meta.get("components"), "scales": meta.get("s"), "fit_status": meta.get("status"),
                "seconds_selection_shared": round(t_sel, 1)}
        rows.append(Method(name, edit, data, t_sel + time.perf_counter() - t1, reads=r))
    for name, why in skipped.items():
        logger.warning("%s not built: %s", name, why)
    return rows, skipped


def lora_methods(lm: LanguageModel, cfg: GermanDemoConfig, texts: Texts, pairs: list[tuple[int, int]] | None = None,
                 reads: TokenReads | None = None) -> list[Method]:
    """(d) LoRA baselines: each (rank, German training tokens) of ``pairs`` (default: every rank × count)."""
    from ..edits.lora.train import LoraConfig, train_lora

    other = [s for v in texts.fit.values() for s in v]
    out = []
    for rank, n in pairs if pairs is not None else [(r, n) for r in cfg.lora_ranks for n in cfg.lora_tokens]:
        t0 = time.perf_counter()
        conf = LoraConfig(rank=rank, steps=cfg.lora_steps, kl_weight=cfg.lora_kl_weight, max_target_tokens=n,
                          seed=cfg.seed, batch_size=2, lr=cfg.lora_lr_for(rank), kl_topk=256)
        r = reads.fresh() if reads is not None else None
        with _recording(r, "build"):
            res = train_lora(lm, texts.selection["de"], conf, remove=True, other_texts=other)
        data = {"fit_german_tokens": res.n_target_tokens, "kl_other_sentences": len(other),
                "steps": cfg.lora_steps, "final_loss": res.history[-1]["loss"] if res.history else None}
        out.append(Method(f"lora-r{rank}-{n}tok", res.edit, data, time.perf_counter() - t0, reads=r))
    return out


def gradiend_method(lm: LanguageModel, cfg: GermanDemoConfig, texts: Texts,
                    reads: TokenReads | None = None) -> Method:
    """(a) GRADIEND on the ``language`` feature (German vs other languages' translation-equivalent words),
    trained only on sentences outside the calibration and evaluation sets."""
    from ..data import features
    from ..gradiend.evaluate.decoder import lr_scale
    from ..gradiend.train import TrainConfig, Trainer

    t0 = time.perf_counter()
    held = set(texts.calibration) | {s for v in texts.evaluation.values() for s in v}
    train_text = {lang: [s for s in corpora.sentences(lang) if s not in held] for lang in LANGS}
    data = features.build("language", lm, sentences=train_text, seed=cfg.seed, max_size_per_class=800)
    config = TrainConfig(experiment_dir=str(Path(cfg.out_dir) / "gradiend"), source="diff", target="diff",
                         max_steps=cfg.gradiend_steps, eval_steps=max(cfg.gradiend_steps // 2, 1),
                         pre_prune_topk=0.01, pre_prune_samples=16, eval_max_size=32, seed=cfg.seed)
    trainer = Trainer(lm, data, ["de", "other"], config=config)
    reads = reads.fresh() if reads is not None else None
    with _recording(reads, "fit"):
        trainer.train()
    mwg = trainer.get_model()
    # the sign that makes German LESS likely: decoder(ff) with ff towards "other" (class B, encoded −1)
    scale = lr_scale(mwg)
    cal = texts.calibration[:8]
    with _recording(reads, "selection"):  # the sign, on calibration text
        base = metrics.cross_entropy(lm, cal)
        sign = max((-1.0, 1.0), key=lambda ff: ce_with(lm, mwg.as_edit(0.1 * scale, ff), cal) - base)
    edit = mwg.as_edit(scale, sign)
    info = {"train_rows": len(data.split("train")), "feature": "language (de vs other)",
            "feature_factor": sign, "lr_unit": scale, "steps": cfg.gradiend_steps,
            "correlation": trainer.seed_results[0].correlation if trainer.seed_results else None}
    return Method("gradiend", edit, info, time.perf_counter() - t0, reads=reads)


def ce_with(lm: LanguageModel, edit: WeightEdit, texts: list[str]) -> float:
    """Mean CE of ``texts`` with ``edit`` applied (the model is restored after)."""
    with edit.applied(lm.model):
        return metrics.cross_entropy(lm, texts)


def account_tokens(m: Method) -> dict[str, int]:
    """German tokens ``m`` read, by purpose and in total (distinct), into ``m.data`` and the edit's metadata.

    From the edit's own ``target_tokens_used`` plus the calibration text (disjoint from the selection
    and fit text); for an edit without that bookkeeping (GRADIEND) from the hook. The hook's own
    numbers go to ``m.data["german_tokens_hook"]`` as a cross-check."""
    hook = m.reads.counts() if m.reads is not None else {}
    own = dict(m.edit.metadata.get("target_tokens_used") or {})
    calibration = m.match.n_tokens if m.match is not None else 0
    if own:
        used = {k: v for k, v in own.items() if k != "total"}
        used.update(calibration=calibration, total=own["total"] + calibration)
    else:
        used = {k: v for k, v in hook.items() if k not in ("total", "calibration")}
        used.update(calibration=calibration, total=hook.get("total", calibration))
    m.data["german_tokens"] = used
    if hook:
        m.data["german_tokens_hook"] = hook
    m.edit.metadata["target_tokens_used"] = used
    return used
