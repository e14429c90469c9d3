"""``gradedit demo german``: remove German from a multilingual model, keep French, Spanish, Italian, English.

Methods, each producing a :class:`~gradedit.edits.WeightEdit` (built in :mod:`.german_methods`):

(a) ``gradiend``: the GRADIEND ``language`` feature, rewritten towards "not German";
(b) ``component-sel{N|all}``: a scalar on the SVD components of the MLP gate/up projections most
    German-selective on the first N German selection tokens (or all), fitted on ``fit_tokens`` tokens;
(c) ``decomposed-sel{N|all}-k{1,2,3}``: the same with the k most German-selective alive components of
    a parameter decomposition (``decomposition``: a ``gradedit decompose`` folder; without one these
    rows are reported as not run), one row per k;
(d) ``lora-r{1,4}-{n}tok``: rank-1 / rank-4 LoRA trained on ``n`` German tokens with a KL penalty.

``methods`` (``--methods``) builds a subset (names in :mod:`.german_config`).

Text discipline (Bible sentences, per language): the first ``selection_texts`` sentences choose
components and feed the fits; the next ``calibration_texts`` German sentences set each method's
strength to the same German CE increase (``target_de_ce``, ``--target-ce``); the LAST ``eval_texts``
sentences of every language are the evaluation, used for nothing else. Each method is judged
against the goal ``goal_de_ce`` / ``goal_max_other`` (held-out German CE up by ≥ 2 nats, every
other language within ±0.1) in the report and the headline.

German tokens are accounted for by purpose (``selection``, ``fit``, ``calibration``) and in total:
from each edit's ``metadata["target_tokens_used"]`` plus the calibration text, and, independently,
from a hook on the input embedding while each method is built and calibrated (``german_tokens_hook``;
GRADIEND has no own bookkeeping, so its numbers come from the hook).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import metrics
from .._files import write_json_atomic, write_text_atomic
from ..data import corpora
from ..edits import WeightEdit
from ..models import LanguageModel, load_model
from .common import DemoResult, stage
from .german_config import LANGS, GermanDemoConfig, MethodPlan, Texts
from .german_methods import (
    Method,
    account_tokens,
    ce_with,
    component_method,
    decomposed_methods,
    gradiend_method,
    load_decomposition,
    lora_methods,
)
from .strength import TokenReads, match_strength

logger = logging.getLogger(__name__)

__all__ = ["LANGS", "GermanDemoConfig", "Method", "MethodPlan", "Texts", "account_tokens", "component_method",
           "decomposed_methods", "gradiend_method", "headline", "lora_methods", "run", "with_matched_point"]

NO_DECOMPOSITION = ("no decomposition given: set GermanDemoConfig.decomposition or pass --decomposition DIR "
                    "(a folder written by `gradedit decompose`, e.g. --preset gemma3-270m)")


def with_matched_point(frame: Any, report: Any, method: str) -> Any:
    """The sweep plus the matched-strength point (value 1.0) already measured by ``blast_radius``."""
    import pandas as pd

    others = {k: v for k, v in report.ce_delta.items() if k != "de"}
    row = {"value": 1.0, "method": method, "on_target": report.ce_delta["de"],
           "off_target": max(abs(v) for v in others.values()), "off_target_kl": report.global_kl,
           **{f"ce_delta_{k}": v for k, v in report.ce_delta.items()}, **{f"kl_{k}": v for k, v in report.kl.items()}}
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True).sort_values("value", ignore_index=True)


def build_methods(lm: LanguageModel, cfg: GermanDemoConfig, texts: Texts, plan: MethodPlan, reads: TokenReads,
                  timings: dict[str, float], dec: Any) -> tuple[list[Method], dict[str, str]]:
    """Every method of ``plan`` at unit strength, and why each planned row that was not built was not."""
    methods: list[Method] = []
    not_run: dict[str, str] = {}
    if plan.decomposed:
        with stage("decomposed-component scalar", timings):
            for budget, ks in plan.decomposed:
                if dec is None:
                    not_run.update({n: NO_DECOMPOSITION for n in MethodPlan(decomposed=((budget, ks),)).names()})
                    continue
                rows, skipped = decomposed_methods(lm, cfg, texts, dec, budget, ks, reads)
                methods += rows
                not_run.update(skipped)
    if plan.component:
        with stage("component scalar", timings):
            for budget in plan.component:
                methods.append(component_method(lm, cfg, texts, budget, reads))
    if plan.lora:
        with stage("LoRA baselines", timings):
            methods += lora_methods(lm, cfg, texts, pairs=list(plan.lora), reads=reads)
    if plan.gradiend:
        with stage("GRADIEND language feature", timings):
            try:
                methods.append(gradiend_method(lm, cfg, texts, reads))
            except (ValueError, RuntimeError) as err:  # reported in the summary and the report, not hidden
                logger.error("GRADIEND method failed, the study goes on without it: %s", err)
                not_run["gradiend"] = f"failed: {err}"
    for name, why in not_run.items():
        logger.warning("%s not run: %s", name, why)
    return methods, not_run


def run(cfg: GermanDemoConfig | None = None, lm: LanguageModel | None = None) -> DemoResult:
    """Run the study; see the module docstring. Writes report.html, summary.json and the edits.

    ``lm``: an already loaded model (default: ``load_model(cfg.model)``); its weights end unchanged.

    Raises:
        DecompositionError: ``cfg.decomposition`` is no decomposition folder, or one of another model
            (checked before any method is built).
    """
    from ..blast import blast_radius, pareto_sweep
    from .german_report import goal_verdicts, method_notes, write_german_report

    cfg = cfg or GermanDemoConfig()
    plan = cfg.plan()
    dec = load_decomposition(cfg)  # a bad folder fails before the model loads
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    lm = lm if lm is not None else load_model(cfg.model)
    if dec is not None:
        dec.check(lm)  # another model's decomposition fails before any method is built
    texts = Texts.build(cfg)
    reads = TokenReads(lm, corpora.sentences("de"), exclude=[s for v in texts.fit.values() for s in v])
    methods, not_run = build_methods(lm, cfg, texts, plan, reads, timings, dec)
    if not methods:
        raise ValueError(f"no method was built ({'; '.join(f'{k}: {v}' for k, v in not_run.items())}); "
                         "give --decomposition or other --methods")
    base_cal = metrics.cross_entropy(lm, texts.calibration)
    with stage("strength matching", timings):
        target = cfg.target_de_ce
        if target is None:  # the component's own effect on the calibration text
            comp = next((m for m in methods if m.name == "component-selall"), methods[0])
            target = max(ce_with(lm, comp.edit, texts.calibration) - base_cal, 0.05)
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
                                     frames=frames, texts=texts, failed=not_run)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    summary = {"config": asdict(cfg), "model": lm.name, "target_de_ce_calibration": target, "timings_s": timings,
               "failed_methods": {k: v for k, v in not_run.items() if v.startswith("failed")},
               "not_run_methods": not_run,
               "goal": {"german_ce_at_least": cfg.goal_de_ce, "other_within": cfg.goal_max_other,
                        "methods": goal_verdicts(reports, cfg), "notes": method_notes(methods)},
               "methods": {m.name: {"data": m.data, "seconds": round(m.seconds, 1),
                                    "alpha": m.match.alpha if m.match else None,
                                    "calibration_delta": m.match.delta if m.match else None,
                                    "blast": reports[m.name].to_dict(tokens=False)} for m in methods}}
    write_json_atomic(out / "summary.json", summary)
    return DemoResult(out_dir=out, report=report, summary=summary,
                      headline=headline(reports, timings["total"], cfg=cfg, not_run=not_run,
                                        notes=method_notes(methods)))


def headline(reports: dict[str, Any], seconds: float, cfg: GermanDemoConfig | None = None,
             not_run: dict[str, str] | None = None, notes: dict[str, str] | None = None) -> list[str]:
    """One line per method (decomposed, SVD, LoRA, GRADIEND): held-out German CE change and the worst
    other-language change (nats); with ``cfg``, whether each met the goal, in words (with ``notes``,
    e.g. an unmatched strength); the methods not run and why."""
    from .german_report import goal_sentences

    lines = []
    for name, rep in reports.items():
        others = {k: v for k, v in rep.ce_delta.items() if k != "de"}
        worst = max(others, key=lambda k: abs(others[k]))
        lines.append(f"{name:>20}: German CE {rep.ce_delta['de']:+.3f} nats; worst other {worst} "
                     f"{others[worst]:+.3f} (control: German {rep.control_ce_delta['de']:+.3f})")
    if cfg is not None:
        lines += goal_sentences(reports, cfg, notes)
    lines += [f"{name} not run: {why}" for name, why in (not_run or {}).items()]
    lines.append(f"total time {seconds / 60:.1f} min")
    return lines
