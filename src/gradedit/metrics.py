"""The ONE implementation of token log-probs, cross-entropy, perplexity, LMS and KL(p_base ‖ p_edit).

Scored tokens:
- causal LM: every token that has a left context in its text; ``logits[t]`` is scored against
  token ``t+1`` (the first token of a text is never scored, it has nothing to be predicted from);
- masked LM: every non-special token, masked one at a time (pseudo-log-likelihood); special tokens
  (``[CLS]``, ``[SEP]``, padding) are never masked or scored.

Batches are padded (either side) with explicit ``position_ids`` from the attention mask, so batched
numbers equal one-by-one numbers. Log-softmax runs in fp32 and is chunked over positions; batches are
sized by a token budget so a 262k vocabulary fits in memory. Forwards run in ``lm.inference()``: no
gradients, and the model's bf16/fp16 autocast when one is set (logits come back fp32).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ._progress import progress
from .models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = [
    "ScoredChunk",
    "TokenScores",
    "iter_scored",
    "kl_rows",
    "token_logprobs",
    "cross_entropy",
    "perplexity",
    "lms",
    "lm_scores",
    "full_logprobs",
    "kl_divergence",
    "next_token_logprobs",
]

#: bytes of fp32 logits one forward may produce (batch x length x vocab x 4)
LOGIT_BUDGET_BYTES = 512 * 2**20
#: positions per log-softmax chunk
CHUNK_POSITIONS = 256


@dataclass
class TokenScores:
    """One float per scored token of each text.

    Attributes:
        values: per text, a float32 tensor [n_scored_i].
        token_ids: per text, the scored (predicted) token ids [n_scored_i].
        positions: per text, the index of each scored token in the text's tokenization [n_scored_i].
    """

    values: list[torch.Tensor]
    token_ids: list[torch.Tensor]
    positions: list[torch.Tensor]

    def flat(self) -> torch.Tensor:
        """All values concatenated, [sum_i n_scored_i]."""
        return torch.cat(self.values) if self.values else torch.zeros(0)

    @property
    def n_tokens(self) -> int:
        return int(sum(v.numel() for v in self.values))

    def mean(self) -> float:
        """Token-weighted mean over all texts (``nan`` when nothing was scored)."""
        flat = self.flat()
        return float(flat.double().mean()) if flat.numel() else float("nan")

    def per_text_mean(self) -> list[float]:
        return [float(v.double().mean()) if v.numel() else float("nan") for v in self.values]


@dataclass
class ScoredChunk:
    """Scored positions of one text, one chunk: fp32 log-probs [n, V], targets [n], positions [n]."""

    text_index: int
    logprobs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor


def _as_list(texts: Sequence[str] | str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts


def _batches_by_budget(lengths: Sequence[int], vocab: int, max_batch: int | None) -> Iterator[list[int]]:
    """Group item indices (in order) so that padded batch tokens x vocab x 4 stays in budget."""
    cap_tokens = max(1, LOGIT_BUDGET_BYTES // (4 * vocab))
    batch: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        new_longest = max(longest, n)
        too_big = batch and (new_longest * (len(batch) + 1) > cap_tokens)
        too_many = max_batch is not None and len(batch) >= max_batch
        if too_big or too_many:
            yield batch
            batch, new_longest = [], n
        batch.append(i)
        longest = new_longest
    if batch:
        yield batch


def _length_sorted_batches(lengths: Sequence[int], vocab: int, max_batch: int | None) -> list[list[int]]:
    """Budgeted batches of item indices, items sorted by length first so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [[order[j] for j in g] for g in _batches_by_budget([lengths[i] for i in order], vocab, max_batch)]


def _log_softmax_chunks(logits: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """fp32 log-softmax of logits [n, V], chunked over rows: yields (start, [m, V])."""
    for s in range(0, logits.shape[0], CHUNK_POSITIONS):
        yield s, torch.log_softmax(logits[s : s + CHUNK_POSITIONS].float(), dim=-1)


def _iter_clm(lm: LanguageModel, texts: list[str], batch_size: int | None, padding_side: str,
              desc: str | None) -> Iterator[ScoredChunk]:
    lengths = [len(lm.tokenizer(t)["input_ids"]) for t in texts]
    groups = _length_sorted_batches(lengths, lm.vocab_size, batch_size)
    for group in progress(groups, desc=desc, disable=desc is None or len(groups) < 2, leave=False):
        enc = lm.tokenize([texts[i] for i in group], padding_side=padding_side)
        with lm.inference():  # no gradients; the model's autocast if set (fp32 logits back)
            logits = lm.forward_logits(enc["input_ids"], enc["attention_mask"])
        for b, ti in enumerate(group):
            idx = enc["attention_mask"][b].nonzero().squeeze(-1)
            if idx.numel() < 2:
                continue
            src, tgt = idx[:-1], idx[1:]
            targets = enc["input_ids"][b, tgt]
            for s, lp in _log_softmax_chunks(logits[b, src]):
                m = lp.shape[0]
                yield ScoredChunk(ti, lp, targets[s : s + m], tgt[s : s + m])


def _iter_mlm(lm: LanguageModel, texts: list[str], batch_size: int | None, padding_side: str,
              desc: str | None) -> Iterator[ScoredChunk]:
    # one masked copy per scorable (non-special) token of each text
    items: list[tuple[int, list[int], int]] = []  # (text index, ids, masked position)
    for ti, t in enumerate(texts):
        enc = lm.tokenizer(t, return_special_tokens_mask=True)
        text_ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
        items.extend((ti, text_ids, p) for p, sp in enumerate(special) if not sp)
    groups = _length_sorted_batches([len(it[1]) for it in items], lm.vocab_size, batch_size)
    pad, mask_id = lm.tokenizer.pad_token_id, lm.tokenizer.mask_token_id
    for group in progress(groups, desc=desc, disable=desc is None or len(groups) < 2, leave=False):
        width = max(len(items[i][1]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        att = torch.zeros((len(group), width), dtype=torch.long)
        offsets = []
        for b, i in enumerate(group):
            row = items[i][1]
            off = width - len(row) if padding_side == "left" else 0
            ids[b, off : off + len(row)] = torch.tensor(row)
            att[b, off : off + len(row)] = 1
            offsets.append(off)
        targets = torch.tensor([items[i][1][items[i][2]] for i in group])
        where = torch.tensor([off + items[i][2] for off, i in zip(offsets, group)])
        ids[torch.arange(len(group)), where] = mask_id
        with lm.inference():  # no gradients; the model's autocast if set (fp32 logits back)
            logits = lm.forward_logits(ids.to(lm.device), att.to(lm.device))
        picked = logits[torch.arange(len(group)), where.to(lm.device)]  # [G, V]
        for b, i in enumerate(group):
            lp = torch.log_softmax(picked[b : b + 1].float(), dim=-1)
            yield ScoredChunk(items[i][0], lp, targets[b : b + 1].to(lm.device), torch.tensor([items[i][2]]))


def iter_scored(lm: LanguageModel, texts: Sequence[str] | str, batch_size: int | None = None,
                padding_side: str = "right", desc: str | None = None) -> Iterator[ScoredChunk]:
    """The scoring stream every metric is built on: one :class:`ScoredChunk` per text and chunk of
    positions (CLM: each position predicts the next token; MLM: each token is masked in turn).
    Batches are length-sorted and sized so one chunk's fp32 log-probs stay under the logit budget."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    texts = _as_list(texts)
    it = _iter_clm if lm.kind == "clm" else _iter_mlm
    # no_grad is entered around each forward only: a generator suspended inside a no_grad block
    # would leave gradients disabled in the caller's code between (and after unfinished) iterations
    yield from it(lm, texts, batch_size, padding_side, desc)


def _collect(n_texts: int, parts: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]) -> TokenScores:
    values: list[list[torch.Tensor]] = [[] for _ in range(n_texts)]
    tids: list[list[torch.Tensor]] = [[] for _ in range(n_texts)]
    poss: list[list[torch.Tensor]] = [[] for _ in range(n_texts)]
    for ti, v, t, p in parts:
        values[ti].append(v.detach().float().cpu())
        tids[ti].append(t.detach().cpu())
        poss[ti].append(p.detach().cpu())

    def cat(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(xs) if xs else torch.zeros(0, dtype=dtype)

    return TokenScores(
        values=[cat(v, torch.float32) for v in values],
        token_ids=[cat(t, torch.long) for t in tids],
        positions=[cat(p, torch.long) for p in poss],
    )


def token_logprobs(lm: LanguageModel, texts: Sequence[str] | str, *, batch_size: int | None = None,
                   padding_side: str = "right") -> TokenScores:
    """log p(token) for every scored token of every text (see the module docstring)."""
    texts = _as_list(texts)
    parts = [
        (c.text_index, c.logprobs.gather(-1, c.targets[:, None]).squeeze(-1), c.targets, c.positions)
        for c in iter_scored(lm, texts, batch_size, padding_side, desc="log-probs")
    ]
    return _collect(len(texts), parts)


def cross_entropy(lm: LanguageModel, texts: Sequence[str] | str, *, batch_size: int | None = None,
                  padding_side: str = "right") -> float:
    """Mean NLL (nats) per scored token over all texts, token-weighted like HF's ``labels=`` loss."""
    scores = token_logprobs(lm, texts, batch_size=batch_size, padding_side=padding_side)
    if scores.n_tokens == 0:
        raise ValueError("no token could be scored: every text is shorter than two tokens")
    return -scores.mean()


def perplexity(lm: LanguageModel, texts: Sequence[str] | str, *, batch_size: int | None = None,
               padding_side: str = "right") -> float:
    """``exp(cross_entropy)``."""
    return math.exp(cross_entropy(lm, texts, batch_size=batch_size, padding_side=padding_side))


def lms(lm: LanguageModel, texts: Sequence[str] | str, *, batch_size: int | None = None) -> float:
    """Language-modelling score: top-1 accuracy on the scored tokens (CLM: the next token; MLM:
    each non-special token masked in turn). 1.0 is perfect; a sweep keeps it near the base value."""
    return lm_scores(lm, texts, batch_size=batch_size)["lms"]


def lm_scores(lm: LanguageModel, texts: Sequence[str] | str, *, batch_size: int | None = None) -> dict[str, float]:
    """LMS, cross-entropy and perplexity from ONE pass over the texts (same scored tokens as each
    function alone): ``{"lms", "cross_entropy", "perplexity", "tokens"}``."""
    hits, total, nll = 0, 0, 0.0
    for c in iter_scored(lm, texts, batch_size, desc="LMS"):
        hits += int((c.logprobs.argmax(-1) == c.targets).sum())
        nll -= float(c.logprobs.gather(-1, c.targets[:, None]).double().sum())
        total += c.targets.numel()
    if total == 0:
        raise ValueError("no token could be scored for LMS")
    return {"lms": hits / total, "cross_entropy": nll / total, "perplexity": math.exp(nll / total), "tokens": total}


def full_logprobs(lm: LanguageModel, texts: Sequence[str] | str, *, batch_size: int | None = None) -> list[torch.Tensor]:
    """Full fp32 log-distributions at every scored position: per text [n_scored_i, V] on CPU.

    Keep these as the base reference when an edit is applied to the same model in place
    (``kl_divergence(ref, lm, texts)``). Memory: 4·V bytes per scored token.
    """
    texts = _as_list(texts)
    per_text: list[list[torch.Tensor]] = [[] for _ in texts]
    for c in iter_scored(lm, texts, batch_size, desc="reference"):
        per_text[c.text_index].append(c.logprobs.cpu())
    return [torch.cat(p) if p else torch.zeros(0, lm.vocab_size) for p in per_text]


def kl_rows(lp_base: torch.Tensor, lp_edit: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_edit) per row of fp32 log-probs [n, V] -> [n], clamped at 0 against rounding."""
    kl = (lp_base.exp() * (lp_base - lp_edit)).sum(-1)
    return kl.clamp_min(0.0)


def kl_divergence(base: LanguageModel | Sequence[torch.Tensor], edit: LanguageModel | Sequence[torch.Tensor],
                  texts: Sequence[str] | str, *, batch_size: int | None = None) -> TokenScores:
    """Per-token ``KL(p_base ‖ p_edit)`` in nats at every scored position.

    ``base`` and ``edit`` are each a ``LanguageModel`` or the output of ``full_logprobs`` on the same
    texts. Two models must share a tokenizer. ``.mean()`` of the result is the token-weighted mean KL.
    """
    texts = _as_list(texts)
    if not isinstance(base, LanguageModel) and not isinstance(edit, LanguageModel):
        return _kl_from_refs(list(base), list(edit), texts)
    lm_b = base if isinstance(base, LanguageModel) else None
    lm_e = edit if isinstance(edit, LanguageModel) else None
    driver = lm_e if lm_e is not None else lm_b
    assert driver is not None
    other = base if lm_e is not None else edit
    parts = []
    if isinstance(other, LanguageModel):
        if other.tokenizer.get_vocab() != driver.tokenizer.get_vocab():
            raise ValueError("base and edit models have different tokenizers; KL needs one vocabulary")
        pairs = zip(iter_scored(other, texts, batch_size), iter_scored(driver, texts, batch_size))
        for co, cd in pairs:
            lb, le = (co.logprobs, cd.logprobs) if lm_e is not None else (cd.logprobs, co.logprobs)
            parts.append((cd.text_index, kl_rows(lb, le.to(lb.device)), cd.targets, cd.positions))
        return _collect(len(texts), parts)
    refs = list(other)
    if len(refs) != len(texts):
        raise ValueError(f"got log-probs for {len(refs)} texts but {len(texts)} texts")
    used = [0] * len(texts)
    for c in iter_scored(driver, texts, batch_size, desc="KL"):
        ref = refs[c.text_index]
        n = c.logprobs.shape[0]
        r = ref[used[c.text_index] : used[c.text_index] + n].to(c.logprobs.device, torch.float32)
        if r.shape != c.logprobs.shape:
            raise ValueError("reference log-probs do not match these texts (were they computed on other texts?)")
        used[c.text_index] += n
        lb, le = (r, c.logprobs) if lm_e is not None else (c.logprobs, r)
        parts.append((c.text_index, kl_rows(lb, le), c.targets, c.positions))
    return _collect(len(texts), parts)


def _kl_from_refs(base: list[torch.Tensor], edit: list[torch.Tensor], texts: list[str]) -> TokenScores:
    if not (len(base) == len(edit) == len(texts)):
        raise ValueError("base, edit and texts must have the same length")
    values = []
    for b, e in zip(base, edit):
        if b.shape != e.shape:
            raise ValueError(f"log-prob shapes differ: {tuple(b.shape)} vs {tuple(e.shape)}")
        values.append(torch.cat([kl_rows(b[s : s + CHUNK_POSITIONS].float(), e[s : s + CHUNK_POSITIONS].float())
                                 for s in range(0, b.shape[0], CHUNK_POSITIONS)]) if b.shape[0] else torch.zeros(0))
    empty = [torch.zeros(0, dtype=torch.long) for _ in texts]
    return TokenScores(values=values, token_ids=empty, positions=list(empty))


def next_token_logprobs(lm: LanguageModel, prompts: Sequence[str] | str, token_ids: Sequence[int],
                        *, batch_size: int = 16) -> torch.Tensor:
    """log p(candidate) at the prediction point of each prompt -> [n_prompts, n_candidates].

    Causal LM: the distribution after the prompt's last token (a trailing space is stripped, since
    BPE tokenizers would read it as a token of its own). Masked LM: the prompt must contain exactly
    one mask token (``lm.tokenizer.mask_token``); the distribution at that position.
    """
    prompts = _as_list(prompts)
    cand = torch.tensor(list(token_ids), dtype=torch.long)
    out = torch.zeros(len(prompts), len(cand))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    with lm.inference():
        for s in range(0, len(prompts), batch_size):
            idx = order[s : s + batch_size]
            picked = lm.prediction_logits([prompts[i] for i in idx]).float().log_softmax(-1)
            out[idx] = picked[:, cand.to(picked.device)].cpu()
    return out
