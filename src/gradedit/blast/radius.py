"""``blast_radius``: what an edit does on its target and everywhere else, next to a random control."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..edits import EditError, WeightEdit
from ..errors import ConfigError, DataError
from ..models import LanguageModel
from .control import random_like
from .report import TARGET_KEY, BlastReport, TargetSpec
from .stream import CorpusTotals, EditTotals, compare_stream

logger = logging.getLogger(__name__)

Target = str | TargetSpec | None


@dataclass
class EditResult:
    """Means for one edit over every corpus (see ``BlastReport`` for the meaning of each field)."""

    ce_edit: dict[str, float]
    ce_delta: dict[str, float]
    kl: dict[str, float]
    on_target: dict[str, Any] | None
    global_kl: float | None
    surrounding_kl: float | None


def check_corpora(corpora: Mapping[str, Sequence[str]], target: Target) -> dict[str, list[str]]:
    """Validated copy of ``corpora``.

    Raises:
        DataError: no corpora, an empty corpus or one of only blank texts (a ``ValueError``).
        TypeError: a corpus given as one string, or a text that is not a string.
    """
    if not isinstance(corpora, Mapping) or not corpora:
        raise DataError("corpora must be a non-empty mapping such as {'en': [...], 'de': [...]}; give at least one "
                        "corpus of texts")
    out: dict[str, list[str]] = {}
    for key, texts in corpora.items():
        if isinstance(texts, str):
            raise TypeError(f"corpora[{key!r}] is a single string; give a list of texts")
        texts = list(texts)
        if not texts:
            raise DataError(f"corpus {key!r} is empty; give it at least one text or leave it out")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"corpora[{key!r}][{bad}] is {type(texts[bad]).__name__}, expected str")
        if not any(t.strip() for t in texts):
            raise DataError(f"corpus {key!r} holds only blank texts ({len(texts)}); give it texts with words in them "
                            "or leave it out")
        out[str(key)] = texts
    if TARGET_KEY in out:
        raise ConfigError(f"{TARGET_KEY!r} is reserved for the TargetSpec texts; rename that corpus")
    if isinstance(target, str) and target not in out:
        raise ConfigError(f"target {target!r} is not a corpus key; known keys: {sorted(out)} "
                         "(or pass a TargetSpec(texts, tokens))")
    if target is not None and not isinstance(target, (str, TargetSpec)):
        raise TypeError(f"target must be a corpus key, a TargetSpec or None, got {type(target).__name__}")
    return out


def target_ids(lm: LanguageModel, spec: TargetSpec) -> torch.Tensor:
    """Token ids [m] of a ``TargetSpec``'s tokens (words via ``lm.token_id``, which raises ``TokenError``)."""
    ids = []
    for tok in spec.tokens:
        if isinstance(tok, bool) or not isinstance(tok, (str, int)):
            raise TypeError(f"target tokens are words or ids, got {tok!r}")
        if isinstance(tok, int):
            if not 0 <= tok < lm.vocab_size:
                raise ConfigError(f"target token id {tok} is outside the vocabulary [0, {lm.vocab_size})")
            ids.append(tok)
        else:
            ids.append(lm.token_id(tok))
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


def _mean(total: float, n: int) -> float:
    return total / n if n else float("nan")


def by_token(t: EditTotals, names: Mapping[int, str]) -> dict[str, dict[str, Any]]:
    """Means per target token (keyed by its string): at the positions whose actual token it is, mean
    log P / P of itself before and after, and mean P of every other target token (``p_other``)."""
    out: dict[str, dict[str, Any]] = {}
    for tid, d in sorted(t.by_token.items()):
        n = d["n"]
        out[names.get(tid, str(tid))] = {
            "n_positions": n, "logp_before": d["logp_before"] / n, "logp_after": d["logp_after"] / n,
            "p_before": d["p_before"] / n, "p_after": d["p_after"] / n,
            "p_other": {names.get(u, str(u)): {"before": b / n, "after": a / n} for u, (b, a) in d["p_other"].items()}}
    return out


def _result(k: int, totals: dict[str, CorpusTotals], target: Target,
            names: Mapping[int, str] | None = None) -> EditResult:
    """Edit ``k``'s means from the per-corpus totals."""
    langs = [key for key in totals if key != TARGET_KEY]
    ce_edit = {g: _mean(totals[g].edits[k].nll, totals[g].n) for g in langs}
    ce_base = {g: _mean(totals[g].nll_base, totals[g].n) for g in langs}
    ce_delta = {g: ce_edit[g] - ce_base[g] for g in langs}
    kl = {g: _mean(totals[g].edits[k].kl, totals[g].n) for g in langs}
    off = [g for g in langs if g != target]
    n_off = sum(totals[g].n for g in off)
    global_kl = _mean(sum(totals[g].edits[k].kl for g in off), n_off) if n_off else None
    on_target: dict[str, Any] | None = None
    surrounding = None
    if isinstance(target, str):
        on_target = {"metric": f"cross-entropy on {target} (nats)", "before": ce_base[target],
                     "after": ce_edit[target], "delta": ce_delta[target]}
    elif isinstance(target, TargetSpec):
        t: EditTotals = totals[TARGET_KEY].edits[k]
        before, after = _mean(t.t_logp_before, t.t_n), _mean(t.t_logp_after, t.t_n)
        on_target = {"metric": "mean log P(target token) at target positions (nats)", "before": before,
                     "after": after, "delta": after - before, "p_before": _mean(t.t_p_before, t.t_n),
                     "p_after": _mean(t.t_p_after, t.t_n), "n_positions": t.t_n,
                     "by_token": by_token(t, names or {})}
        surrounding = _mean(t.s_kl, t.s_n) if t.s_n else None
    return EditResult(ce_edit, ce_delta, kl, on_target, global_kl, surrounding)


def evaluate_edits(lm: LanguageModel, edits: Sequence[WeightEdit], corpora: Mapping[str, Sequence[str]],
                   target: Target = None, *, keep_tokens: bool = False, topk: int = 5,
                   batch_size: int | None = None) -> tuple[dict[str, CorpusTotals], list[EditResult]]:
    """Every edit against the base model on every corpus (and the ``TargetSpec`` texts), sharing the
    base passes. Returns the raw totals per corpus and one ``EditResult`` per edit."""
    texts = check_corpora(corpora, target)
    if topk < 1:
        raise ConfigError(f"topk must be >= 1, got {topk}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 or None, got {batch_size}")
    if not edits:
        raise ConfigError("no edits to evaluate; give at least one WeightEdit")
    tids = None
    if isinstance(target, TargetSpec):
        tids = target_ids(lm, target)
        texts[TARGET_KEY] = list(target.texts)
    for e in edits:
        if not isinstance(e, WeightEdit):
            raise TypeError(f"expected a WeightEdit, got {type(e).__name__}")
        e._bind(lm.model)  # fail on a mismatched edit before any forward pass
    totals: dict[str, CorpusTotals] = {}
    for i, (key, ts) in enumerate(texts.items()):
        logger.info("blast radius: corpus %d/%d %r (%d texts, %d edit(s)) ...", i + 1, len(texts), key, len(ts),
                    len(edits))
        t0 = time.time()
        totals[key] = compare_stream(lm, ts, edits, target_ids=tids if key == TARGET_KEY else None,
                                     keep_tokens=keep_tokens, topk=topk, batch_size=batch_size,
                                     desc=f"blast {key}")
        logger.info("blast radius: corpus %r done in %.1f s", key, time.time() - t0)
        if totals[key].n == 0:
            raise DataError(f"corpus {key!r}: no token could be scored (every text is shorter than two "
                            "tokens); give longer texts")
    if isinstance(target, TargetSpec) and totals[TARGET_KEY].edits[0].t_n == 0:
        raise DataError(f"no scored token of the TargetSpec texts is one of {list(target.tokens)}; "
                         "give texts that contain the target tokens (CLM: not as the first token)")
    names: dict[int, str] = {}
    if isinstance(target, TargetSpec):
        for tok in target.tokens:
            tid = tok if isinstance(tok, int) else lm.token_id(tok)
            names[tid] = tok if isinstance(tok, str) else str(lm.tokenizer.decode([tok]))
    return totals, [_result(k, totals, target, names) for k in range(len(edits))]


def blast_radius(lm: LanguageModel, edit: WeightEdit, corpora: Mapping[str, Sequence[str]],
                 target: Target = None, *, control: bool = True, seed: int = 0, topk: int = 5,
                 keep_tokens: bool = True, batch_size: int | None = None) -> BlastReport:
    """Measure an edit's effect on its target and on every corpus, next to a random control edit.

    The base model is scored first on each batch, then the edit is applied with
    ``edit.applied(lm.model)`` (restored bit-exactly) and compared position by position:
    cross-entropy change and ``KL(p_base ‖ p_edit)`` over the full vocabulary.

    Args:
        corpora: ``{key: texts}``, e.g. ``{"en": [...], "de": [...]}``.
        target: a corpus key (on-target metric: its CE change), a ``TargetSpec`` (change of log P of
            the target tokens at target positions) or ``None``.
        control: also measure ``random_like(edit, lm.model, seed)``.
        topk: k of the per-token top-k lists; ``keep_tokens`` keeps per-token values for heatmaps.
        batch_size: max texts per forward pass (default: by the logit memory budget).

    Raises:
        DataError: no corpora, an empty or blank corpus, or one with no scorable token.
        ValueError/TypeError: unknown target key, malformed input.
        TokenError: a target word is not one token.
        EditError: the edit does not fit the model.
    """
    if not isinstance(edit, WeightEdit):
        raise EditError(f"blast_radius needs a WeightEdit, got {type(edit).__name__}")
    edits = [edit] + ([random_like(edit, lm.model, seed)] if control else [])
    totals, results = evaluate_edits(lm, edits, corpora, target, keep_tokens=keep_tokens, topk=topk,
                                     batch_size=batch_size)
    res = results[0]
    langs = [k for k in totals if k != TARGET_KEY]
    ce_base = {g: _mean(totals[g].nll_base, totals[g].n) for g in langs}
    ctl = results[1] if control else None
    report = BlastReport(
        model=lm.name, edit=repr(edit), edit_norm=edit.norm(), langs=langs,
        n_tokens={g: totals[g].n for g in langs}, ce_base=ce_base, ce_edit=res.ce_edit,
        ce_delta=res.ce_delta, kl=res.kl,
        target=target if isinstance(target, str) else ("spec" if target is not None else None),
        on_target=res.on_target, global_kl=res.global_kl, surrounding_kl=res.surrounding_kl,
        control_ce_delta=ctl.ce_delta if ctl else None, control_kl=ctl.kl if ctl else None,
        control_on_target=ctl.on_target if ctl else None, control_global_kl=ctl.global_kl if ctl else None,
        control_surrounding_kl=ctl.surrounding_kl if ctl else None, seed=seed, topk=topk,
        tokens={k: v.tokens for k, v in totals.items() if v.tokens is not None} if keep_tokens else None,
    )
    logger.info("%s", report.summary())
    return report
