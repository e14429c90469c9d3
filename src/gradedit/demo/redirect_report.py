"""Outputs of the redirect study: ``points.json`` (every edit), ``summary.json``, ``heatmaps.json``
(per-token data of the chosen edits: token, fire flag, KL, Δ log P(target), P(target) before/after),
``pareto.png`` (two panels) and a self-contained ``report.html``."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import json_safe, write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

    from ..models import LanguageModel
    from .redirect import Point

logger = logging.getLogger(__name__)

__all__ = ["best_per_family", "write_outputs"]

HEATMAP_CONVENTION = ("per text, one entry per token p: 'tokens' (display string, the whitespace before it "
                      "included), 'fire' (p is a fire position), and for the prediction made after token p (of "
                      "token p + 1): 'kl' = KL(base || edit) in nats, 'dlogp_target' = change of log P(target), "
                      "'p_target_before' / 'p_target_after'; null for the last token, which predicts nothing")


def _short(label: str | None) -> str:
    return "-" if not label else label.removeprefix("model.")


def _row(p: Point) -> dict[str, Any]:
    m, u = p.measured, p.tokens_used
    return {"family": p.family, "params": " ".join(f"{k}={v:g}" for k, v in p.params.items()),
            "component": _short(p.component), "P(target)": m.get("p_target"), "top-1": m.get("top1_target"),
            "surr. KL": m.get("surrounding_kl"), "global KL": m.get("global_kl"),
            "class tokens sel/cal/fit": f"{u.get('selection', 0)}/{u.get('calibration', 0)}/{u.get('fit', 0)}",
            "total": u.get("total", 0), "hook": p.tokens_hook.get("total", 0),
            "fire fit": p.fire_positions_used.get("fit", 0), "sec": round(p.seconds, 1)}


def best_per_family(points: list[Point], budget: float) -> list[dict[str, Any]]:
    """Per family, the point with the highest P(target) whose surrounding KL is at most ``budget``
    (a family with none is listed with ``None`` values)."""
    rows = []
    for fam in dict.fromkeys(p.family for p in points):
        ok = [p for p in points if p.family == fam and p.measured["surrounding_kl"] <= budget]
        if ok:
            rows.append(_row(max(ok, key=lambda p: p.measured["p_target"])))
        else:
            rows.append({"family": fam, "params": "none within the budget"})
    return rows


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)


def _choices_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for fam, c in info["choices"].items():
        rows.append({"family": fam, "component": _short(c["label"]), "σ": c["component"]["sigma"],
                     c["kind"]: c["score"], "s": c["sign"], "agree": c["sign_agreement"],
                     "|a| fire": c["fire_mean_abs"], **{f"|a| {k[:5]}.": v for k, v in c["other_mean_abs"].items()},
                     "scored": c["n_candidates"], "α₁": c["unit"]["alpha"],
                     "α₁/σ": c["unit"]["alpha"] / c["component"]["sigma"], "gain": c["unit"]["gain"]})
    for fam, why in info["failed_families"].items():
        rows.append({"family": fam, "component": "none: " + why[:160]})
    return rows


def _intro(info: dict[str, Any], n_points: int, budget: float) -> str:
    t, base = info["texts"], info["base"]
    ev = t["evaluation"]
    parts = [
        f"<p>Model <code>{html.escape(info['model'])}</code>; context class: regex <code>{html.escape(info['context'])}"
        f"</code>; target token <code>{html.escape(repr(info['target']))}</code>; layers "
        f"<code>{html.escape(', '.join(info['modules']))}</code>. The base model gives the target P = "
        f"{base['p_target']:.3g} (top-1 at {base['top1_target']:.1%}) at the {ev['fire_positions']} held-out fire "
        f"positions.</p>",
        f"<p>{n_points} edits, each measured on held-out text only: {ev['texts']} class passages "
        f"({ev['fire_positions']} fire positions, {base['n_surrounding']} surrounding positions) and "
        f"{t['unrelated_eval']['texts']} unrelated passages ({base['n_global']} positions). Selection read "
        f"{t['selection']['texts']} class passages ({t['selection']['tokens']} tokens, "
        f"{t['selection']['fire_positions']} fire positions); trained edits read the first n of "
        f"{info['n_examples']} examples cut from {t['fit']['texts']} fit passages, plus "
        f"{t['unrelated_fit']['texts']} unrelated passages for the KL term. Held-out tokens read while the edits "
        f"were built (hook on the input embedding): <b>{info['held_out_tokens_read_while_building']}</b>.</p>",
        "<p><i>analytic</i>: the component's write vector becomes s·α·û(target), s = sign of its mean activation "
        "at the selection text's fire positions, α = k·α₁ where α₁ raises log P(target) by "
        f"{info['config']['unit_gain']:g} nat at those positions (calibration, on the selection text); "
        "<i>trained</i>: the write vector trained on n examples with CE on the target + λ·KL elsewhere; "
        f"<i>lora</i>: rank-{info['config']['lora_rank']} LoRA on <code>{html.escape(', '.join(info['lora_modules']))}"
        "</code>, same data and loss. Components: selectivity score, orientation s and the share of "
        "fire positions that agree with it, mean |activation| at fire / surrounding / unrelated positions, "
        "candidates scored, α₁ and the gain (nats) it gave on the selection text. Class tokens: tokens of class "
        "text each edit read, by purpose (selection / calibration / fit) and distinct <i>total</i>; <i>hook</i> "
        "is the same total "
        f"measured independently on the input embedding. Heatmaps: per family, the best point with surrounding KL "
        f"≤ {budget:g} (else its lowest-KL point).</p>",
    ]
    for fam, why in info["failed_families"].items():
        parts.append(f"<p><b>{html.escape(fam)}: no selective component.</b> {html.escape(why)}</p>")
    return "".join(parts)


def write_outputs(out: Path, info: dict[str, Any], points: list[Point], heat: dict[str, Any], *,
                  lm: LanguageModel) -> tuple[Path, dict[str, Any], list[str]]:
    """Write every output file; returns the report path, the summary and headline lines."""
    from ..viz.html import write_html_report
    from ..viz.redirect import fire_heatmap_html, plot_redirect_pareto

    budget = float(info["config"]["heatmap_kl_budget"])
    write_json_atomic(out / "points.json", json_safe({"info": info, "points": [p.to_dict() for p in points]}))
    write_json_atomic(out / "heatmaps.json", json_safe({"model": info["model"], "target": info["target"],
                                                     "context": info["context"], "convention": HEATMAP_CONVENTION,
                                                     "edits": heat}))
    best = best_per_family(points, budget)
    summary = json_safe({**info, "best_per_family": best, "n_points": len(points)})
    write_json_atomic(out / "summary.json", summary)
    rows = [{"family": p.family, **p.measured} for p in points]
    fig = plot_redirect_pareto(rows, base_p=info["base"]["p_target"], target=info["target"])
    fig.savefig(out / "pareto.png", dpi=120, bbox_inches="tight")
    sections: list[tuple[str, Any]] = [
        ("Summary", _intro(info, len(points), budget)),
        ("Components chosen (selection text only)", _frame(_choices_rows(info))),
        (f"Best point per family with surrounding KL ≤ {budget:g} (held-out)", _frame(best)),
        ("P(target) at held-out fire positions vs KL elsewhere", out / "pareto.png"),
        ("Every edit (held-out)", _frame([_row(p) for p in points])),
    ]
    vmax = _vmax([v for h in heat.values() for r in h["records"] for v in r["kl"] if v is not None])
    for label, h in heat.items():
        for rec in h["records"]:
            title = f"{label}: held-out text {rec['text_index']}"
            sections.append((f"Heatmap: {label}, text {rec['text_index']}",
                             fire_heatmap_html(rec, "kl", title=title + " — KL", vmax=vmax, target=info["target"])
                             + fire_heatmap_html(rec, "dlogp_target", title=title + " — Δ log P(target)",
                                                 target=info["target"])))
    report = write_html_report(out / "report.html", f"gradedit: redirecting {info['context']!r} to "
                               f"{info['target']!r} with one component", sections)
    headline = [f"{r['family']:>22}: " + (f"P(target) {info['base']['p_target']:.2g} -> {r['P(target)']:.3g} at "
                                          f"surrounding KL {r['surr. KL']:.3g}, global KL {r['global KL']:.3g} "
                                          f"({r['params']})" if "P(target)" in r else r["params"]) for r in best]
    headline.append(f"total time {info['timings_s'].get('total', 0) / 60:.1f} min; report {report}")
    logger.info("redirect study written to %s", out)
    return report, summary, headline


def _vmax(values: list[float], quantile: float = 0.99) -> float | None:
    """One KL colour-scale end for every heatmap of the page: the ``quantile`` of the values."""
    vals = sorted(abs(v) for v in values)
    return (vals[min(len(vals) - 1, int(quantile * (len(vals) - 1)))] or None) if vals else None
