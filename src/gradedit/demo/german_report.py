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
    from .german import GermanDemoConfig, Method, Texts

logger = logging.getLogger(__name__)


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
    fig = plot_pareto(frames, x="on_target", y="off_target")
    fig.axes[0].set_xlabel("German CE increase (nats, held-out)")
    fig.axes[0].set_ylabel("largest |CE change| on fr/es/it/en (nats, held-out)")
    fig.savefig(path.parent / "pareto.png", dpi=120, bbox_inches="tight")
    sections: list[tuple[str, Any]] = [
        ("Summary", intro),
        ("Per-language CE change at matched German CE (held-out)", comparison_frame(methods, reports)),
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
