"""The pronoun demo's HTML report: plots, before/after probabilities, blast-radius tables, heatmaps."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ..blast import BlastReport
    from ..gradiend.evaluate.encoder import EncoderResults
    from ..gradiend.train import Trainer
    from ..models import LanguageModel

logger = logging.getLogger(__name__)


def examples_frame(base: dict[str, Any], rewrites: dict[str, Any]) -> pd.DataFrame:
    """One row per example prompt: P(' he') / P(' she') before and after each rewrite."""
    import pandas as pd

    rows = []
    for i, b in enumerate(base["examples"]):
        row: dict[str, Any] = {"prompt": b["prompt"], "base P(he)": b["he"], "base P(she)": b["she"]}
        for name, rw in rewrites.items():
            row[f"{name}: P(he)"] = rw["examples"][i]["he"]
            row[f"{name}: P(she)"] = rw["examples"][i]["she"]
        rows.append(row)
    rows.append({"prompt": "mean over held-out masc test prompts", "base P(he)": base["p_he_masc"],
                 "base P(she)": base["p_she_masc"],
                 **{k: v for name, rw in rewrites.items()
                    for k, v in ((f"{name}: P(he)", rw["p_he_masc"]), (f"{name}: P(she)", rw["p_she_masc"]))}})
    return pd.DataFrame(rows)


def blast_frame(rewrites: dict[str, Any]) -> pd.DataFrame:
    """Per rewrite and language: CE before/after/change (nats), mean KL, and the random-edit control."""
    import pandas as pd

    if not rewrites:
        return pd.DataFrame({"rewrite": []})
    frames = []
    for name, rw in rewrites.items():
        f = rw["blast"].to_frame().reset_index()
        f.insert(0, "rewrite", name)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def selection_frame(rewrites: dict[str, Any]) -> pd.DataFrame:
    """The decoder configuration chosen for each rewrite, with the metric and LMS it was chosen on."""
    import pandas as pd

    keys = ["feature_factor", "learning_rate", "selection_split", "selection_base_value", "selection_value",
            "base_lms", "lms"]
    return pd.DataFrame([{"rewrite": name, **{k: rw.get(k) for k in keys}} for name, rw in rewrites.items()])


def write_pronoun_report(path: Path, *, trainer: Trainer, enc: EncoderResults, base: dict[str, Any],
                         rewrites: dict[str, Any], held: dict[str, list[str]], lm: LanguageModel,
                         skipped: dict[str, str] | None = None) -> Path:
    """Write the self-contained report page; returns its path. ``skipped``: rewrite name -> why the
    decoder sweep found no admissible point for it."""
    from ..viz.html import token_heatmap_html, write_html_report

    run = trainer.experiment_dir
    intro = (f"<p>Model <code>{html.escape(lm.name)}</code>; feature <code>en-pronouns</code> "
             f"(classes masc = ' he', fem = ' she'). Encoder Pearson r on held-out rows: "
             f"<b>{enc.correlation:+.3f}</b> (binary accuracy {enc.accuracy_binary:.3f}). "
             "Rewrites are chosen on selection data (the validation split's prompts and the first neutral "
             "sentences) and evaluated here on held-out prompts and text (the test split's prompts; neutral "
             "English after the selection sentences; German and French Bible text).</p>")
    sections: list[tuple[str, Any]] = [
        ("Summary", intro),
        ("Training convergence", run / "training_convergence.png"),
        ("Encoder: encoded values per class and neutral data", run / "encoder_test.png"),
        ("Decoder sweep: strengthen", run / "decoder_strengthen.png"),
        ("Decoder sweep: weaken", run / "decoder_weaken.png"),
        ("Selected rewrites", selection_frame(rewrites)),
        *([("Not rewritten (no admissible decoder point)", "".join(
            f"<p><b>{html.escape(n)}</b>: {html.escape(r)}</p>" for n, r in skipped.items()))] if skipped else []),
        ("Before/after probabilities on example prompts", examples_frame(base, rewrites)),
        ("Blast radius per language (nats; control = random edit of equal norm)", blast_frame(rewrites)),
    ]
    for name, rw in rewrites.items():
        report = rw["blast"]
        for lang in held:
            idx = _most_affected(report, lang)
            sections.append((f"Token heatmap: {name}, {lang} (KL to the base model per token)",
                             token_heatmap_html(report, lang, text_index=idx)))
    sections = [(h, c) for h, c in sections if not (isinstance(c, Path) and not c.is_file())]
    return write_html_report(path, "gradedit demo: GRADIEND he/she", sections)


def _most_affected(report: BlastReport, lang: str) -> int:
    """Index of the text with the largest mean KL in ``lang`` (0 when per-token values are absent)."""
    if report.tokens is None:
        return 0
    try:
        kls = [sum(t["kl"]) / max(len(t["kl"]), 1) for t in report.tokens[lang]]
    except (AttributeError, KeyError, TypeError):
        return 0
    return max(range(len(kls)), key=kls.__getitem__) if kls else 0
