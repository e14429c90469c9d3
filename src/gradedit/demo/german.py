"""``gradedit demo german``: remove German from a multilingual model, keep French, Spanish, Italian, English.

Methods, each producing a :class:`~gradedit.edits.WeightEdit`:

(a) ``gradiend``: the GRADIEND ``language`` feature (German word vs its translation) trained on the
    model, rewritten towards "not German" (``ModelWithGradiend.as_edit``);
(b) ``component-sel{N|all}``: one (or a few) rank-1 SVD components of the MLP gate/up projections,
    chosen by activation selectivity on the first N German tokens of the selection text (or all of
    it), with a scalar fitted on ``fit_tokens`` German tokens (:func:`gradedit.edits.components.scalar.tune_scalar`);
(d) ``lora-r{1,4}-{n}tok``: rank-1 / rank-4 LoRA on the MLP projections trained on ``n`` German tokens
    with a KL penalty on other-language text (:func:`gradedit.edits.lora.train_lora`).

(c) decomposed components are not part of the study until a decomposition exists.

Text discipline (Bible sentences, per language): the first ``selection_texts`` sentences choose
components and feed the fits; the next ``calibration_texts`` German sentences set each method's
strength to the same German CE increase; the LAST ``eval_texts`` sentences of every language are
the evaluation, used for nothing else.

German tokens are accounted for by purpose (``selection``, ``fit``, ``calibration``) and in total:
from each edit's ``metadata["target_tokens_used"]`` plus the calibration text, and, independently,
from a hook on the input embedding while each method is built and calibrated (``german_tokens_hook``;
GRADIEND has no own bookkeeping, so its numbers come from the hook).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import metrics
from .._files import write_json_atomic, write_text_atomic
from ..data import corpora
from ..edits import WeightEdit
from ..models import LanguageModel, load_model
from .common import DemoResult, stage
from .strength import StrengthMatch, TokenReads, match_strength

logger = logging.getLogger(__name__)

LANGS = ("de", "fr", "es", "it", "en")


@dataclass
class GermanDemoConfig:
    """Sizes of the German-removal study (defaults: about 30–40 minutes on 2 CPU cores)."""

    model: str = "gemma3-270m"
    out_dir: str = "runs/demo-german"
    eval_texts: int = 32
    calibration_texts: int = 24
    selection_texts: int = 64
    fit_tokens: int = 16
    n_components: int = 2
    component_steps: int = 16
    component_other_tokens: int = 256
    component_selection_tokens: tuple[int | None, ...] = (16, 64, 256, None)
    component_max_leak: float | None = 0.1
    component_score: str = "impact"
    lora_ranks: tuple[int, ...] = (1, 4)
    lora_tokens: tuple[int, ...] = (16, 256)
    lora_steps: int = 24
    lora_lr: tuple[float, ...] = (2e-3, 1e-3)
    lora_kl_weight: float = 1.0
    gradiend: bool = True
    gradiend_steps: int = 40
    target_de_ce: float | None = 1.0
    pareto_alphas: tuple[float, ...] = (1.5,)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fit_tokens < 1 or self.eval_texts < 1 or self.calibration_texts < 1:
            raise ValueError("fit_tokens, eval_texts and calibration_texts must be positive")
        if not self.component_selection_tokens or any(
                n is not None and (not isinstance(n, int) or n < 1) for n in self.component_selection_tokens):
            raise ValueError("component_selection_tokens must list positive ints or None (all selection text), "
                             f"got {self.component_selection_tokens!r}")


@dataclass
class Texts:
    """The disjoint text sets of the study, per language."""

    selection: dict[str, list[str]]
    calibration: list[str]
    evaluation: dict[str, list[str]]
    fit: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: GermanDemoConfig) -> Texts:
        sel, ev = {}, {}
        calib: list[str] = []
        for lang in LANGS:
            sents = corpora.sentences(lang)
            need = cfg.selection_texts + cfg.calibration_texts + cfg.eval_texts
            if len(sents) < need:
                raise ValueError(f"only {len(sents)} {lang} sentences, the study needs {need}")
            sel[lang] = sents[:cfg.selection_texts]
            ev[lang] = sents[-cfg.eval_texts:]
            if lang == "de":
                calib = sents[cfg.selection_texts:cfg.selection_texts + cfg.calibration_texts]
        return cls(selection=sel, calibration=calib, evaluation=ev,
                   fit={lang: s[: max(8, cfg.selection_texts // 4)] for lang, s in sel.items() if lang != "de"})


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


def component_method(lm: LanguageModel, cfg: GermanDemoConfig, texts: Texts,
                     selection_tokens: int | None = None, reads: TokenReads | None = None) -> Method:
    """(b) scalar(s) on the SVD components most German-selective on the first ``selection_tokens``
    German tokens (None: all selection text), fitted on ``fit_tokens`` German tokens."""
    from ..edits.components.scalar import tune_scalar

    t0 = time.perf_counter()
    others = {k: v for k, v in texts.fit.items()}
    reads = reads.fresh() if reads is not None else None
    with reads.record("build") if reads is not None else contextlib.nullcontext():
        # s ≤ 1: removal flips or shrinks a component; a 16-token fit otherwise tends to amplify it (s > 1)
        edit = tune_scalar(lm, texts.selection["de"], other_texts=others, components="auto",
                           max_target_tokens=cfg.fit_tokens, remove=True, n_components=cfg.n_components,
                           selection_texts=texts.selection["de"], max_leak=cfg.component_max_leak,
                           s_range=(-8.0, 1.0), selection_score=cfg.component_score,
                           max_other_tokens=cfg.component_other_tokens, steps=cfg.component_steps, lr=0.3,
                           selection_tokens=selection_tokens)
    meta = edit.metadata
    sel = meta["selection"]
    data = {"selection_tokens_budget": selection_tokens, "selection_german_sentences": sel["n_texts"],
            "fit_german_tokens": meta["n_target_tokens"],
            "selection_other_tokens": sel["other_tokens"],
            "kl_other_sentences": sum(len(v) for v in others.values()),
            "components": meta.get("components"), "scales": meta.get("s")}
    name = f"component-sel{'all' if selection_tokens is None else selection_tokens}"
    return Method(name, edit, data, time.perf_counter() - t0, reads=reads)


def lora_methods(lm: LanguageModel, cfg: GermanDemoConfig, texts: Texts,
                 reads: TokenReads | None = None) -> list[Method]:
    """(d) LoRA baselines: each rank × number of German training tokens."""
    from ..edits.lora.train import LoraConfig, train_lora

    other = [s for v in texts.fit.values() for s in v]
    out = []
    for i, rank in enumerate(cfg.lora_ranks):
        for n in cfg.lora_tokens:
            t0 = time.perf_counter()
            lr = cfg.lora_lr[min(i, len(cfg.lora_lr) - 1)]
            conf = LoraConfig(rank=rank, steps=cfg.lora_steps, kl_weight=cfg.lora_kl_weight, max_target_tokens=n,
                              seed=cfg.seed, batch_size=2, lr=lr, kl_topk=256)
            r = reads.fresh() if reads is not None else None
            with r.record("build") if r is not None else contextlib.nullcontext():
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
    with reads.record("fit") if reads is not None else contextlib.nullcontext():
        trainer.train()
    mwg = trainer.get_model()
    # the sign that makes German LESS likely: decoder(ff) with ff towards "other" (class B, encoded −1)
    scale = lr_scale(mwg)
    cal = texts.calibration[:8]
    with reads.record("selection") if reads is not None else contextlib.nullcontext():  # the sign, on calibration text
        base = metrics.cross_entropy(lm, cal)
        sign = max((-1.0, 1.0), key=lambda ff: _ce_with(lm, mwg.as_edit(0.1 * scale, ff), cal) - base)
    edit = mwg.as_edit(scale, sign)
    info = {"train_rows": len(data.split("train")), "feature": "language (de vs other)",
            "feature_factor": sign, "lr_unit": scale, "steps": cfg.gradiend_steps,
            "correlation": trainer.seed_results[0].correlation if trainer.seed_results else None}
    return Method("gradiend", edit, info, time.perf_counter() - t0, reads=reads)


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


def with_matched_point(frame: Any, report: Any, method: str) -> Any:
    """The sweep plus the matched-strength point (value 1.0) already measured by ``blast_radius``."""
    import pandas as pd

    others = {k: v for k, v in report.ce_delta.items() if k != "de"}
    row = {"value": 1.0, "method": method, "on_target": report.ce_delta["de"],
           "off_target": max(abs(v) for v in others.values()), "off_target_kl": report.global_kl,
           **{f"ce_delta_{k}": v for k, v in report.ce_delta.items()}, **{f"kl_{k}": v for k, v in report.kl.items()}}
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True).sort_values("value", ignore_index=True)


def _ce_with(lm: LanguageModel, edit: WeightEdit, texts: list[str]) -> float:
    with edit.applied(lm.model):
        return metrics.cross_entropy(lm, texts)


def run(cfg: GermanDemoConfig | None = None, lm: LanguageModel | None = None) -> DemoResult:
    """Run the study; see the module docstring. Writes report.html, summary.json and the edits.

    ``lm``: an already loaded model (default: ``load_model(cfg.model)``); its weights end unchanged."""
    from ..blast import blast_radius, pareto_sweep
    from .german_report import write_german_report

    cfg = cfg or GermanDemoConfig()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    lm = lm if lm is not None else load_model(cfg.model)
    texts = Texts.build(cfg)
    reads = TokenReads(lm, corpora.sentences("de"), exclude=[s for v in texts.fit.values() for s in v])
    methods: list[Method] = []
    with stage("component scalar", timings):
        for budget in cfg.component_selection_tokens:
            methods.append(component_method(lm, cfg, texts, budget, reads))
    with stage("LoRA baselines", timings):
        methods += lora_methods(lm, cfg, texts, reads)
    failed: dict[str, str] = {}
    if cfg.gradiend:
        with stage("GRADIEND language feature", timings):
            try:
                methods.append(gradiend_method(lm, cfg, texts, reads))
            except (ValueError, RuntimeError) as err:  # reported in the summary and the report, not hidden
                logger.error("GRADIEND method failed, the study goes on without it: %s", err)
                failed["gradiend"] = str(err)
    base_cal = metrics.cross_entropy(lm, texts.calibration)
    with stage("strength matching", timings):
        comp = next((m for m in methods if m.name == "component-selall"), methods[0])
        target = cfg.target_de_ce
        if target is None:  # the component's own effect on the calibration text
            target = max(_ce_with(lm, comp.edit, texts.calibration) - base_cal, 0.05)
        for m in methods:
            with m.reads.record("calibration") if m.reads is not None else contextlib.nullcontext():
                m.match = match_strength(lm, m.at, texts.calibration, target, base_ce=base_cal)
            account_tokens(m)
    reports: dict[str, Any] = {}
    frames = {}
    with stage("blast radius on held-out text", timings):
        for m in methods:
            assert m.match is not None
            edit = m.at(m.match.alpha)
            edit.save(out / "edits" / m.name)
            reports[m.name] = blast_radius(lm, edit, texts.evaluation, target="de", control=True)
            reports[m.name].save(out / f"blast_{m.name}.json", tokens=False)
    with stage("Pareto sweeps", timings):
        for m in methods:
            assert m.match is not None
            alpha = m.match.alpha
            def scaled(a: float, m: Any = m, alpha: float = alpha) -> WeightEdit:
                return m.at(alpha * a)

            frame = pareto_sweep(lm, scaled, list(cfg.pareto_alphas), texts.evaluation, "de", method=m.name)
            frames[m.name] = with_matched_point(frame, reports[m.name], m.name)
            write_text_atomic(out / f"pareto_{m.name}.csv", frames[m.name].to_csv(index=False))
    with stage("report", timings):
        report = write_german_report(out / "report.html", lm=lm, cfg=cfg, methods=methods, reports=reports,
                                     frames=frames, texts=texts, failed=failed)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    summary = {"config": asdict(cfg), "model": lm.name, "target_de_ce_calibration": target, "timings_s": timings,
               "failed_methods": failed,
               "methods": {m.name: {"data": m.data, "seconds": round(m.seconds, 1),
                                    "alpha": m.match.alpha if m.match else None,
                                    "calibration_delta": m.match.delta if m.match else None,
                                    "blast": reports[m.name].to_dict(tokens=False)} for m in methods}}
    write_json_atomic(out / "summary.json", summary)
    return DemoResult(out_dir=out, report=report, headline=headline(reports, timings["total"]), summary=summary)


def headline(reports: dict[str, Any], seconds: float) -> list[str]:
    """One line per method: held-out German CE change and the worst other-language change (nats)."""
    lines = []
    for name, rep in reports.items():
        others = {k: v for k, v in rep.ce_delta.items() if k != "de"}
        worst = max(others, key=lambda k: abs(others[k]))
        lines.append(f"{name:>16}: German CE {rep.ce_delta['de']:+.3f} nats; worst other {worst} "
                     f"{others[worst]:+.3f} (control: German {rep.control_ce_delta['de']:+.3f})")
    lines.append(f"total time {seconds / 60:.1f} min")
    return lines

