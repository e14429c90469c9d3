"""Matching edits of different methods at the same on-target effect, and counting the target text they read.

Every edit has a strength knob ``α`` (``edit * α``: the component scale's ``s − 1``, LoRA's ``B A``,
GRADIEND's learning rate all scale linearly). ``match_strength`` finds the ``α`` at which the edit
raises cross-entropy on calibration text by a target amount, by bracketing and bisection. The
calibration text must be disjoint from the evaluation text, so the match is not chosen on it.
That text influences the edit too: :attr:`StrengthMatch.n_tokens` says how many tokens it has.

:class:`TokenReads` measures, independently of any edit's own bookkeeping, which tokens of some
texts (e.g. all German sentences) the model read: a hook on the input embedding records every row
fed, and a row counts when it is a prefix of one of those texts.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .. import metrics
from ..edits import WeightEdit
from ..models import LanguageModel

logger = logging.getLogger(__name__)


@dataclass
class StrengthMatch:
    """The matched strength, every (α, ΔCE) probed on the way, and the calibration text tokens read."""

    alpha: float
    delta: float
    target: float
    probes: list[tuple[float, float]] = field(default_factory=list)
    n_tokens: int = 0

    @property
    def reached(self) -> bool:
        """Whether the target was met within 10% (else ``alpha`` is the strongest probed)."""
        return abs(self.delta - self.target) <= 0.1 * abs(self.target)


def ce_delta(lm: LanguageModel, edit: WeightEdit, texts: Sequence[str], base_ce: float) -> float:
    """CE(texts) with the edit applied minus ``base_ce`` (nats/token); the model is restored after."""
    with edit.applied(lm.model):
        return metrics.cross_entropy(lm, list(texts)) - base_ce


def match_strength(lm: LanguageModel, make_edit: Callable[[float], WeightEdit], texts: Sequence[str],
                   target: float, *, alpha0: float = 1.0, iters: int = 8, max_steps: int = 24,
                   base_ce: float | None = None) -> StrengthMatch:
    """``α`` with ``CE(texts | make_edit(α)) − CE(texts) ≈ target`` (nats), assuming ΔCE grows with ``α``.

    Brackets the target by doubling (or halving) from ``alpha0`` — at most ``max_steps`` probes, so
    edits many orders of magnitude too strong or too weak are still bracketed — then bisects ``iters``
    times on ``log α``. When the target is never reached, returns the strongest probe (``reached`` False).
    """
    if target <= 0:
        raise ValueError(f"target must be a positive CE increase in nats, got {target}")
    if alpha0 <= 0:
        raise ValueError(f"alpha0 must be positive, got {alpha0}")
    base = metrics.cross_entropy(lm, list(texts)) if base_ce is None else base_ce
    probes: list[tuple[float, float]] = []
    n_tokens = sum(text_tokens(lm, lm.tokenizer(t)["input_ids"]) for t in texts)

    def f(alpha: float) -> float:
        d = ce_delta(lm, make_edit(alpha), texts, base)
        probes.append((alpha, d))
        logger.info("strength α=%.4g: ΔCE %+.3f (target %+.3f)", alpha, d, target)
        return d

    a, d = alpha0, f(alpha0)
    factor = 0.5 if d >= target else 2.0
    lo = hi = None
    for _ in range(max_steps):
        if d >= target:
            hi = a
        else:
            lo = a
        if lo is not None and hi is not None:
            break
        a *= factor
        d = f(a)
    best = min(probes, key=lambda p: abs(p[1] - target))
    if lo is None or hi is None:
        strongest = max(probes, key=lambda p: p[1]) if hi is None else best
        logger.warning("strength target %+.3f not bracketed in %d probes; using α=%.4g (ΔCE %+.3f)",
                       target, len(probes), strongest[0], strongest[1])
        return StrengthMatch(alpha=strongest[0], delta=strongest[1], target=target, probes=probes, n_tokens=n_tokens)
    for _ in range(iters):
        if abs(best[1] - target) <= 0.03 * target:
            break
        mid = (lo * hi) ** 0.5
        d = f(mid)
        if abs(d - target) < abs(best[1] - target):
            best = (mid, d)
        if d < target:
            lo = mid
        else:
            hi = mid
    return StrengthMatch(alpha=best[0], delta=best[1], target=target, probes=probes, n_tokens=n_tokens)


def text_tokens(lm: LanguageModel, ids: Sequence[int]) -> int:
    """Text tokens among ``ids``: not BOS/EOS/padding or another special token (``<unk>`` counts)."""
    special = set(lm.tokenizer.all_special_ids) - {lm.tokenizer.unk_token_id}
    return sum(int(i) not in special for i in ids)


class TokenReads:
    """Tokens of ``texts`` the model read, measured by a hook on the input embedding, per purpose.

    ``with reads.record("fit"): ...`` records every row fed inside the block. A row counts when its
    text tokens (special tokens and padding stripped from both ends) are a prefix of the tokenization
    of one of ``texts`` and of none of ``exclude`` (other-language text that is also fed, so a short
    row shared by both is not claimed); :meth:`counts` gives, per purpose and in ``"total"``, the
    distinct such tokens (a row that is a prefix of another recorded row adds nothing).
    """

    def __init__(self, lm: LanguageModel, texts: Sequence[str], exclude: Sequence[str] = ()) -> None:
        self.lm = lm
        self._skip = set(lm.tokenizer.all_special_ids) - {lm.tokenizer.unk_token_id}
        self._skip.add(int(lm.tokenizer.pad_token_id))
        self._starts: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._exclude: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for index, group in ((self._starts, texts), (self._exclude, exclude)):
            for t in dict.fromkeys(group):
                core = self._core(lm.tokenizer(t)["input_ids"])
                for k in (1, 4):
                    if len(core) >= k:
                        index.setdefault(core[:k], []).append(core)
        self.rows: dict[str, set[tuple[int, ...]]] = {}

    def fresh(self) -> TokenReads:
        """An empty recorder over the same texts (the tokenized texts are shared, not redone)."""
        new = copy.copy(self)
        new.rows = {}
        return new

    def _core(self, ids: Sequence[int]) -> tuple[int, ...]:
        ids = [int(i) for i in ids]
        lo, hi = 0, len(ids)
        while lo < hi and ids[lo] in self._skip:
            lo += 1
        while hi > lo and ids[hi - 1] in self._skip:
            hi -= 1
        return tuple(ids[lo:hi])

    @contextlib.contextmanager
    def record(self, purpose: str) -> Iterator[None]:
        """Record the rows fed to the model inside the block under ``purpose``."""
        rows = self.rows.setdefault(purpose, set())

        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            rows.update(self._core(r) for r in args[0].reshape(-1, args[0].shape[-1]).tolist())

        handle = self.lm.model.get_input_embeddings().register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _matches(self, core: tuple[int, ...]) -> bool:
        key = core[:4] if len(core) >= 4 else core[:1]
        return (bool(core) and any(c[: len(core)] == core for c in self._starts.get(key, []))
                and not any(c[: len(core)] == core for c in self._exclude.get(key, [])))

    def _distinct(self, rows: set[tuple[int, ...]]) -> int:
        kept = sorted(r for r in rows if self._matches(r))
        return sum(len(r) for i, r in enumerate(kept) if not (i + 1 < len(kept) and kept[i + 1][: len(r)] == r))

    def counts(self) -> dict[str, int]:
        """``{purpose: distinct tokens read, ..., "total": distinct over all purposes}``."""
        out = {p: self._distinct(rows) for p, rows in self.rows.items()}
        out["total"] = self._distinct(set().union(*self.rows.values()) if self.rows else set())
        return out
