"""Training data for the LoRA baseline: which positions are targets, which are kept close to the base model.

A training sequence is one tokenized text (causal LM). Source position ``s`` predicts token ``s + 1``
(``logits[s]`` vs ``ids[s + 1]``, the convention of :mod:`gradedit.metrics`); every such position is
either a *target* (its next-token probability is pushed down or up) or a *KL* position (its whole
distribution is kept close to the base model's). Base distributions are kept, if at all, only as a
top-k summary per position (:class:`TopKDist`), never as full-vocabulary tensors. The per-position
pieces of the objective (:func:`target_terms`, :func:`batch_kl`) live here too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...errors import TokenError
from ...models import LanguageModel
from ..terms import EditError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetData:
    """Texts to edit and which of their positions are targets.

    Attributes:
        texts: the training texts.
        target_words: ``None``: every scored position is a target (e.g. all tokens of German text).
            Otherwise single-token words such as ``" he"``: a position is a target when the token it
            predicts is one of them; the other positions of these texts get the KL term.
    """

    texts: Sequence[str]
    target_words: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.texts, str):
            raise EditError("texts must be a list of strings, got one string; wrap it in a list")
        texts = tuple(self.texts)
        if not texts:
            raise EditError("TargetData needs at least one text")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise EditError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, expected str")
        object.__setattr__(self, "texts", texts)
        if self.target_words is not None:
            if isinstance(self.target_words, str):
                raise EditError(f"target_words must be a list of words, e.g. [{self.target_words!r}]")
            words = tuple(self.target_words)
            if not words:
                raise EditError("target_words is empty; give words such as [' he'] or None for every position")
            object.__setattr__(self, "target_words", words)


@dataclass(frozen=True)
class TargetToken:
    """One scored target token used in training.

    Attributes:
        text_index: index of the text in ``TargetData.texts``.
        position: index of the predicted token in the text's tokenization (as ``TokenScores.positions``).
        token_id: the predicted token.
        token: its vocabulary string.
    """

    text_index: int
    position: int
    token_id: int
    token: str


@dataclass
class TopKDist:
    """Base distributions at ``n`` positions, summarised as the top-k tokens plus the remaining mass.

    Attributes:
        logp: base log-probabilities of the top-k tokens [n, k] (fp32).
        index: their token ids [n, k].
        log_rest: log of the base mass outside the top k [n] (``-inf`` when k covers the vocabulary).
    """

    logp: torch.Tensor
    index: torch.Tensor
    log_rest: torch.Tensor

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> TopKDist:
        """Summarise base logits [n, V] (any float dtype) by their top ``k`` (capped at V)."""
        z = logits.detach().float()
        k = min(int(k), z.shape[-1])
        lse = torch.logsumexp(z, -1)
        top, index = z.topk(k, dim=-1)
        rest = torch.logsumexp(z.scatter(-1, index, float("-inf")), -1) - lse
        return cls(logp=top - lse[:, None], index=index, log_rest=rest)

    def kl_to(self, logits: torch.Tensor) -> torch.Tensor:
        """``KL(p_base ‖ p_edit)`` per position [n] on the coarsened vocabulary (top-k tokens + one "rest").

        Differentiable in ``logits`` [n, V]. By the data-processing inequality this never exceeds the
        full-vocabulary KL, and equals it when the rest mass is zero (k = V).
        """
        z = logits.float()
        lse = torch.logsumexp(z, -1)
        lq = z.gather(-1, self.index) - lse[:, None]
        head = (self.logp.exp() * (self.logp - lq)).sum(-1)
        has_rest = torch.isfinite(self.log_rest)
        if not bool(has_rest.any()):
            return head
        lq_rest = torch.logsumexp(z.scatter(-1, self.index, float("-inf")), -1) - lse
        tail = self.log_rest.exp() * (self.log_rest - lq_rest)
        return head + torch.where(has_rest, tail, torch.zeros_like(tail))

    def __len__(self) -> int:
        return int(self.logp.shape[0])


def full_kl(base_logits: torch.Tensor, edit_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_base ‖ p_edit)`` per position over the full vocabulary: logits [n, V] -> [n] (fp32)."""
    lp = torch.log_softmax(base_logits.detach().float(), -1)
    lq = torch.log_softmax(edit_logits.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@dataclass
class TrainSequence:
    """One tokenized training text.

    Attributes:
        ids: token ids [T].
        target: whether source position ``s`` (predicting ``ids[s+1]``) is a target [T] (last is False).
        kl: whether source position ``s`` is in the KL term [T] (disjoint from ``target``).
        text_index: index into the target texts (``source="target"``) or ``other_texts``.
        source: ``"target"`` or ``"other"``.
        ref: top-k base summary at the KL positions (in order), when ``kl_topk`` is set.
    """

    ids: torch.Tensor
    target: torch.Tensor
    kl: torch.Tensor
    text_index: int
    source: str
    ref: TopKDist | None = field(default=None, repr=False)


def _token_ids(lm: LanguageModel, text: str) -> list[int]:
    return [int(i) for i in lm.tokenizer(text)["input_ids"]]


def build_sequences(lm: LanguageModel, data: TargetData, other_texts: Sequence[str] | None,
                    max_target_tokens: int | None) -> tuple[list[TrainSequence], list[TrainSequence], list[TargetToken]]:
    """Tokenize the target and other texts and mark target / KL positions.

    ``max_target_tokens`` keeps the first that many target positions in text order: the text where the
    cap is reached is cut right after its last kept target token and later texts are dropped.

    Returns:
        (target sequences, other sequences, the target tokens used in order).

    Raises:
        EditError: a text is too short to score, a target word is not one token, or no target is found.
    """
    wanted: set[int] | None = None
    if data.target_words is not None:
        try:
            wanted = set(lm.token_ids(data.target_words))
        except TokenError as err:
            raise EditError(f"target words must be single tokens: {err}") from None
    seqs: list[TrainSequence] = []
    used: list[TargetToken] = []
    for ti, text in enumerate(data.texts):
        if max_target_tokens is not None and len(used) >= max_target_tokens:
            break
        ids = _token_ids(lm, text)
        if len(ids) < 2:
            logger.warning("target text %d has fewer than two tokens; skipped", ti)
            continue
        nxt = torch.tensor(ids[1:])
        is_target = torch.ones(len(ids) - 1, dtype=torch.bool)
        if wanted is not None:
            is_target = torch.tensor([i in wanted for i in ids[1:]], dtype=torch.bool)
        hits = is_target.nonzero().squeeze(-1).tolist()
        if max_target_tokens is not None and len(used) + len(hits) > max_target_tokens:
            hits = hits[: max_target_tokens - len(used)]
            cut = hits[-1] + 2  # keep the last kept target's predicted token
            ids, nxt, is_target = ids[:cut], nxt[: cut - 1], is_target[: cut - 1]
        used.extend(TargetToken(ti, s + 1, int(nxt[s]), str(lm.tokenizer.convert_ids_to_tokens(int(nxt[s]))))
                    for s in hits)
        target = torch.cat([is_target, torch.zeros(1, dtype=torch.bool)])
        kl = torch.cat([~is_target, torch.zeros(1, dtype=torch.bool)])
        seqs.append(TrainSequence(torch.tensor(ids), target, kl, ti, "target"))
    if not used:
        what = f"none of the target words {list(data.target_words)} occurs" if data.target_words else "no text is long enough"
        raise EditError(f"no target position in the training texts: {what}; give other texts or target words")
    others: list[TrainSequence] = []
    for oi, text in enumerate(other_texts or ()):
        ids = _token_ids(lm, text)
        if len(ids) < 2:
            continue
        mask = torch.cat([torch.ones(len(ids) - 1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)])
        others.append(TrainSequence(torch.tensor(ids), torch.zeros_like(mask), mask, oi, "other"))
    logger.info("LoRA data: %d target tokens in %d texts, %d other texts", len(used), len(seqs), len(others))
    return seqs, others, used


@dataclass
class Batch:
    """A right-padded batch: ids / attention mask [B, T]; target and KL masks over source positions [B, T]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor
    kl: torch.Tensor
    next_ids: torch.Tensor
    refs: list[TopKDist | None]


def collate(seqs: Sequence[TrainSequence], pad_id: int, device: torch.device) -> Batch:
    """Pad ``seqs`` on the right; ``next_ids[b, s] = ids[b, s + 1]`` (pad after the end)."""
    width = max(int(s.ids.numel()) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    tgt = torch.zeros((len(seqs), width), dtype=torch.bool)
    kl = torch.zeros((len(seqs), width), dtype=torch.bool)
    for b, s in enumerate(seqs):
        n = int(s.ids.numel())
        ids[b, :n], att[b, :n], tgt[b, :n], kl[b, :n] = s.ids, 1, s.target, s.kl
    nxt = torch.cat([ids[:, 1:], torch.full((len(seqs), 1), pad_id, dtype=torch.long)], 1)
    return Batch(ids.to(device), att.to(device), tgt.to(device), kl.to(device), nxt.to(device),
                 [s.ref for s in seqs])


class BatchCycler:
    """Endless batches of ``batch_size`` sequences: a fresh permutation (local generator) each epoch."""

    def __init__(self, seqs: Sequence[TrainSequence], batch_size: int, generator: torch.Generator) -> None:
        self.seqs, self.batch_size, self.gen = list(seqs), batch_size, generator
        self._order: list[int] = []

    def next(self) -> list[TrainSequence]:
        if not self.seqs:
            return []
        if len(self.seqs) <= self.batch_size:
            return list(self.seqs)
        out: list[TrainSequence] = []
        while len(out) < self.batch_size:
            if not self._order:
                self._order = torch.randperm(len(self.seqs), generator=self.gen).tolist()
            out.append(self.seqs[self._order.pop()])
        return out


def target_terms(z: torch.Tensor, y: torch.Tensor, remove: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position loss and CE at targets: logits [n, V], next tokens [n] -> ([n], [n])."""
    lse = torch.logsumexp(z, -1)
    ce = lse - z.gather(-1, y[:, None]).squeeze(-1)
    if not remove:
        return ce, ce
    log_not_y = torch.logsumexp(z.scatter(-1, y[:, None], float("-inf")), -1) - lse  # log(1 - p_y)
    return -log_not_y, ce


def compute_refs(lm: LanguageModel, seqs: list[TrainSequence], k: int, batch_size: int) -> None:
    """Attach a :class:`TopKDist` of the base model at each sequence's KL positions (no grad)."""
    pad = int(lm.tokenizer.pad_token_id)
    for s in range(0, len(seqs), batch_size):
        group = seqs[s : s + batch_size]
        batch = collate(group, pad, lm.device)
        with torch.no_grad():
            logits = lm.forward_logits(batch.input_ids, batch.attention_mask)
        for b, seq in enumerate(group):
            seq.ref = TopKDist.from_logits(logits[b, batch.kl[b]], k)


def batch_kl(logits: torch.Tensor, batch: Batch, base_logits: torch.Tensor | None) -> torch.Tensor:
    """Per-position KL at the batch's KL positions (row-major order) -> [n_kl]."""
    if base_logits is not None:
        return full_kl(base_logits[batch.kl], logits[batch.kl])
    parts = [ref.kl_to(logits[b, batch.kl[b]]) for b, ref in enumerate(batch.refs) if ref is not None and len(ref)]
    return torch.cat(parts) if parts else logits.new_zeros(0)
