"""Streaming comparison of a base model with several in-place edits, one batch of texts at a time.

For each group of texts the base model's log-distributions are computed once, then each edit is
applied (``edit.applied``, restored bit-exactly), scored on the same group and compared position by
position. Only one group's full-vocabulary tensors are alive at a time (a 262k vocabulary fits), and
a sweep over many edits shares the base pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .. import dist
from .._progress import progress
from ..edits import WeightEdit
from ..metrics import LOGIT_BUDGET_BYTES, ScoredChunk, iter_scored, kl_rows
from ..models import LanguageModel

logger = logging.getLogger(__name__)

#: positions per KL / top-k step (a [ROWS, V] fp32 temporary is 64 MiB for a 262k vocabulary)
ROWS = 64
#: a progress line at least this often (seconds) while a corpus is scored
LOG_EVERY_S = 20.0


@dataclass
class EditTotals:
    """Sums over the scored tokens of one corpus for one edit (means are taken by the caller).

    ``nll``/``kl``: over all positions. ``t_*``: at target positions (target ids given): count,
    Σ log P before/after, Σ P before/after of the actual (target) token. ``s_*``: KL at the other
    positions (surrounding context).
    """

    nll: float = 0.0
    kl: float = 0.0
    t_n: int = 0
    t_logp_before: float = 0.0
    t_logp_after: float = 0.0
    t_p_before: float = 0.0
    t_p_after: float = 0.0
    s_n: int = 0
    s_kl: float = 0.0
    #: per target id t: {"n", "logp_before", "logp_after", "p_before", "p_after"} at positions whose token
    #: is t, and "p_other": {u: [Σ P(u) before, Σ P(u) after]} for every other target id u
    by_token: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CorpusTotals:
    """One corpus: scored-token count, base NLL sum, per-edit totals, optional per-token records."""

    n: int = 0
    nll_base: float = 0.0
    edits: list[EditTotals] = field(default_factory=list)
    tokens: list[dict[str, Any]] | None = None


def _groups(lm: LanguageModel, texts: Sequence[str], batch_size: int | None) -> list[list[int]]:
    """Text indices in groups whose stored base log-probs (tokens x V x 4 bytes) fit the logit budget."""
    lengths = [len(lm.tokenizer(t)["input_ids"]) for t in texts]
    cap = max(1, LOGIT_BUDGET_BYTES // (4 * lm.vocab_size))
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        if cur and (used + lengths[i] > cap or (batch_size is not None and len(cur) >= batch_size)):
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        groups.append(cur)
    return groups


class _Decoder:
    """Token id -> display string (each id decoded alone; a SentencePiece word-start marker ``▁``
    becomes a leading space, which decoding one id would drop), cached."""

    def __init__(self, lm: LanguageModel) -> None:
        self.tok = lm.tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        cached = self.cache.get(tid)
        if cached is not None:
            return cached
        s = self.tok.decode([tid])
        if not isinstance(s, str):  # decode() returns a list only for a batch of sequences
            raise TypeError(f"tokenizer.decode([{tid}]) returned {type(s).__name__}, not a string")
        piece = self.tok.convert_ids_to_tokens(tid)
        if isinstance(piece, str) and piece.startswith("\u2581") and not s.startswith(" "):
            s = " " + s
        self.cache[tid] = s
        return s


def _empty_record(lm: LanguageModel, text: str, dec: _Decoder) -> dict[str, Any]:
    ids = lm.tokenizer(text)["input_ids"]
    return {"tokens": [dec(int(i)) for i in ids], "positions": [], "kl": [], "dlogprob": [],
            "top_before": [], "top_after": [], "shifts": []}


def _pairs(values: torch.Tensor, ids: torch.Tensor, dec: _Decoder) -> list[list[list[Any]]]:
    """[n, k] values and ids -> per row ``[[token, value], ...]`` (values rounded to 6 significant digits)."""
    return [[[dec(int(i)), float(f"{float(v):.6g}")] for v, i in zip(vr, ir)]
            for vr, ir in zip(values.tolist(), ids.tolist())]


def _record_chunk(rec: dict[str, Any], cb: ScoredChunk, ce: ScoredChunk, kl: torch.Tensor, dlp: torch.Tensor,
                  k: int, dec: _Decoder) -> None:
    """Append per-position values of one chunk to a text's record (top-k on the fly, no [n, V] kept)."""
    pb, pe = cb.logprobs.exp(), ce.logprobs.exp()
    k = min(k, pb.shape[-1])
    tb, te = pb.topk(k, dim=-1), pe.topk(k, dim=-1)
    diff = pe - pb
    big = diff.abs().topk(k, dim=-1).indices
    rec["positions"].extend(int(p) for p in cb.positions.tolist())
    rec["kl"].extend(float(f"{x:.6g}") for x in kl.tolist())
    rec["dlogprob"].extend(float(f"{x:.6g}") for x in dlp.tolist())
    rec["top_before"].extend(_pairs(tb.values, tb.indices, dec))
    rec["top_after"].extend(_pairs(te.values, te.indices, dec))
    rec["shifts"].extend(_pairs(diff.gather(-1, big), big, dec))


def _sort_record(rec: dict[str, Any]) -> None:
    """Order a record's per-position lists by position (MLM chunks arrive in batch order)."""
    keys = ("positions", "kl", "dlogprob", "top_before", "top_after", "shifts")
    order = sorted(range(len(rec["positions"])), key=rec["positions"].__getitem__)
    for key in keys:
        rec[key] = [rec[key][i] for i in order]


def _row_slices(cb: ScoredChunk, ce: ScoredChunk) -> Iterator[tuple[ScoredChunk, ScoredChunk]]:
    """Both chunks cut into ``ROWS``-row pieces, so the [rows, V] temporaries of KL and top-k stay small."""
    for s in range(0, cb.targets.numel(), ROWS):
        sl = slice(s, s + ROWS)
        yield (ScoredChunk(cb.text_index, cb.logprobs[sl], cb.targets[sl], cb.positions[sl]),
               ScoredChunk(ce.text_index, ce.logprobs[sl], ce.targets[sl], ce.positions[sl]))


def _accumulate(tot: EditTotals, cb: ScoredChunk, ce: ScoredChunk, tids: torch.Tensor | None) -> torch.Tensor:
    """Add one chunk pair (base, edit) to the totals; returns the per-position KL [n]."""
    lp_b = cb.logprobs.gather(-1, cb.targets[:, None]).squeeze(-1)
    lp_e = ce.logprobs.gather(-1, ce.targets[:, None]).squeeze(-1)
    kl = kl_rows(cb.logprobs, ce.logprobs)
    tot.nll -= float(lp_e.double().sum())
    tot.kl += float(kl.double().sum())
    if tids is not None:
        is_t = torch.isin(cb.targets, tids)
        tot.t_n += int(is_t.sum())
        tot.t_logp_before += float(lp_b[is_t].double().sum())
        tot.t_logp_after += float(lp_e[is_t].double().sum())
        tot.t_p_before += float(lp_b[is_t].double().exp().sum())
        tot.t_p_after += float(lp_e[is_t].double().exp().sum())
        tot.s_n += int((~is_t).sum())
        tot.s_kl += float(kl[~is_t].double().sum())
        if bool(is_t.any()):
            _accumulate_by_token(tot, cb, ce, lp_b, lp_e, tids)
    return kl


def _accumulate_by_token(tot: EditTotals, cb: ScoredChunk, ce: ScoredChunk, lp_b: torch.Tensor, lp_e: torch.Tensor,
                         tids: torch.Tensor) -> None:
    """Per target token: its own log P / P at its positions, and every other target token's P there."""
    for t in tids.tolist():
        at = cb.targets == t
        if not bool(at.any()):
            continue
        d = tot.by_token.setdefault(int(t), {"n": 0, "logp_before": 0.0, "logp_after": 0.0, "p_before": 0.0,
                                             "p_after": 0.0, "p_other": {}})
        d["n"] += int(at.sum())
        d["logp_before"] += float(lp_b[at].double().sum())
        d["logp_after"] += float(lp_e[at].double().sum())
        d["p_before"] += float(lp_b[at].double().exp().sum())
        d["p_after"] += float(lp_e[at].double().exp().sum())
        for u in tids.tolist():
            if u != t:
                acc = d["p_other"].setdefault(int(u), [0.0, 0.0])
                acc[0] += float(cb.logprobs[at, u].double().exp().sum())
                acc[1] += float(ce.logprobs[at, u].double().exp().sum())


def compare_stream(lm: LanguageModel, texts: Sequence[str], edits: Sequence[WeightEdit], *,
                   target_ids: torch.Tensor | None = None, keep_tokens: bool = False, topk: int = 5,
                   batch_size: int | None = None, desc: str | None = None) -> CorpusTotals:
    """Compare the base model with each edit on ``texts``, streaming batch by batch.

    Args:
        texts: the corpus (at least one scorable token overall).
        edits: applied one at a time on ``lm.model`` and restored bit-exactly.
        target_ids: token ids [m]; positions whose scored token is one of them are target positions.
        keep_tokens: keep per-token records for ``edits[0]`` (see ``BlastReport.tokens``).
        topk: k of the per-token top-k lists.
        batch_size: max texts per forward (default: by the logit budget).

    Returns:
        ``CorpusTotals`` with one ``EditTotals`` per edit.

    Under ``torchrun`` / ``accelerate launch`` each rank scores a contiguous block of ``texts`` and
    the sums (and per-token records, in text order) are combined on every rank: the same totals as
    one process up to the order of float additions.
    """
    if dist.init():
        mine = dist.shard(texts)
        part = (_compare_local(lm, mine, edits, target_ids=target_ids, keep_tokens=keep_tokens, topk=topk,
                               batch_size=batch_size, desc=desc) if mine else
                CorpusTotals(edits=[EditTotals() for _ in edits], tokens=[] if keep_tokens else None))
        return merge_totals(dist.all_gather_json(asdict(part)))
    return _compare_local(lm, texts, edits, target_ids=target_ids, keep_tokens=keep_tokens, topk=topk,
                          batch_size=batch_size, desc=desc)


def merge_totals(parts: Sequence[dict[str, Any]]) -> CorpusTotals:
    """One ``CorpusTotals`` from the ``asdict`` forms of per-rank totals over consecutive blocks of texts."""
    out = CorpusTotals(edits=[EditTotals() for _ in parts[0]["edits"]],
                       tokens=[] if parts[0]["tokens"] is not None else None)
    for part in parts:
        out.n += part["n"]
        out.nll_base += part["nll_base"]
        for tot, e in zip(out.edits, part["edits"]):
            for name in ("nll", "kl", "t_n", "t_logp_before", "t_logp_after", "t_p_before", "t_p_after", "s_n", "s_kl"):
                setattr(tot, name, getattr(tot, name) + e[name])
            for t, d in e["by_token"].items():  # JSON made the token ids strings
                acc = tot.by_token.setdefault(int(t), {"n": 0, "logp_before": 0.0, "logp_after": 0.0,
                                                       "p_before": 0.0, "p_after": 0.0, "p_other": {}})
                for name in ("n", "logp_before", "logp_after", "p_before", "p_after"):
                    acc[name] += d[name]
                for u, (before, after) in d["p_other"].items():
                    pair = acc["p_other"].setdefault(int(u), [0.0, 0.0])
                    pair[0] += before
                    pair[1] += after
        if out.tokens is not None:
            out.tokens.extend(part["tokens"])
    return out


def _compare_local(lm: LanguageModel, texts: Sequence[str], edits: Sequence[WeightEdit], *,
                   target_ids: torch.Tensor | None, keep_tokens: bool, topk: int, batch_size: int | None,
                   desc: str | None) -> CorpusTotals:
    """:func:`compare_stream` over ``texts`` in this process."""
    out = CorpusTotals(edits=[EditTotals() for _ in edits])
    dec = _Decoder(lm)
    records = [_empty_record(lm, t, dec) for t in texts] if keep_tokens else None
    tids = target_ids.to(lm.device) if target_ids is not None else None
    groups = _groups(lm, texts, batch_size)
    t0 = last = time.time()
    for g, group in enumerate(progress(groups, desc=desc, disable=desc is None or len(groups) < 2, leave=False)):
        if time.time() - last >= LOG_EVERY_S:
            logger.info("%s: %d/%d batches of texts (%.0f s)", desc or "comparing", g, len(groups), time.time() - t0)
            last = time.time()
        sub = [texts[i] for i in group]
        base = list(iter_scored(lm, sub, batch_size))
        for cb in base:
            out.n += cb.targets.numel()
            out.nll_base -= float(cb.logprobs.gather(-1, cb.targets[:, None]).double().sum())
        for e, edit in enumerate(edits):
            tot = out.edits[e]
            n_seen = 0
            with edit.applied(lm.model):
                for cb_all, ce_all in zip(base, iter_scored(lm, sub, batch_size)):
                    n_seen += 1
                    if cb_all.text_index != ce_all.text_index or not torch.equal(cb_all.positions, ce_all.positions):
                        raise RuntimeError("base and edited passes are misaligned; this is a bug in gradedit")
                    for cb, ce in _row_slices(cb_all, ce_all):
                        kl = _accumulate(tot, cb, ce, tids)
                        if records is not None and e == 0:
                            lp_b = cb.logprobs.gather(-1, cb.targets[:, None]).squeeze(-1)
                            lp_e = ce.logprobs.gather(-1, ce.targets[:, None]).squeeze(-1)
                            _record_chunk(records[group[cb.text_index]], cb, ce, kl, lp_e - lp_b, topk, dec)
            if n_seen != len(base):
                raise RuntimeError("base and edited passes scored different positions; this is a bug in gradedit")
        del base
    if records is not None:
        for rec in records:
            _sort_record(rec)
    out.tokens = records
    return out
