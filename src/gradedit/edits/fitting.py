"""Differentiable next-token scoring at chosen positions, shared by scalar and write-vector fitting.

A :class:`Positions` object names the scored positions of some texts (causal LM: the prediction made
at source position ``p`` of ``rows[p + 1]``) and keeps each text only up to its last scored token, so
nothing after the budget is ever fed to the model. :func:`logprobs_at` returns fp32 log-probs
``[N, V]`` at exactly those positions, with gradients, computing the output head only there.
Reported numbers come from :mod:`gradedit.metrics`; these are fitting objectives only.
:class:`TokenLedger` counts every target token an edit reads, by purpose (selection / fit / calibration).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models import LanguageModel
from .hooks import head_at
from .terms import EditError

__all__ = ["Batch", "Positions", "TokenLedger", "base_logprobs", "batches", "frozen_params", "kl_rows",
           "logprobs_at", "text_tokens"]


@dataclass
class Positions:
    """Scored positions of some texts.

    Attributes:
        rows: token ids of each used text, cut after its last scored token.
        sources: per row, the positions ``p`` whose prediction of ``rows[p + 1]`` is scored.
        text_index: per row, the index of its text in the caller's list.
    """

    rows: list[list[int]]
    sources: list[list[int]]
    text_index: list[int]

    @property
    def n(self) -> int:
        return sum(len(s) for s in self.sources)

    @classmethod
    def from_texts(cls, lm: LanguageModel, texts: Sequence[str], max_tokens: int | None = None,
                   keep: Callable[[int, int], bool] | None = None) -> Positions:
        """Scored positions in text order, at most ``max_tokens`` of them.

        ``keep(text_index, source_position)`` filters positions before the budget is applied.
        """
        if lm.kind != "clm":
            raise EditError(f"{lm.name} is a masked LM; component fitting supports causal LMs only")
        rows, sources, index = [], [], []
        left = max_tokens
        for ti, text in enumerate(texts):
            if left is not None and left <= 0:
                break
            ids = list(lm.tokenizer(text)["input_ids"])
            src = [p for p in range(len(ids) - 1) if keep is None or keep(ti, p)]
            if left is not None:
                src = src[:left]
                left -= len(src)
            if src:
                rows.append(ids[: src[-1] + 2])
                sources.append(src)
                index.append(ti)
        return cls(rows, sources, index)

    def records(self, lm: LanguageModel) -> list[dict[str, Any]]:
        """One JSON-serialisable record per scored token: text index, token position, id, piece."""
        out = []
        for row, src, ti in zip(self.rows, self.sources, self.text_index):
            for p in src:
                tid = int(row[p + 1])
                out.append({"text": ti, "position": p + 1, "token_id": tid,
                            "token": str(lm.tokenizer.convert_ids_to_tokens(tid))})
        return out


def text_tokens(lm: LanguageModel, ids: Sequence[int]) -> int:
    """How many of ``ids`` are text tokens: not BOS/EOS/padding or another special token (``<unk>``
    stands for text and counts), as in the tokenizer's ``special_tokens_mask``."""
    special = set(lm.tokenizer.all_special_ids) - {lm.tokenizer.unk_token_id}
    return sum(int(i) not in special for i in ids)


class TokenLedger:
    """Target-text tokens the model read while an edit was built, by purpose (``"selection"``, ``"fit"``, ...).

    Every use reads a prefix of a text, so a use is recorded as (text, text tokens of the prefix read).
    :meth:`counts` gives per purpose the tokens read (each text counted once per purpose) and
    ``"total"``: the distinct tokens over all purposes (per text, the longest prefix any purpose read).
    """

    def __init__(self) -> None:
        self._reads: dict[str, dict[str, int]] = {}

    def add(self, purpose: str, text: str, n_tokens: int) -> None:
        """Record that ``purpose`` read the first ``n_tokens`` text tokens of ``text``."""
        if n_tokens > 0:
            seen = self._reads.setdefault(purpose, {})
            seen[text] = max(seen.get(text, 0), int(n_tokens))
        else:
            self._reads.setdefault(purpose, {})

    def add_positions(self, lm: LanguageModel, purpose: str, texts: Sequence[str], pos: Positions) -> None:
        """Record the rows of ``pos`` (prefixes of ``texts``) as read by ``purpose``."""
        self._reads.setdefault(purpose, {})
        for row, ti in zip(pos.rows, pos.text_index):
            self.add(purpose, texts[ti], text_tokens(lm, row))

    def counts(self) -> dict[str, int]:
        """``{purpose: tokens, ..., "total": distinct tokens}``."""
        out = {p: sum(d.values()) for p, d in self._reads.items()}
        union: dict[str, int] = {}
        for d in self._reads.values():
            for text, n in d.items():
                union[text] = max(union.get(text, 0), n)
        out["total"] = sum(union.values())
        return out


@dataclass
class Batch:
    """Right-padded rows with flat indices of their scored positions.

    Attributes:
        input_ids / attention_mask: ``[B, T]`` on the model's device.
        flat: ``[N]`` indices into ``B·T`` of the source positions.
        targets: ``[N]`` the scored (next) token ids.
        row: ``[N]`` which row of the :class:`Positions` each position belongs to.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    flat: torch.Tensor
    targets: torch.Tensor
    row: torch.Tensor


def batches(lm: LanguageModel, pos: Positions, batch_size: int = 16) -> list[Batch]:
    """Length-sorted batches of ``pos``'s rows (positions keep their order within each row)."""
    order = sorted(range(len(pos.rows)), key=lambda i: len(pos.rows[i]))
    pad = lm.tokenizer.pad_token_id
    out = []
    for s in range(0, len(order), batch_size):
        group = order[s : s + batch_size]
        width = max(len(pos.rows[i]) for i in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        att = torch.zeros((len(group), width), dtype=torch.long)
        flat: list[int] = []
        targets: list[int] = []
        rows: list[int] = []
        for b, i in enumerate(group):
            row = pos.rows[i]
            ids[b, : len(row)] = torch.tensor(row)
            att[b, : len(row)] = 1
            flat.extend(b * width + p for p in pos.sources[i])
            targets.extend(row[p + 1] for p in pos.sources[i])
            rows.extend([i] * len(pos.sources[i]))
        dev = lm.device
        out.append(Batch(ids.to(dev), att.to(dev), torch.tensor(flat, device=dev),
                         torch.tensor(targets, device=dev), torch.tensor(rows)))
    return out


def logprobs_at(lm: LanguageModel, batch: Batch) -> torch.Tensor:
    """fp32 log-probs ``[N, V]`` at the batch's scored positions (gradients flow)."""
    return torch.log_softmax(head_at(lm, batch.input_ids, batch.attention_mask, batch.flat).float(), dim=-1)


def base_logprobs(lm: LanguageModel, bs: Sequence[Batch]) -> list[torch.Tensor]:
    """:func:`logprobs_at` of the unedited model for each batch, without gradients."""
    with torch.no_grad():
        return [logprobs_at(lm, b) for b in bs]


def kl_rows(lp_base: torch.Tensor, lp_edit: torch.Tensor) -> torch.Tensor:
    """``KL(p_base ‖ p_edit)`` per row ``[N]`` from fp32 log-probs ``[N, V]``."""
    return (lp_base.exp() * (lp_base - lp_edit)).sum(-1)


@contextlib.contextmanager
def frozen_params(model: torch.nn.Module) -> Iterator[None]:
    """No model parameter requires grad inside the block (flags restored on exit)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
