"""The pronoun demo's HTML report: the conclusion first, then how it was reached (training, encoder,
decoder sweeps, selected configurations), held-out probabilities and bias, the blast radius and token
heatmaps on one colour scale. Every table has human column names and no index column."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .conclusion import conclusion_html, group_name, pct

if TYPE_CHECKING:
    import pandas as pd

    from ..blast import BlastReport
    from ..gradiend.evaluate.encoder import EncoderResults
    from ..gradiend.train import Trainer
    from ..models import LanguageModel

logger = logging.getLogger(__name__)

TOKENS = {"masc": " he", "fem": " she"}
LANG_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian"}


def _lang(code: str) -> str:
    return LANG_NAMES.get(code, code)


def examples_frame(base: dict[str, Any], edits: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per example prompt: P(' he') / P(' she') for the base model and after each rewrite."""
    import pandas as pd

    rows = []
    for i, b in enumerate(base["examples"]):
        row: dict[str, Any] = {"prompt": b["prompt"], "base: P(' he')": b["he"], "base: P(' she')": b["she"]}
        for e in edits:
            name = group_name(e["names"])
            row[f"{name}: P(' he')"] = e["held"]["examples"][i]["he"]
            row[f"{name}: P(' she')"] = e["held"]["examples"][i]["she"]
        rows.append(row)
    return pd.DataFrame(rows)


def heldout_frame(base: dict[str, Any], edits: list[dict[str, Any]]) -> pd.DataFrame:
    """Base model and each rewrite on held-out data: pronoun probabilities on the test prompts, the bias
    on the held-out occupation templates, perplexity and LMS on held-out neutral English."""
    import pandas as pd

    def row(name: str, m: dict[str, Any]) -> dict[str, Any]:
        return {"model": name, "P(' he') on he-prompts": m["p_masc_on_masc"],
                "P(' she') on he-prompts": m["p_fem_on_masc"], "P(' he') on she-prompts": m["p_masc_on_fem"],
                "P(' she') on she-prompts": m["p_fem_on_fem"],
                "templates: mean |log P(' he') - log P(' she')|": m["bias_abs"],
                "templates: mean log P(' he') - log P(' she')": m["bias_signed"],
                "templates: P(' he')": m["bias_p_masc"], "templates: P(' she')": m["bias_p_fem"],
                "perplexity (neutral English)": m["perplexity"], "LMS (top-1 accuracy)": m["lms"]}

    return pd.DataFrame([row("base model", base), *(row(group_name(e["names"]), e["held"]) for e in edits)])


def selection_frame(edits: list[dict[str, Any]]) -> pd.DataFrame:
    """Per rewrite: the decoder configuration chosen and the numbers it was chosen on (selection data),
    the metric shown as the probability or bias itself (the sweep maximises 1 − P or −bias)."""
    import pandas as pd

    rows = []
    for e in edits:
        for name, s in e["selections"].items():
            verb, _, cls = name.partition(" ")
            metric, shown = {"strengthen": (f"P({TOKENS.get(cls, cls)!r}) on {_other(cls)} prompts", lambda v: v),
                             "weaken": (f"P({TOKENS.get(cls, cls)!r}) on {cls} prompts", lambda v: 1.0 - v),
                             "debias": ("mean |log P(' he') - log P(' she')| on templates", lambda v: -v)}[verb]
            rows.append({"rewrite": name, "edit": group_name(e["names"]), "feature factor": e["feature_factor"],
                         "learning rate": e["learning_rate"], "selection rule": s["constraint"],
                         "selection data": f"{s['data']} ({s['split']})", "selection metric": metric,
                         "before": shown(s["base_value"]), "after": shown(s["value"]),
                         "perplexity change (selection text)": pct(s["perplexity"] / s["base_perplexity"] - 1),
                         "LMS before": s["base_lms"], "LMS after": s["lms"]})
    return pd.DataFrame(rows)


def _other(cls: str) -> str:
    return next((c for c in TOKENS if c != cls), "other")


def on_target_frame(edits: list[dict[str, Any]]) -> pd.DataFrame:
    """Per rewrite and pronoun: at the held-out sentences' positions of that pronoun, the probability of
    each pronoun before and after (the blast radius's on-target numbers per token)."""
    import pandas as pd

    rows = []
    for e in edits:
        by = (e["blast"].on_target or {}).get("by_token") or {}
        for tok, d in by.items():
            row = {"rewrite": group_name(e["names"]), "positions of": repr(tok), "count": d["n_positions"],
                   f"P({tok!r}) before": d["p_before"], f"P({tok!r}) after": d["p_after"]}
            for other, v in d["p_other"].items():
                row.update({f"P({other!r}) before": v["before"], f"P({other!r}) after": v["after"]})
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame


def blast_frame(edits: list[dict[str, Any]]) -> pd.DataFrame:
    """Per rewrite and language: cross-entropy before/after/change (nats per token), mean KL to the base
    model, and the same change and KL for a random edit of equal norm."""
    import pandas as pd

    rows = []
    for e in edits:
        rep: BlastReport = e["blast"]
        for lang in rep.langs:
            rows.append({"rewrite": group_name(e["names"]), "held-out text": _lang(lang), "tokens": rep.n_tokens[lang],
                         "CE before (nats)": rep.ce_base[lang], "CE after (nats)": rep.ce_edit[lang],
                         "CE change (nats)": rep.ce_delta[lang], "mean KL to base (nats)": rep.kl[lang],
                         "random edit: CE change": (rep.control_ce_delta or {}).get(lang, float("nan")),
                         "random edit: KL": (rep.control_kl or {}).get(lang, float("nan"))})
    return pd.DataFrame(rows)


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _debias_note(info: dict[str, Any] | None) -> str:
    """One paragraph: the debias selection's bias on the selection templates, before and after."""
    if not info:
        return ""
    b = info.get("bias", {})
    return _p(f"Selected under {info.get('constraint', {}).get('label', '')}: mean |log P(' he') - log P(' she')| "
              f"{b.get('base', {}).get('mean_abs_log_ratio', float('nan')):.3f} -> "
              f"{b.get('selected', {}).get('mean_abs_log_ratio', float('nan')):.3f} on the "
              f"{info.get('bias_prompts')} selection templates (held-out numbers: see the conclusion).")


def write_pronoun_report(path: Path, *, trainer: Trainer, enc: EncoderResults, base: dict[str, Any],
                         edits: list[dict[str, Any]], conclusions: list[dict[str, Any]], held: dict[str, list[str]],
                         lm: LanguageModel, enc_factual: EncoderResults | None = None,
                         skipped: dict[str, str] | None = None, debias_info: dict[str, Any] | None = None) -> Path:
    """Write the self-contained report page; returns its path. ``skipped``: rewrite name -> why the
    decoder sweep found no admissible point for it."""
    from ..viz.html import HOVER_HINT, heatmap_vmax, token_heatmap_html, write_html_report

    run = trainer.experiment_dir
    res = trainer.seed_results[0] if trainer.seed_results else None
    setup = _p(f"Model {lm.name}; feature en-pronouns (classes masc = ' he', fem = ' she'). GRADIEND was trained "
               f"on the train split ({trainer.config.source} gradient in, {trainer.config.target} gradient out); "
               "each rewrite was chosen on selection data (validation prompts, the first neutral sentences, the "
               "selection half of the occupation templates) and every number in the conclusion is measured on "
               "data the selection never saw: the test split's prompts and sentences, the held-out half of the "
               f"occupation templates (other occupations and sentence frames), {len(held['en'])} later neutral "
               "English sentences and the last German and French Bible sentences.")
    train_note = ""
    if res is not None:
        train_note = _p(f"Validation Pearson r of the kept model (step {res.best_step}): {res.correlation:+.3f}. "
                        + (f"Training stopped early at step {res.last_step}: {res.stop_reason}."
                           if res.stopped_early else f"Training ran all {res.last_step} steps."))
    enc_note = _p(f"Held-out test rows: Pearson r {enc.correlation:+.3f}, sign accuracy {enc.accuracy_binary:.3f}. "
                  "Identity and neutral rows have no counterfactual, so with the diff gradient they all encode to "
                  "the same value tanh(b_e); they say nothing about neutral text." if enc.info.get("source") == "diff"
                  else f"Held-out test rows: Pearson r {enc.correlation:+.3f}, sign accuracy {enc.accuracy_binary:.3f}.")
    sections: list[tuple[str, Any]] = [
        ("Conclusion", conclusion_html(conclusions, skipped)),
        ("What was done", setup),
        ("Training convergence", train_note),
        ("", run / "training_convergence.png"),
        (f"Encoder, as trained ({enc.info.get('source')} gradient)", enc_note),
        ("", run / "encoder_test.png"),
    ]
    if enc_factual is not None:
        sections += [
            ("Encoder read with the factual gradient (neutral rows informative)", _p(
                "The same encoder applied to the gradient of the factual token alone (the GRADIEND paper's analysis): "
                "neutral rows now spread, so the plot shows whether ordinary text excites the feature. Pearson r on "
                f"the pronoun rows {enc_factual.correlation:+.3f}; mean encoded value of neutral text "
                f"{enc_factual.mean_by_class.get('neutral', float('nan')):+.3f}.")),
            ("", run / "encoder_test_factual.png")]
    sections += [
        ("Decoder sweep: strengthen fem (selection data)", run / "decoder_strengthen.png"),
        ("Decoder sweep: weaken masc (selection data)", run / "decoder_weaken.png"),
        ("Decoder sweep: debias (selection templates)", run / "decoder_debias.png"),
        ("", _debias_note(debias_info)),
        ("Selected configurations (numbers on the selection data)", selection_frame(edits)),
        ("Held-out probabilities, bias on held-out templates, perplexity and LMS", heldout_frame(base, edits)),
        ("Example prompts: P(' he') and P(' she') after the prompt", examples_frame(base, edits)),
        ("On target: pronoun positions of held-out test sentences", on_target_frame(edits)),
        ("Blast radius per language (held-out text; random edit of equal norm as control)", blast_frame(edits)),
    ]
    reports = [e["blast"] for e in edits]
    vmax = heatmap_vmax(reports, list(held))
    if reports:
        sections.append(("Token heatmaps", _p(
            "Each token is coloured by the KL divergence between the base model's and the rewritten model's "
            "next-token distributions at that position; all heatmaps share one colour scale "
            f"(full red = {vmax:.4g} nats, the 99th percentile; larger values are clipped). {HOVER_HINT} "
            "The tooltip lists the KL, the change of log P of the actual token, the top tokens before and "
            "after, and the largest probability shifts." if vmax else HOVER_HINT)))
    for e in edits:
        for lang in held:
            idx = _most_affected(e["blast"], lang)
            sections.append(("", token_heatmap_html(
                e["blast"], lang, text_index=idx, vmax=vmax,
                title=f"{group_name(e['names'])}: {_lang(lang)}, the held-out text with the largest mean KL")))
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
