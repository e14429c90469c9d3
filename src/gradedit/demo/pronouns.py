"""The main job (``gradedit demo``): GRADIEND on he/she, end to end, with a blast-radius report.

Stages (each logged with its wall time; progress bars inside):

1. build the ``en-pronouns`` feature data and neutral English text;
2. train GRADIEND (pre-pruned input space, decoder post-pruned for the rewrite);
3. evaluate the encoder (held-out test rows) and the decoder (strengthen ``fem``, weaken ``masc``);
4. rewrite the base model for both and probe example prompts before/after;
5. measure each rewrite's blast radius (held-out neutral English, German, French; KL and CE);
6. write ``report.html`` (self-contained) and ``summary.json``.

Held-out discipline: decoder selection uses the first ``neutral_selection`` neutral sentences and a
sample of the validation split's prompts; the report's probabilities use the test split's prompts,
its perplexity/KL neutral sentences after the selection ones and other languages' text the selection
never saw. ``summary.json`` records the split behind each number.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from .. import metrics
from .._files import write_json_atomic
from ..data import corpora, features
from ..data.columns import fill_masked
from ..gradiend.train import TrainConfig, Trainer
from ..models import LanguageModel, load_model
from .common import DemoResult, stage

logger = logging.getLogger(__name__)

CLASSES = ("masc", "fem")
EXAMPLE_PROMPTS = (
    "The doctor said that",
    "My brother told me that",
    "The nurse said that",
    "The king looked up and",
    "When the child woke up,",
    "The engineer explained that",
)


@dataclass
class PronounDemoConfig:
    """Sizes of the demo; the defaults finish in about 10–15 minutes on 2 CPU cores."""

    model: str = "smollm2-135m"
    out_dir: str = "runs/demo"
    steps: int = 60
    train_batch_size: int = 4
    pre_prune_topk: float = 0.01
    post_prune_topk: float | None = 0.05
    encoder_max_size: int = 96
    decoder_rows_per_class: int = 32
    neutral_selection: int = 48
    neutral_heldout: int = 64
    other_lang_texts: int = 48
    other_langs: tuple[str, ...] = ("de", "fr")
    target_sentences: int = 64
    selector: str = "perplexity:0.01"  # +1% on selection text; held-out perplexity rises more
    refine_steps: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.encoder_max_size < 2 or self.decoder_rows_per_class < 1:
            raise ValueError("steps, encoder_max_size and decoder_rows_per_class must be positive")


class Probe(TypedDict):
    """P(' he') and P(' she') after one prompt."""

    prompt: str
    he: float
    she: float


def probe_prompts(lm: LanguageModel, prompts: list[str]) -> list[Probe]:
    """P(' he') and P(' she') after each prompt."""
    p = metrics.next_token_logprobs(lm, prompts, [lm.token_id(" he"), lm.token_id(" she")]).exp()
    return [{"prompt": q, "he": float(p[i, 0]), "she": float(p[i, 1])} for i, q in enumerate(prompts)]


def class_prompts(trainer: Trainer, cls: str) -> list[str]:
    """Causal-LM prompts of the test split whose factual class is ``cls``."""
    test = trainer.data.split("test")
    frame = test.to_frame()
    return [p for p, c in zip(test.prompts("clm"), frame["factual_class"]) if c == cls]


def class_sentences(trainer: Trainer) -> list[str]:
    """The test split's sentences with their own pronoun filled in (blast-radius target text: the
    pronoun positions are the target, every other position is 'surrounding')."""
    frame = trainer.data.split("test").to_frame()
    return [fill_masked(t, f) for t, f in zip(frame["text"], frame["factual"])]


def train_gradiend(cfg: PronounDemoConfig, lm: LanguageModel, timings: dict[str, float]) -> Trainer:
    """Stages 1–2: data and training (reuses a finished run in ``out_dir/run`` with the same config)."""
    with stage("feature data", timings):
        data = features.build("en-pronouns", lm, seed=cfg.seed)
        neutral = features.neutral("en", n=cfg.neutral_selection + cfg.neutral_heldout, seed=cfg.seed)
    config = TrainConfig(experiment_dir=str(Path(cfg.out_dir) / "run"), source="diff", target="diff",
                         max_steps=cfg.steps, eval_steps=max(cfg.steps // 3, 1), train_batch_size=cfg.train_batch_size,
                         pre_prune_topk=cfg.pre_prune_topk, pre_prune_samples=16, post_prune_topk=cfg.post_prune_topk,
                         eval_max_size=48, learning_rate=1e-3, seed=cfg.seed)
    trainer = Trainer(lm, data, list(CLASSES), neutral=neutral, config=config)
    with stage("GRADIEND training", timings):
        trainer.train()
        trainer.plot_training_convergence()
    return trainer


def held_out_corpora(cfg: PronounDemoConfig, trainer: Trainer) -> dict[str, list[str]]:
    """Evaluation text never used for training or selection: neutral English after the selection
    sentences, and the last sentences of the other languages' Bibles."""
    if trainer.neutral is None:
        raise ValueError("the trainer has no neutral text; create it with neutral=[...] (see train_gradiend)")
    out = {"en": list(trainer.neutral[cfg.neutral_selection:cfg.neutral_selection + cfg.neutral_heldout])}
    for lang in cfg.other_langs:
        out[lang] = corpora.sentences(lang)[-cfg.other_lang_texts:]
    return out


def run(cfg: PronounDemoConfig | None = None) -> DemoResult:
    """Run the whole demo; see the module docstring."""
    from ..blast import TargetSpec, blast_radius
    from .report import write_pronoun_report

    cfg = cfg or PronounDemoConfig()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    lm = load_model(cfg.model)
    trainer = train_gradiend(cfg, lm, timings)
    with stage("encoder evaluation", timings):
        enc = trainer.evaluate_encoder(split="test", max_size=cfg.encoder_max_size, plot=True)
    with stage("decoder evaluation", timings):
        sweep = functools.partial(trainer.evaluate_decoder, plot=True, max_neutral=cfg.neutral_selection,
                                  max_rows_per_class=cfg.decoder_rows_per_class, selector=cfg.selector,
                                  refine_steps=cfg.refine_steps)
        dec = sweep(target_class=list(CLASSES))
        weak = sweep(target_class="masc", increase_target_probabilities=False)
    mwg = trainer.get_model()
    candidates = {"strengthen fem": dec["fem"], "weaken masc": weak["masc_weaken"]}
    skipped = {name: sel.reason for name, sel in candidates.items() if not sel.admissible}
    for name, reason in skipped.items():
        logger.warning("%s: not rewritten: %s", name, reason)
    chosen = {name: sel for name, sel in candidates.items() if sel.admissible}
    edits = {name: mwg.as_edit(sel.learning_rate, sel.feature_factor) for name, sel in chosen.items()}
    masc_prompts = class_prompts(trainer, "masc")
    sentences = class_sentences(trainer)[: cfg.target_sentences]
    held = held_out_corpora(cfg, trainer)
    examples = list(EXAMPLE_PROMPTS)
    rewrites: dict[str, Any] = {}
    with stage("probes and blast radius", timings):
        base_examples = probe_prompts(lm, examples)
        base_masc = probe_prompts(lm, masc_prompts)
        for name, edit in edits.items():
            sel = chosen[name]
            with edit.applied(lm.model):
                ex = probe_prompts(lm, examples)
                masc = probe_prompts(lm, masc_prompts)
            same = [r["blast"] for r in rewrites.values()
                    if (r["feature_factor"], r["learning_rate"]) == (sel.feature_factor, sel.learning_rate)]
            report = same[0] if same else blast_radius(lm, edit, held, target=TargetSpec(sentences, [" he", " she"]))
            report.save(out / f"blast_{name.replace(' ', '_')}.json", tokens=False)
            rewrites[name] = {
                "feature_factor": sel.feature_factor, "learning_rate": sel.learning_rate,
                "selection_split": sel.split, "selection_value": sel.value, "selection_base_value": sel.base_value,
                "lms": sel.lms, "base_lms": sel.base_lms,
                "p_he_masc": _mean(masc, "he"), "p_she_masc": _mean(masc, "she"),
                "examples": ex, "blast": report,
            }
    base = {"p_he_masc": _mean(base_masc, "he"), "p_she_masc": _mean(base_masc, "she"), "examples": base_examples}
    summary = {
        "config": asdict(cfg), "model": lm.name, "n_test_masc_prompts": len(masc_prompts),
        "splits": {"decoder_selection": dec.info.get("split"), "probabilities (p_he_masc, p_she_masc)": "test",
                   "encoder": "test", "blast target sentences": "test"},
        "training": trainer.seed_results[0].to_dict() if trainer.seed_results else {},
        "encoder": enc.to_dict(), "base": base,
        "rewrites": {k: {kk: (vv.to_dict(tokens=False) if kk == "blast" else vv) for kk, vv in v.items()} for k, v in rewrites.items()},
        "not_rewritten": skipped,
    }
    with stage("report", timings):
        report_path = write_pronoun_report(out / "report.html", trainer=trainer, enc=enc, base=base,
                                           rewrites=rewrites, held=held, lm=lm, skipped=skipped)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    summary["timings_s"] = timings
    write_json_atomic(out / "summary.json", summary)
    headline = headline_lines(base, rewrites, enc.correlation, timings["total"], skipped)
    return DemoResult(out_dir=out, report=report_path, headline=headline, summary=summary)


def _mean(rows: list[Probe], key: Literal["he", "she"]) -> float:
    return sum(r[key] for r in rows) / max(len(rows), 1)


def headline_lines(base: dict[str, Any], rewrites: dict[str, Any], r: float, seconds: float,
                   skipped: dict[str, str] | None = None) -> list[str]:
    """The last lines the CLI prints: encoder r, the two rewrites' effects and their blast radius
    (or why a rewrite was not made)."""
    lines = [f"encoder: Pearson r on held-out he/she rows = {r:+.3f}"]
    lines += [f"{name}: not rewritten: {reason}" for name, reason in (skipped or {}).items()]
    for name, rw in rewrites.items():
        rep = rw["blast"]
        langs = ", ".join(f"{k} {v:+.3f}" for k, v in rep.ce_delta.items())
        lines.append(f"{name}: P(' he'|masc) {base['p_he_masc']:.4f} -> {rw['p_he_masc']:.4f}, "
                     f"P(' she'|masc) {base['p_she_masc']:.4f} -> {rw['p_she_masc']:.4f}; "
                     f"CE change (nats) {langs}")
    lines.append(f"total time {seconds / 60:.1f} min")
    return lines
