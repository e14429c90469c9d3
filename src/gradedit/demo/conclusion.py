"""The pronoun demo's conclusion: per rewrite, what it did on held-out prompts, what it cost, under
which budget it was chosen and whether it met the goal — as numbers (``summary.json``), words and one
table (the top of ``report.html``).

Goals (held-out prompts and text, never the selection data):

- strengthen C: P(C's token) on the other class's held-out prompts at least ×2;
- weaken C: P(C's token) on C's own held-out prompts at most ×0.5;
- debias: mean |log P(A) − log P(B)| on the held-out occupation templates at most ×0.5;

each within +2 % perplexity on held-out neutral English.
"""

from __future__ import annotations

import html
import math
from typing import Any

#: the goal every rewrite is held to: this factor on its target, within this held-out perplexity increase
GOAL_FACTOR = 2.0
GOAL_PERPLEXITY = 0.02


def edit_groups(selections: dict[str, Any]) -> list[list[str]]:
    """Rewrite names grouped by identical edits (same feature factor and learning rate), in order."""
    groups: dict[tuple[float, float], list[str]] = {}
    for name, sel in selections.items():
        groups.setdefault((float(sel.feature_factor), float(sel.learning_rate)), []).append(name)
    return list(groups.values())


def group_name(names: list[str]) -> str:
    """``"strengthen fem"``, or ``"strengthen fem = weaken masc"`` for one edit chosen twice."""
    return " = ".join(names)


def goal_of(name: str, tokens: dict[str, str]) -> dict[str, Any]:
    """What rewrite ``name`` ("strengthen C", "weaken C", "debias") is measured on and the goal's direction."""
    verb, _, cls = name.partition(" ")
    a, b = list(tokens)
    if verb == "debias":
        return {"metric": f"mean |log P({tokens[a]!r}) - log P({tokens[b]!r})| on held-out occupation templates",
                "key": "bias_abs", "want": "down"}
    other = b if cls == a else a
    if verb == "strengthen":
        return {"metric": f"P({tokens[cls]!r}) on held-out {other} prompts", "key": f"p_{cls}_on_{other}", "want": "up"}
    if verb == "weaken":
        return {"metric": f"P({tokens[cls]!r}) on held-out {cls} prompts", "key": f"p_{cls}_on_{cls}", "want": "down"}
    raise ValueError(f"unknown rewrite name {name!r}: expected 'strengthen C', 'weaken C' or 'debias'")


def conclude(base: dict[str, Any], edits: list[dict[str, Any]], tokens: dict[str, str]) -> list[dict[str, Any]]:
    """One conclusion per edit (see the module docstring); ``edits`` carry ``names``, ``held`` (the same
    keys as ``base``: ``p_C_on_D``, ``bias_abs``, ``lms``, ``perplexity``), ``blast`` and ``selection``."""
    out = []
    for e in edits:
        rep, held = e["blast"], e["held"]
        ppl = held["perplexity"] / base["perplexity"] - 1.0
        goals = []
        for name in e["names"]:
            g = goal_of(name, tokens)
            before, after = base[g["key"]], held[g["key"]]
            ratio = after / before if before else math.inf
            reached = ratio >= GOAL_FACTOR if g["want"] == "up" else ratio <= 1.0 / GOAL_FACTOR
            goals.append({"name": name, "metric": g["metric"], "before": before, "after": after, "ratio": ratio,
                          "goal": f"×{GOAL_FACTOR:g}" if g["want"] == "up" else f"×{1 / GOAL_FACTOR:g}",
                          "reached": bool(reached)})
        sel = e["selection"]
        out.append({
            "rewrite": group_name(e["names"]), "names": list(e["names"]), "identical": len(e["names"]) > 1,
            "feature_factor": e["feature_factor"], "learning_rate": e["learning_rate"],
            "selected_under": sel["constraint"], "selection_split": sel["split"], "selection_data": sel["data"],
            "goals": goals, "heldout_perplexity_change": ppl, "lms_before": base["lms"], "lms_after": held["lms"],
            "ce_delta": dict(rep.ce_delta), "kl": dict(rep.kl), "control_kl": dict(rep.control_kl or {}),
            "control_ce_delta": dict(rep.control_ce_delta or {}),
            "met": bool(all(g["reached"] for g in goals) and ppl <= GOAL_PERPLEXITY),
        })
    return out


def pct(x: float) -> str:
    """A relative change as a signed percentage with one decimal: ``+2.7%``."""
    return f"{100 * x:+.1f}%"


def _ratio(x: float) -> str:
    return f"×{x:.2f}"


def num(x: float) -> str:
    """A small non-negative quantity (KL, probability): 4 decimals, or 2 significant digits below 0.001."""
    return f"{x:.4f}" if x == 0 or abs(x) >= 1e-3 or x != x else f"{x:.1e}"


def sentences(c: dict[str, Any]) -> list[str]:
    """The conclusion of one edit in words (plain text; the page escapes it)."""
    lines = []
    name = c["rewrite"]
    if c["identical"]:
        lines.append(f"{' and '.join(c['names'])} selected the same edit (feature factor {c['feature_factor']:+g}, "
                     f"learning rate {c['learning_rate']:.4g}); it is shown once.")
    did = "; ".join(f"{g['metric']} went {num(g['before'])} → {num(g['after'])} ({_ratio(g['ratio'])}, goal {g['goal']}: "
                    f"{'reached' if g['reached'] else 'not reached'})" for g in c["goals"])
    lines.append(f"{name}: {did}.")
    langs = ", ".join(f"{lang} {d:+.3f}" for lang, d in c["ce_delta"].items())
    kls = ", ".join(f"{lang} {num(v)} (random edit of equal norm {num(c['control_kl'].get(lang, math.nan))})"
                    for lang, v in c["kl"].items())
    lines.append(f"Cost: held-out English perplexity {pct(c['heldout_perplexity_change'])}; cross-entropy change "
                 f"(nats/token) {langs}; mean KL to the base model {kls}; LMS (top-1 accuracy on held-out English) "
                 f"{c['lms_before']:.4f} → {c['lms_after']:.4f}.")
    lines.append(f"Chosen under {c['selected_under']} on {c['selection_data']} ({c['selection_split']}). "
                 + ("It meets the goal" if c["met"] else "It does not meet the goal")
                 + f" ({' and '.join(g['goal'] + ' on its target' for g in c['goals'])} within "
                 f"{pct(GOAL_PERPLEXITY)} held-out perplexity).")
    return lines


def conclusion_html(conclusions: list[dict[str, Any]], skipped: dict[str, str] | None = None) -> str:
    """The report's opening section: a verdict per edit in words, then one table."""
    parts = ['<div class="gx-conclusion">']
    if not conclusions:
        parts.append("<p><b>No rewrite was made.</b></p>")
    for c in conclusions:
        verdict = '<span class="gx-ok">meets the goal</span>' if c["met"] else '<span class="gx-no">misses the goal</span>'
        parts.append(f"<p><b>{html.escape(c['rewrite'])}</b>: {verdict}.</p>")
        parts += [f"<p>{html.escape(s)}</p>" for s in sentences(c)]
    for name, reason in (skipped or {}).items():
        parts.append(f"<p><b>{html.escape(name)}</b>: not rewritten: {html.escape(reason)}</p>")
    parts.append("</div>")
    if conclusions:
        parts.append(conclusion_table(conclusions))
    return "".join(parts)


def conclusion_table(conclusions: list[dict[str, Any]]) -> str:
    """One row per edit: target before → after (ratio), held-out perplexity, CE and KL per language
    with the random control, LMS, the selection budget and the verdict."""
    langs = list(conclusions[0]["ce_delta"])
    head = ["rewrite", "target (held-out data)", "before → after (ratio)", "held-out perplexity",
            f"CE change, nats/token ({' / '.join(langs)})", "mean KL to base (random edit of equal norm)",
            "LMS before → after", "selected under", "goal met?"]
    rows = []
    for c in conclusions:
        cells = ["<br>".join(html.escape(g["name"] + ": " + g["metric"]) for g in c["goals"]),
                 "<br>".join(html.escape(f"{num(g['before'])} → {num(g['after'])} ({_ratio(g['ratio'])})")
                             for g in c["goals"]),
                 html.escape(pct(c["heldout_perplexity_change"])),
                 " / ".join(f"{c['ce_delta'][lang]:+.3f}" for lang in langs),
                 "<br>".join(html.escape(f"{lang} {num(c['kl'][lang])} ({num(c['control_kl'].get(lang, math.nan))})")
                             for lang in langs),
                 f"{c['lms_before']:.4f} → {c['lms_after']:.4f}", html.escape(c["selected_under"]),
                 '<span class="gx-ok">yes</span>' if c["met"] else '<span class="gx-no">no</span>']
        rows.append(f"<tr><td>{html.escape(c['rewrite'])}</td>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table class="gx-table gx-conclusion-table"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
