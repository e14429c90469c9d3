"""The German-removal study's HTML report: matched-strength table, Pareto plot, heatmaps, data used."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ..models import LanguageModel
    from .german_config import GermanDemoConfig, Texts
    from .german_methods import Method

logger = logging.getLogger(__name__)

REFERENCE = "lora-r4-16tok"
"""The baseline the issue's goal names: decomposed components should beat LoRA r4 from 16 tokens."""


def goal_verdicts(reports: dict[str, Any], cfg: GermanDemoConfig) -> dict[str, dict[str, Any]]:
    """Per method, on held-out text: German CE change, the worst other language and its change, and
    whether German rose by at least ``cfg.goal_de_ce`` and every other language stayed within
    ``±cfg.goal_max_other`` (``met``: both), with the shortfalls in nats."""
    out = {}
    for name, rep in reports.items():
        de = float(rep.ce_delta["de"])
        others = {k: float(v) for k, v in rep.ce_delta.items() if k != "de"}
        worst = max(others, key=lambda k: abs(others[k]))
        german_ok, others_ok = de >= cfg.goal_de_ce, abs(others[worst]) <= cfg.goal_max_other
        out[name] = {"german": de, "worst_other_language": worst, "worst_other": others[worst],
                     "german_ok": german_ok, "others_ok": others_ok, "met": german_ok and others_ok,
                     "german_short_by": max(cfg.goal_de_ce - de, 0.0),
                     "other_over_by": max(abs(others[worst]) - cfg.goal_max_other, 0.0)}
    return out


def method_notes(methods: list[Method]) -> dict[str, str]:
    """Per method, what qualifies its numbers: a strength that did not reach the calibration target,
    a scalar fit that found nothing better than no edit."""
    notes = {}
    for m in methods:
        parts = []
        if m.match is not None and not m.match.reached:
            parts.append(f"strength not matched: calibration ΔCE {m.match.delta:+.3f} at best, target "
                         f"{m.match.target:+.3f}")
        if m.edit.metadata.get("status") == "no-op":
            parts.append(f"the scalar fit was a no-op ({m.edit.metadata.get('status_reason', 's = 1')})")
        if parts:
            notes[m.name] = "; ".join(parts)
    return notes


def goal_sentences(reports: dict[str, Any], cfg: GermanDemoConfig, notes: dict[str, str] | None = None) -> list[str]:
    """The goal and, per method, whether it met it, in words (with ``notes`` from :func:`method_notes`);
    each decomposed or SVD row against ``lora-r4-16tok`` when that ran."""
    verdicts = goal_verdicts(reports, cfg)
    notes = notes or {}
    lines = [f"goal: held-out German CE +{cfg.goal_de_ce:g} nats or more with every other language within "
             f"±{cfg.goal_max_other:g} nats"]
    for name, v in verdicts.items():
        de = (f"German {v['german']:+.3f}" + ("" if v["german_ok"] else f" ({v['german_short_by']:.3f} short)"))
        other = (f"worst other {v['worst_other_language']} {v['worst_other']:+.3f}"
                 + (f" (within ±{cfg.goal_max_other:g})" if v["others_ok"]
                    else f" ({v['other_over_by']:.3f} outside ±{cfg.goal_max_other:g})"))
        note = f" [{notes[name]}]" if name in notes else ""
        lines.append(f"{name}: goal {'MET' if v['met'] else 'not met'}: {de}, {other}{note}")
    ref = verdicts.get(REFERENCE)
    if ref is not None:
        for name, v in verdicts.items():
            if not name.startswith(("decomposed-", "component-")):
                continue
            leak, ref_leak = abs(v["worst_other"]), abs(ref["worst_other"])
            lines.append(f"{name} vs {REFERENCE} at the same calibration strength: German {v['german']:+.3f} vs "
                         f"{ref['german']:+.3f}, worst other |ΔCE| {leak:.3f} vs {ref_leak:.3f}: "
                         + ("beats it (at least as much German removed, less leakage)"
                            if v["german"] >= ref["german"] and leak < ref_leak else "does not beat it"))
    return lines


def goal_frame(reports: dict[str, Any], cfg: GermanDemoConfig) -> pd.DataFrame:
    """:func:`goal_verdicts` as a table, one row per method."""
    import pandas as pd

    rows = [{"method": name, "ΔCE de (held-out)": v["german"], f"≥ +{cfg.goal_de_ce:g}": v["german_ok"],
             "worst other": v["worst_other_language"], "its ΔCE": v["worst_other"],
             f"within ±{cfg.goal_max_other:g}": v["others_ok"], "goal met": v["met"]}
            for name, v in goal_verdicts(reports, cfg).items()]
    return pd.DataFrame(rows).round(4)


def comparison_frame(methods: list[Method], reports: dict[str, Any]) -> pd.DataFrame:
    """One row per method at matched strength: the German tokens it read (selection, fit, calibration,
    distinct total), held-out CE change per language (nats), the worst non-German change, mean KL on
    non-German text, and the random-edit control's German change."""
    import pandas as pd

    rows = []
    for m in methods:
        rep = reports[m.name]
        others = {k: v for k, v in rep.ce_delta.items() if k != "de"}
        row: dict[str, Any] = {"method": m.name}
        used = m.data.get("german_tokens", {})
        row.update({f"de tokens {k}": used.get(k, 0) for k in ("selection", "fit", "calibration", "total")})
        row.update({"alpha": m.match.alpha if m.match else None,
                    "calibration ΔCE de": m.match.delta if m.match else None})
        row.update({f"ΔCE {k}": v for k, v in rep.ce_delta.items()})
        row["max |ΔCE| other"] = max(abs(v) for v in others.values())
        row["KL other"] = rep.global_kl
        row["control ΔCE de"] = rep.control_ce_delta.get("de") if rep.control_ce_delta else None
        row["control max |ΔCE| other"] = (max(abs(v) for k, v in rep.control_ce_delta.items() if k != "de")
                                          if rep.control_ce_delta else None)
        rows.append(row)
    return pd.DataFrame(rows).round(4)


def data_frame(methods: list[Method]) -> pd.DataFrame:
    """What each method consumed (tokens/sentences) and how long it took to build."""
    import pandas as pd

    return pd.DataFrame([{"method": m.name, "seconds": round(m.seconds, 1),
                          "data": json.dumps(m.data, default=str)[:400]} for m in methods])


def write_german_report(path: Path, *, lm: LanguageModel, cfg: GermanDemoConfig, methods: list[Method],
                        reports: dict[str, Any], frames: dict[str, pd.DataFrame], texts: Texts,
                        failed: dict[str, str] | None = None) -> Path:
    """Write the self-contained report page; returns its path."""
    from ..viz.html import token_heatmap_html, write_html_report
    from ..viz.pareto import plot_pareto

    target = methods[0].match.target if methods and methods[0].match else float("nan")
    intro = (f"<p>Model <code>{html.escape(lm.name)}</code>. Every method is scaled to the same German CE "
             f"increase on calibration text ({target:+.3f} nats on {len(texts.calibration)} German sentences "
             f"not used elsewhere), then evaluated on the last {cfg.eval_texts} Bible sentences of each "
             "language, which no method saw. ΔCE is the change in mean cross-entropy (nats/token); the "
             "control is a random edit of the same structure and per-parameter norm. The <i>de tokens</i> "
             "columns count every German token each method read: to choose components (selection), to fit "
             "or train (fit), to set its strength (calibration), and the distinct total; "
             "<code>german_tokens_hook</code> in summary.json is the same count measured by a hook on the "
             "input embedding.</p>")
    for name, why in (failed or {}).items():
        intro += f"<p><b>{html.escape(name)} did not run:</b> {html.escape(why)}</p>"
    goal = "".join(f"<li>{html.escape(line)}</li>" for line in goal_sentences(reports, cfg, method_notes(methods))[1:])
    intro += (f"<p><b>Goal</b> (issue 14): held-out German CE up by at least {cfg.goal_de_ce:g} nats with every "
              f"other language's CE change within ±{cfg.goal_max_other:g} nats. Rows are the decomposed "
              "components (<code>decomposed-sel{N}-k{k}</code>: the k most German-selective decomposed "
              "components on N German tokens), SVD components (<code>component-sel{N}</code>) and LoRA "
              f"side by side.</p><ul>{goal}</ul>")
    fig = plot_pareto(frames, x="on_target", y="off_target")
    fig.axes[0].set_xlabel("German CE increase (nats, held-out)")
    fig.axes[0].set_ylabel("largest |CE change| on fr/es/it/en (nats, held-out)")
    fig.savefig(path.parent / "pareto.png", dpi=120, bbox_inches="tight")
    sections: list[tuple[str, Any]] = [
        ("Summary", intro),
        ("Per-language CE change at matched German CE (held-out)", comparison_frame(methods, reports)),
        (f"Goal: German +{cfg.goal_de_ce:g} nats, others within ±{cfg.goal_max_other:g} (held-out)",
         goal_frame(reports, cfg)),
        (f"Pareto: German removed vs damage elsewhere (strength {', '.join(f'{a:g}' for a in sorted({*cfg.pareto_alphas, 1.0}))}"
         " × matched)", fig),
        ("Data each method consumed", data_frame(methods)),
    ]
    best = min(reports, key=lambda k: max(abs(v) for lang, v in reports[k].ce_delta.items() if lang != "de"))
    worst = max(reports, key=lambda k: max(abs(v) for lang, v in reports[k].ce_delta.items() if lang != "de"))
    for name in dict.fromkeys([best, worst]):
        for lang in ("de", "fr"):
            sections.append((f"Token heatmap: {name}, {lang} passage (KL to the base model)",
                             token_heatmap_html(reports[name], lang, text_index=0)))
    return write_html_report(path, "gradedit: removing German from a multilingual model", sections)
