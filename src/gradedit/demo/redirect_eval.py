"""Held-out measurement of many redirect edits against the base model, sharing the base passes.

For each edit, from :func:`gradedit.metrics.iter_scored` (CLM: the distribution at source position
``p`` predicts token ``p + 1``) and :func:`gradedit.metrics.kl_rows`:

- ``p_target``: mean ``P(target)`` at the fire positions of the held-out class texts (also the mean
  ``log P`` and the share of fire positions where the target is the top-1 prediction);
- ``surrounding_kl``: mean ``KL(p_base ‖ p_edit)`` at every other scored position of those texts;
- ``global_kl``: mean KL at every scored position of the unrelated held-out texts.

The base model is scored once per group of texts; each edit is applied in place (restored
bit-exactly) and scored on the same group. :func:`token_records` gives per-token values for heatmaps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..edits import WeightEdit
from ..metrics import LOGIT_BUDGET_BYTES, ScoredChunk, iter_scored, kl_rows
from ..models import LanguageModel
from .redirect_data import display_tokens

logger = logging.getLogger(__name__)

__all__ = ["Measured", "fire_logp", "measure_edits", "token_records"]


@dataclass
class Measured:
    """Held-out numbers of one model state (the base model or one edit); see the module docstring."""

    p_target: float
    logp_target: float
    top1_target: float
    surrounding_kl: float
    global_kl: float
    n_fire: int
    n_surrounding: int
    n_global: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Sums:
    def __init__(self) -> None:
        self.p = self.logp = self.top1 = self.s_kl = self.g_kl = 0.0
        self.n_f = self.n_s = self.n_g = 0

    def result(self) -> Measured:
        def mean(x: float, n: int) -> float:
            return x / n if n else float("nan")

        return Measured(mean(self.p, self.n_f), mean(self.logp, self.n_f), mean(self.top1, self.n_f),
                        mean(self.s_kl, self.n_s), mean(self.g_kl, self.n_g), self.n_f, self.n_s, self.n_g)


def _groups(lm: LanguageModel, texts: Sequence[str]) -> list[list[int]]:
    """Text indices in groups whose stored fp32 log-probs fit the logit budget."""
    cap = max(1, LOGIT_BUDGET_BYTES // (4 * lm.vocab_size))
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, t in enumerate(texts):
        n = len(lm.tokenizer(t)["input_ids"])
        if cur and used + n > cap:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    return out + ([cur] if cur else [])


def _fire_mask(chunk: ScoredChunk, fires: set[int]) -> torch.Tensor:
    src = (chunk.positions - 1).tolist()
    return torch.tensor([p in fires for p in src], dtype=torch.bool, device=chunk.logprobs.device)


def _add_fire(s: _Sums, lp: torch.Tensor, fire: torch.Tensor, tid: int) -> None:
    rows = lp[fire]
    lt = rows[:, tid].double()
    s.n_f += int(fire.sum())
    s.p += float(lt.exp().sum())
    s.logp += float(lt.sum())
    s.top1 += float((rows.argmax(-1) == tid).sum())


def _stream(lm: LanguageModel, texts: Sequence[str], fires: Sequence[set[int]] | None, edits: Sequence[WeightEdit],
            base: _Sums, sums: list[_Sums], tid: int, batch_size: int | None) -> None:
    for group in _groups(lm, texts):
        sub = [texts[i] for i in group]
        ref = list(iter_scored(lm, sub, batch_size))
        for cb in ref:
            fire = _fire_mask(cb, fires[group[cb.text_index]]) if fires is not None else None
            if fire is not None:
                _add_fire(base, cb.logprobs, fire, tid)
        for e, edit in enumerate(edits):
            s, seen = sums[e], 0
            with edit.applied(lm.model):
                for cb, ce in zip(ref, iter_scored(lm, sub, batch_size)):
                    seen += 1
                    if cb.text_index != ce.text_index or not torch.equal(cb.positions, ce.positions):
                        raise RuntimeError("base and edited passes are misaligned; this is a bug in gradedit")
                    kl = kl_rows(cb.logprobs, ce.logprobs).double()
                    if fires is None:
                        s.n_g += kl.numel()
                        s.g_kl += float(kl.sum())
                        continue
                    fire = _fire_mask(cb, fires[group[cb.text_index]])
                    _add_fire(s, ce.logprobs, fire, tid)
                    s.n_s += int((~fire).sum())
                    s.s_kl += float(kl[~fire].sum())
            if seen != len(ref):
                raise RuntimeError("base and edited passes scored different chunks; this is a bug in gradedit")


def measure_edits(lm: LanguageModel, edits: Sequence[WeightEdit], texts: Sequence[str],
                  fires: Sequence[Sequence[int]], unrelated: Sequence[str], target_id: int, *,
                  batch_size: int | None = None) -> tuple[Measured, list[Measured]]:
    """The base model's and each edit's held-out numbers (see the module docstring)."""
    if len(texts) != len(fires):
        raise ValueError(f"{len(texts)} texts but {len(fires)} fire-position lists")
    base, sums = _Sums(), [_Sums() for _ in edits]
    _stream(lm, texts, [set(f) for f in fires], edits, base, sums, target_id, batch_size)
    _stream(lm, unrelated, None, edits, base, sums, target_id, batch_size)
    out = [s.result() for s in sums]
    ref = base.result()
    ref.surrounding_kl = ref.global_kl = 0.0  # KL of the base model to itself
    if out:
        ref.n_surrounding, ref.n_global = out[0].n_surrounding, out[0].n_global
    logger.info("measured %d edits on %d fire / %d surrounding / %d unrelated positions", len(edits), ref.n_fire,
                ref.n_surrounding, ref.n_global)
    return ref, out


def fire_logp(lm: LanguageModel, texts: Sequence[str], fires: Sequence[Sequence[int]], target_id: int, *,
              batch_size: int | None = None) -> torch.Tensor:
    """``log P(target)`` at every fire position of ``texts`` with the model as it is, ``[n_fire]`` fp64
    (texts in order, positions in text order)."""
    out: dict[int, list[tuple[int, float]]] = {}
    for ch in iter_scored(lm, list(texts), batch_size):
        f = set(fires[ch.text_index])
        for p, v in zip((ch.positions - 1).tolist(), ch.logprobs[:, target_id].tolist()):
            if p in f:
                out.setdefault(ch.text_index, []).append((p, v))
    return torch.tensor([v for i in sorted(out) for _, v in sorted(out[i])], dtype=torch.float64)


def token_records(lm: LanguageModel, edit: WeightEdit, texts: Sequence[str], fires: Sequence[Sequence[int]],
                  target_id: int) -> list[dict[str, Any]]:
    """Per text, per token ``p``: the display token, whether it is a fire position, and for the
    prediction made at ``p`` (of token ``p + 1``): KL(base ‖ edit), ``Δ log P(target)`` and
    ``P(target)`` before/after (``None`` for the last token, which predicts nothing)."""
    out = []
    for ti, text in enumerate(texts):
        toks = display_tokens(lm, text)
        n = len(toks)
        rec: dict[str, Any] = {"text_index": ti, "tokens": toks, "fire": [p in set(fires[ti]) for p in range(n)],
                               "kl": [None] * n, "dlogp_target": [None] * n, "p_target_before": [None] * n,
                               "p_target_after": [None] * n}
        base = list(iter_scored(lm, [text]))
        with edit.applied(lm.model):
            after = list(iter_scored(lm, [text]))
        for cb, ce in zip(base, after):
            kl = kl_rows(cb.logprobs, ce.logprobs).tolist()
            lb, le = cb.logprobs[:, target_id].tolist(), ce.logprobs[:, target_id].tolist()
            for j, q in enumerate(cb.positions.tolist()):
                p = q - 1
                rec["kl"][p] = float(f"{kl[j]:.6g}")
                rec["dlogp_target"][p] = float(f"{le[j] - lb[j]:.6g}")
                rec["p_target_before"][p] = float(f"{torch.tensor(lb[j]).exp().item():.6g}")
                rec["p_target_after"][p] = float(f"{torch.tensor(le[j]).exp().item():.6g}")
        out.append(rec)
    return out
