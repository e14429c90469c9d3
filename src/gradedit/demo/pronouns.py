"""The main job (``gradedit demo``): GRADIEND on he/she, end to end, with a report that concludes.

Stages (each logged with its wall time; progress lines inside):

1. build the ``en-pronouns`` feature data and neutral English text;
2. train GRADIEND (pre-pruned input space, early stopping, decoder post-pruned for the rewrite);
3. evaluate the encoder on held-out test rows (as trained, and read with the factual gradient so
   neutral rows are informative) and sweep the decoder: strengthen ``fem``, weaken ``masc`` and
   debias (balance ' he'/' she' on occupation templates);
4. measure each distinct rewrite on held-out prompts and text, and its blast radius next to a random
   edit of equal norm (held-out neutral English, German, French; pronoun positions per token);
5. write ``report.html`` (opens with the conclusion) and ``summary.json`` (the same numbers).

Held-out discipline: decoder selection uses the first ``neutral_selection`` neutral sentences, a
sample of the validation split's prompts and the selection half of the occupation templates; the
conclusion uses the test split's prompts, neutral English after the selection sentences, the held-out
half of the templates (other occupations, other sentence frames) and other languages' text the
selection never saw. ``summary.json`` records the split behind each number.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

from .. import metrics
from .._files import write_json_atomic
from ..data import corpora, features
from ..data.columns import fill_masked
from ..data.templates import occupation_prompts
from ..gradiend.evaluate.decoder import bias_scores
from ..gradiend.train import TrainConfig, Trainer
from ..models import LanguageModel, load_model
from .common import DemoResult, stage
from .conclusion import conclude, edit_groups, group_name, pct

logger = logging.getLogger(__name__)

CLASSES = ("masc", "fem")
TOKENS = {"masc": " he", "fem": " she"}
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
    """Sizes of the demo; the defaults finish in about 10–15 minutes on 2 CPU cores.

    ``steps`` is the most GRADIEND steps; training stops earlier once the validation correlation has
    not improved for ``patience`` evaluations (one every ``eval_steps`` steps).
    """

    model: str = "smollm2-135m"
    out_dir: str = "runs/demo"
    steps: int = 100
    eval_steps: int = 10
    patience: int = 3
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
    debias_selector: str = "balance:0.01"
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
                         max_steps=cfg.steps, eval_steps=min(cfg.eval_steps, cfg.steps),
                         early_stopping_patience=cfg.patience, train_batch_size=cfg.train_batch_size,
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


class HeldOut:
    """Everything the conclusion measures on held-out data, for the model as it is now."""

    def __init__(self, lm: LanguageModel, trainer: Trainer, held: dict[str, list[str]]) -> None:
        self.lm, self.english = lm, held["en"]
        self.prompts = {c: class_prompts(trainer, c) for c in CLASSES}
        self.templates = occupation_prompts("heldout", lm.kind, lm.tokenizer.mask_token)

    def measure(self) -> dict[str, Any]:
        """``p_C_on_D`` (mean P(C's token) on D's test prompts), the bias on the held-out templates
        (``bias_abs``, ``bias_signed``, ``bias_p_masc``, ``bias_p_fem``), LMS and perplexity on
        held-out neutral English, and the example prompts."""
        out: dict[str, Any] = {}
        for d, prompts in self.prompts.items():
            rows = probe_prompts(self.lm, prompts)
            out[f"p_masc_on_{d}"] = _mean([r["he"] for r in rows])
            out[f"p_fem_on_{d}"] = _mean([r["she"] for r in rows])
        ids = {c: [self.lm.token_id(t)] for c, t in TOKENS.items()}
        b = bias_scores(self.lm, self.templates, ids["masc"], ids["fem"])
        out.update({"bias_abs": b["mean_abs_log_ratio"], "bias_signed": b["mean_log_ratio"], "bias_p_masc": b["p_a"],
                    "bias_p_fem": b["p_b"]})
        sc = metrics.lm_scores(self.lm, self.english)
        out.update({"lms": sc["lms"], "perplexity": sc["perplexity"], "examples": probe_prompts(self.lm, list(EXAMPLE_PROMPTS))})
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def selection_record(sel: Any, info: dict[str, Any], data: tuple[str, str]) -> dict[str, Any]:
    """How a rewrite was chosen: the selector's constraint, the selection data (what, which part) and
    the values it was chosen on."""
    return {"constraint": info.get("constraint", {}).get("label", info.get("selector", "")), "split": data[1],
            "data": data[0], "value": sel.value, "base_value": sel.base_value, "lms": sel.lms, "base_lms": sel.base_lms,
            "perplexity": sel.perplexity, "base_perplexity": sel.base_perplexity}


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
        enc_factual = None
        if trainer.config.source != "factual":  # neutral rows are informative only with the factual gradient
            enc_factual = trainer.evaluate_encoder(split="test", max_size=cfg.encoder_max_size, plot=True,
                                                   source="factual")
    templates_sel = occupation_prompts("selection", lm.kind, lm.tokenizer.mask_token)
    with stage("decoder evaluation", timings):
        sweep = functools.partial(trainer.evaluate_decoder, selector=cfg.selector, bias_prompts=templates_sel,
                                  plot=True, max_neutral=cfg.neutral_selection,
                                  max_rows_per_class=cfg.decoder_rows_per_class, refine_steps=cfg.refine_steps)
        dec = sweep(target_class="fem")
        weak = sweep(target_class="masc", increase_target_probabilities=False)
        deb = trainer.evaluate_debias(prompts=templates_sel, selector=cfg.debias_selector, plot=True,
                                      max_neutral=cfg.neutral_selection, max_rows_per_class=cfg.decoder_rows_per_class,
                                      refine_steps=cfg.refine_steps)
    rows = (f"{cfg.decoder_rows_per_class} prompts per class and {cfg.neutral_selection} neutral sentences",
            f"{dec.info.get('split')} split, first neutral sentences")
    candidates = {"strengthen fem": (dec["fem"], dec.info, rows), "weaken masc": (weak["masc_weaken"], weak.info, rows),
                  "debias": (deb["debias"], deb.info, (f"{len(templates_sel)} occupation templates and "
                                                       f"{cfg.neutral_selection} neutral sentences",
                                                       "selection half of the templates, first neutral sentences"))}
    skipped = {name: sel.reason for name, (sel, _, _) in candidates.items() if not sel.admissible}
    for name, reason in skipped.items():
        logger.warning("%s: not rewritten: %s", name, reason)
    chosen = {name: c for name, c in candidates.items() if c[0].admissible}
    mwg = trainer.get_model()
    held = held_out_corpora(cfg, trainer)
    probe = HeldOut(lm, trainer, held)
    target = TargetSpec(class_sentences(trainer)[: cfg.target_sentences], list(TOKENS.values()))
    edits: list[dict[str, Any]] = []
    with stage("probes and blast radius", timings):
        logger.info("measuring the base model on held-out prompts and text ...")
        base = probe.measure()
        for names in edit_groups({n: c[0] for n, c in chosen.items()}):
            sel, info, data = chosen[names[0]]
            name = group_name(names)
            edit = mwg.as_edit(sel.learning_rate, sel.feature_factor)
            logger.info("%s: measuring on held-out prompts and text ...", name)
            with edit.applied(lm.model):
                measured = probe.measure()
            logger.info("%s: blast radius ...", name)
            report = blast_radius(lm, edit, held, target=target)
            report.save(out / f"blast_{name.replace(' ', '_').replace('=', 'and')}.json", tokens=False)
            records = [selection_record(chosen[n][0], chosen[n][1], chosen[n][2]) for n in names]
            selection = dict(records[0], constraint=" / ".join(dict.fromkeys(r["constraint"] for r in records)))
            edits.append({"names": names, "feature_factor": sel.feature_factor, "learning_rate": sel.learning_rate,
                          "selection": selection, "selections": dict(zip(names, records)), "held": measured,
                          "blast": report})
    conclusions = conclude(base, edits, TOKENS)
    for c in conclusions:
        logger.info("%s: %s", c["rewrite"], "meets the goal" if c["met"] else "misses the goal")
    summary = {
        "config": asdict(cfg), "model": lm.name,
        "splits": {"decoder_selection": dec.info.get("split"), "debias_selection": "selection occupation templates",
                   "held-out prompts (p_C_on_D)": "test", "bias": "held-out occupation templates",
                   "perplexity, LMS": "held-out neutral English", "encoder": "test", "blast target sentences": "test"},
        "training": trainer.seed_results[0].to_dict() if trainer.seed_results else {},
        "encoder": enc.to_dict(), "encoder_factual": enc_factual.to_dict() if enc_factual is not None else None,
        "base": base, "conclusion": conclusions,
        "rewrites": {group_name(e["names"]): {**{k: v for k, v in e.items() if k != "blast"},
                                              "blast": e["blast"].to_dict(tokens=False)} for e in edits},
        "not_rewritten": skipped,
    }
    with stage("report", timings):
        report_path = write_pronoun_report(out / "report.html", trainer=trainer, enc=enc, enc_factual=enc_factual,
                                           base=base, edits=edits, conclusions=conclusions, held=held, lm=lm,
                                           skipped=skipped, debias_info=deb.info)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    summary["timings_s"] = timings
    write_json_atomic(out / "summary.json", summary)
    headline = headline_lines(conclusions, enc.correlation, timings["total"], skipped)
    return DemoResult(out_dir=out, report=report_path, headline=headline, summary=summary)


def headline_lines(conclusions: list[dict[str, Any]], r: float, seconds: float,
                   skipped: dict[str, str] | None = None) -> list[str]:
    """The last lines the CLI prints: encoder r, each rewrite's effect, cost and verdict (or why a
    rewrite was not made)."""
    lines = [f"encoder: Pearson r on held-out he/she rows = {r:+.3f}"]
    lines += [f"{name}: not rewritten: {reason}" for name, reason in (skipped or {}).items()]
    for c in conclusions:
        did = "; ".join(f"{g['metric']} {g['before']:.4f} -> {g['after']:.4f} (x{g['ratio']:.2f})" for g in c["goals"])
        langs = ", ".join(f"{k} {v:+.3f}" for k, v in c["ce_delta"].items())
        lines.append(f"{c['rewrite']}: {did}; held-out perplexity {pct(c['heldout_perplexity_change'])}; "
                     f"CE change (nats) {langs}; {'meets' if c['met'] else 'misses'} the goal")
    lines.append(f"total time {seconds / 60:.1f} min")
    return lines
