"""The probe's measures along one decoder line θ(lr) = θ + lr·v, v = decode(feature_factor), and
their first and second derivatives in lr at lr = 0, by forward-mode AD.

Measured along the line (the same quantities :meth:`DecoderProbe.score` reports):

- ``nll``: the summed next-token NLL of the neutral texts (causal LM; masked LM: each non-special
  token masked in turn), so mean CE = nll / tokens and perplexity = exp(mean CE);
- ``probs``: per prompt and class, Σ P(class tokens) at the prediction point ``[rows, classes]``.

Two ways to get the second derivative (``method``):

- ``"jvp2"``: jvp of jvp, exact, one pass over the texts that carries four streams (value, two
  tangents, the mixed tangent);
- ``"fd"``: first-order jvp at lr = ±h, f'' ≈ (f'(h) − f'(−h)) / 2h: two passes of two streams.

Forward-mode AD keeps no tape, so all batches run inside one function call; memory is one batch.
Texts are sorted by token length and batched by a token budget (no padding waste).

Under ``torchrun`` / ``accelerate launch`` each rank runs its block of the neutral items and of the
prompts (the others' entries are zero) and :func:`line_taylor` adds the coefficients over ranks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from ... import dist, metrics
from ...models import LanguageModel
from ..model import ModelWithGradiend

logger = logging.getLogger(__name__)

#: streams of [B, T, V] fp32 logits one jvp-of-jvp batch carries (value, 2 tangents, mixed)
STREAMS = 4
METHODS = ("jvp2", "fd")


@dataclass
class LineTaylor:
    """Value, first and second lr-derivative at lr = 0 of the measures along one decoder line.

    Attributes:
        feature_factor: the line's feature factor.
        nll: ``[3]`` summed neutral NLL: value, d/dlr, d²/dlr².
        tokens: neutral tokens scored (mean CE = nll / tokens).
        probs: ``[3, rows, classes]`` Σ P(class tokens) per prompt: value, d/dlr, d²/dlr².
        method: ``"jvp2"`` or ``"fd"``.
    """

    feature_factor: float
    nll: np.ndarray
    tokens: int
    probs: np.ndarray
    method: str
    passes: int = 1
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ce(self) -> np.ndarray:
        """``[3]`` mean neutral CE (nats/token): value, d/dlr, d²/dlr²."""
        return self.nll / max(self.tokens, 1)

    def ce_rise(self, lr: float | np.ndarray) -> np.ndarray:
        """Predicted CE(lr) − CE(0) (second-order Taylor)."""
        lr = np.asarray(lr, dtype=float)
        return self.ce[1] * lr + 0.5 * self.ce[2] * lr * lr

    def boundary(self, rise: float) -> float | None:
        """Smallest lr > 0 where the predicted CE rise reaches ``rise`` > 0 (``None``: never)."""
        return quadratic_root(float(self.ce[1]), float(self.ce[2]), rise)

    def metric(self, weights: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """``[3]`` Taylor coefficients of ``offset + Σ weights · probs`` (``weights`` [rows, classes])."""
        out = (self.probs * weights[None]).reshape(3, -1).sum(-1)
        out[0] += offset
        return out


def quadratic_root(a1: float, a2: float, rise: float) -> float | None:
    """Smallest x > 0 with a1·x + a2·x²/2 = rise (rise > 0); ``None`` when the parabola never gets there."""
    a = 0.5 * a2
    if abs(a) < 1e-300:
        return rise / a1 if a1 > 0 else None
    disc = a1 * a1 + 4.0 * a * rise
    if disc < 0:
        return None
    sq = float(np.sqrt(disc))
    roots = [r for r in ((-a1 + sq) / (2 * a), (-a1 - sq) / (2 * a)) if r > 0]
    return min(roots) if roots else None


def line_params(mwg: ModelWithGradiend, v: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: θ + lr·v}`` for the mapped parameters (differentiable in ``lr``; no dense v is built)."""
    pmap = mwg.param_map
    named = dict(mwg.lm.model.named_parameters())
    out = {}
    for name, idx, start, size in zip(pmap.names, pmap.indices, pmap.offsets, pmap.sizes):
        p = named[name].detach()
        part = v[start : start + size].to(device=p.device, dtype=p.dtype)
        if idx is None:
            out[name] = p + lr * part.view(p.shape)
        else:
            out[name] = p.reshape(-1).index_add(0, idx.to(p.device), lr * part).view(p.shape)
    return out


def token_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices sorted by length, grouped so that padded tokens ≤ ``max_tokens`` and rows ≤ ``max_batch``."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) >= max_batch or lengths[i] * (len(cur) + 1) > max_tokens):
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


class LineFunction:
    """lr ↦ [summed neutral NLL, probs of every prompt and class (flattened)] along θ + lr·v.

    Under a launcher this rank's share only: the NLL of its block of neutral items, the probabilities
    of its block of prompts (zeros elsewhere); the sum over ranks is the whole function."""

    def __init__(self, mwg: ModelWithGradiend, prompts: Sequence[str], neutral: Sequence[str],
                 class_ids: Sequence[Sequence[int]], batch_size: int = 16) -> None:
        lm = mwg.lm
        self.mwg, self.lm = mwg, lm
        self.prompts, self.class_ids = list(prompts), [list(c) for c in class_ids]
        max_tokens = max(1, metrics.LOGIT_BUDGET_BYTES // (4 * STREAMS * lm.vocab_size))
        self.items = neutral_items(lm, neutral)
        self.tokens = _count(lm, self.items)
        mine = list(dist.shard_range(len(self.items)))
        self.neutral_groups = [[mine[j] for j in g] for g in
                               token_batches([len(self.items[i][0]) for i in mine], max_tokens, batch_size)]
        mine = list(dist.shard_range(len(self.prompts)))
        plen = [len(lm.tokenizer(self.prompts[i])["input_ids"]) for i in mine]
        self.prompt_groups = [[mine[j] for j in g] for g in token_batches(plen, max_tokens, batch_size)]

    def __call__(self, v: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        params = line_params(self.mwg, v, lr)
        nll = sum((self._nll(g, params) for g in self.neutral_groups), torch.zeros((), device=self.lm.device))
        probs = [torch.zeros(1, len(self.class_ids), device=self.lm.device)] * len(self.prompts)  # other ranks' rows
        for g in self.prompt_groups:
            p = self._probs(g, params)
            for j, i in enumerate(g):
                probs[i] = p[j : j + 1]
        return torch.cat([nll.reshape(1), torch.cat(probs).reshape(-1)])

    def _nll(self, group: list[int], params: dict[str, torch.Tensor]) -> torch.Tensor:
        lm = self.lm
        width = max(len(self.items[i][0]) for i in group)
        pad = lm.tokenizer.pad_token_id or 0
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        att = torch.zeros((len(group), width), dtype=torch.long)
        for b, i in enumerate(group):
            row = self.items[i][0]
            ids[b, : len(row)] = torch.tensor(row)
            att[b, : len(row)] = 1
        if lm.kind == "clm":
            logits = lm.forward_logits(ids.to(lm.device), att.to(lm.device), params)
            lp = torch.log_softmax(_at_least_fp32(logits[:, :-1]), -1)
            picked = lp.gather(-1, ids[:, 1:, None].to(lm.device)).squeeze(-1)
            return -(picked * att[:, 1:].to(lm.device)).sum()
        where = torch.tensor([self.items[i][1] for i in group])
        targets = torch.tensor([self.items[i][2] for i in group])
        ids[torch.arange(len(group)), where] = lm.tokenizer.mask_token_id
        logits = lm.forward_logits(ids.to(lm.device), att.to(lm.device), params)
        lp = torch.log_softmax(_at_least_fp32(logits[torch.arange(len(group)), where.to(lm.device)]), -1)
        return -lp.gather(-1, targets[:, None].to(lm.device)).sum()

    def _probs(self, group: list[int], params: dict[str, torch.Tensor]) -> torch.Tensor:
        lp = _at_least_fp32(self.lm.prediction_logits([self.prompts[i] for i in group], params)).log_softmax(-1)
        return torch.stack([lp[:, torch.tensor(ids, device=lp.device)].exp().sum(-1) for ids in self.class_ids], -1)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def neutral_items(lm: LanguageModel, texts: Sequence[str]) -> list[tuple[list[int], int, int]]:
    """Causal LM: ``(ids, 0, scored tokens)`` per text; masked LM: ``(ids, masked position, target id)``
    per non-special token (the last field is then the target, and each item scores one token)."""
    items: list[tuple[list[int], int, int]] = []
    for t in texts:
        enc = lm.tokenizer(t, return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        if lm.kind == "clm":
            if len(ids) >= 2:
                items.append((ids, 0, len(ids) - 1))
        else:
            items.extend((ids, p, ids[p]) for p, sp in enumerate(enc["special_tokens_mask"]) if not sp)
    return items


def _count(lm: LanguageModel, items: list[tuple[list[int], int, int]]) -> int:
    return sum(n for _, _, n in items) if lm.kind == "clm" else len(items)


class CompositeSiLU(torch.nn.Module):
    """``x · sigmoid(x)`` from primitives: torch's fused SiLU has no second-order forward derivative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


@contextlib.contextmanager
def twice_differentiable(model: torch.nn.Module) -> Iterator[None]:
    """Swap SiLU activation modules (``nn.SiLU``, HF ``SiLUActivation``) for :class:`CompositeSiLU`
    for the block (same values), so jvp-of-jvp runs; restored in ``finally``."""
    swapped = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.SiLU) or type(child).__name__ == "SiLUActivation":
                swapped.append((parent, name, child))
                setattr(parent, name, CompositeSiLU())
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def derivatives(fn: Callable[[torch.Tensor], torch.Tensor], method: str = "jvp2",
                h: float = 0.0) -> tuple[torch.Tensor, int]:
    """``([3, m] value/first/second derivative at 0 of fn: scalar -> [m], passes over the texts)``."""
    zero, one = torch.zeros(()), torch.ones(())
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        if method == "jvp2":
            def first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                out = jvp(fn, (x,), (one,))
                return out[1], out[0]

            res: Any = jvp(first, (zero,), (one,), has_aux=True)  # (d1, d2, value)
            d1, d2, value = res[0], res[1], res[2]
            return torch.stack([value, d1, d2]).double(), 1
        if method == "fd":
            if h <= 0:
                raise ValueError("method='fd' needs a step h > 0")
            plus, minus = jvp(fn, (zero + h,), (one,)), jvp(fn, (zero - h,), (one,))
            vp, tp, vm, tm = (t.double() for t in (plus[0], plus[1], minus[0], minus[1]))
            value = (vp + vm) / 2 - h * (tp - tm) / 4  # f(0) to O(h³) from values and slopes
            return torch.stack([value, (tp + tm) / 2, (tp - tm) / (2 * h)]), 2
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def line_taylor(fn: LineFunction, feature_factor: float, method: str = "jvp2", h: float = 0.0) -> LineTaylor:
    """Taylor coefficients of the neutral NLL and the class probabilities along ``feature_factor``'s line."""
    v = fn.mwg.feature_model.decode(float(feature_factor)).detach()
    with twice_differentiable(fn.lm.model) if method == "jvp2" else contextlib.nullcontext():
        coef, passes = derivatives(lambda lr: fn(v, lr), method, h)
    coef = dist.all_reduce_sum(coef.cpu())  # every rank ran its rows: the sum is the whole line
    probs = coef[:, 1:].reshape(3, len(fn.prompts), len(fn.class_ids)).numpy()
    return LineTaylor(float(feature_factor), coef[:, 0].numpy().copy(), fn.tokens, probs, method, passes)
