"""``gradedit demo --smoke``: a seconds-long check that a model loads, generates and scores.

It loads the model, greedily continues three prompts, reads P(' he') / P(' she') after them and
scores neutral English (cross-entropy, perplexity, LMS) with ``gradedit.metrics``. It edits nothing;
the demo itself (GRADIEND he/she end to end) is ``gradedit demo``."""

from __future__ import annotations

import logging
from typing import TypedDict

import torch
from transformers import GenerationMixin

from .. import metrics
from ..models import LanguageModel, load_model

logger = logging.getLogger(__name__)

PROMPTS = ["The capital of France is", "The doctor said that", "The nurse said that"]
NEUTRAL = [
    "The weather was cold and the streets were empty.",
    "A small boat drifted slowly across the quiet lake.",
    "The recipe calls for two cups of flour and a pinch of salt.",
]


class SmokeResult(TypedDict):
    """What :func:`smoke` measures."""

    model: str
    continuations: dict[str, str]
    p_he_she: dict[str, tuple[float, float]]
    neutral_cross_entropy: float
    neutral_perplexity: float
    neutral_lms: float


def greedy_continuation(lm: LanguageModel, prompt: str, max_new_tokens: int = 8) -> str:
    """Greedy continuation of ``prompt`` (causal LMs only)."""
    if not isinstance(lm.model, GenerationMixin):
        raise TypeError(f"{type(lm.model).__name__} cannot generate (it is no transformers GenerationMixin)")
    enc = lm.tokenize([prompt])
    with torch.no_grad():
        out = lm.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    return str(lm.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def smoke(lm: LanguageModel) -> SmokeResult:
    """Continuations, P(' he') / P(' she') after each prompt, and CE / perplexity / LMS on neutral text."""
    he, she = lm.token_id(" he"), lm.token_id(" she")
    probs = metrics.next_token_logprobs(lm, PROMPTS, [he, she]).exp()
    ce = metrics.cross_entropy(lm, NEUTRAL)
    return {
        "model": lm.name,
        "continuations": {p: greedy_continuation(lm, p) for p in PROMPTS} if lm.kind == "clm" else {},
        "p_he_she": {p: (float(probs[i, 0]), float(probs[i, 1])) for i, p in enumerate(PROMPTS)},
        "neutral_cross_entropy": ce,
        "neutral_perplexity": float(torch.tensor(ce).exp()),
        "neutral_lms": metrics.lms(lm, NEUTRAL),
    }


def smoke_lines(res: SmokeResult) -> list[str]:
    """The report of :func:`smoke` as text lines."""
    lines = [f"model: {res['model']}"]
    lines += [f"  {p!r} -> {c!r}" for p, c in res["continuations"].items()]
    lines += [f"  P(' he' | {p!r}) = {h:.4f}   P(' she') = {s:.4f}"
              for p, (h, s) in res["p_he_she"].items()]
    lines.append(f"neutral English: CE {res['neutral_cross_entropy']:.3f} nats/token, "
                 f"perplexity {res['neutral_perplexity']:.1f}, LMS {res['neutral_lms']:.3f}")
    return lines


def run_smoke(model: str) -> list[str]:
    """Body of ``gradedit demo --smoke``: load ``model``, run :func:`smoke`; the report lines (the CLI prints them)."""
    lm = load_model(model)
    res = smoke(lm)
    logger.info("smoke check of %s done", lm.name)
    return smoke_lines(res)
