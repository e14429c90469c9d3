"""Trained redirects from ``n`` examples: a component's write vector, or a LoRA adapter, with
cross-entropy on the target at the fire positions plus ``λ`` · KL(base ‖ edit) elsewhere.

Both methods read the same data: the ``n`` :class:`~gradedit.demo.redirect_data.Example` texts (a fit
passage cut after one fire token, target appended) — CE of the target at each example's fire
position, KL at its other positions — plus the ``unrelated_fit`` texts for KL at every position (the
write vector: all examples and the first ``max_kl_tokens`` unrelated positions every step; LoRA cycles
through all of them, ``min(n, 8)`` examples and as many unrelated texts per step).

:func:`fit_write_vector` optimises only the component's write vector ``w`` (start: its current
``σU``) with :func:`gradedit.edits.components.write_vector.optimise_write_vector` — the loop
:func:`gradedit.edits.train_write_vector` uses too — and returns the rank-1
:func:`~gradedit.edits.replace_write_vector` edit. Only the loss differs: the fire positions are given
(where the context class occurs, not where ``|V·x|`` is in its top quantile) and the trained token is a
fixed target (not the text's own next token).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..edits import Component, LoraConfig, TargetData, WeightEdit, replace_write_vector, train_lora
from ..edits.components.write_vector import optimise_write_vector
from ..edits.fitting import (
    Batch,
    Positions,
    TokenLedger,
    base_logprobs,
    batches,
    frozen_params,
    kl_rows,
    logprobs_at,
)
from ..errors import EditError
from ..models import LanguageModel
from .redirect_data import Example

logger = logging.getLogger(__name__)

__all__ = ["fit_lora", "fit_write_vector"]


def _last_of_row(b: Batch) -> torch.Tensor:
    """``[N]`` bool: the position is the last scored one of its row (an example's fire position)."""
    row = b.row
    return torch.cat([row[1:] != row[:-1], torch.ones(1, dtype=torch.bool)]).to(b.flat.device)


def fit_write_vector(lm: LanguageModel, component: Component, examples: Sequence[Example], kl_texts: Sequence[str],
                     target_id: int, *, kl_weight: float = 1.0, steps: int = 20, lr: float = 0.02,
                     max_kl_tokens: int | None = 128, batch_size: int = 16) -> tuple[WeightEdit, list[dict[str, Any]]]:
    """Train the write vector of ``component`` (see the module docstring).

    Returns:
        ``(edit, history)``: ``history`` has one dict per step (``loss``, ``ce`` = mean −log P(target) at
        the fire positions, ``kl``) before that step's update, and one for the final vector.
        ``edit.metadata["target_tokens_used"]`` = ``{"fit": text tokens of the examples, "total"}``.
    """
    if not examples:
        raise EditError("no fit examples given")
    if steps < 0 or kl_weight < 0:
        raise EditError(f"steps and kl_weight must be >= 0, got {steps} and {kl_weight}")
    texts = [e.text for e in examples]
    # every example ends with its target right after the fire token, so the fire position is the last
    # scored position of its row: one forward per batch scores the CE and the example's own KL positions
    own = Positions.from_texts(lm, texts)
    if [texts[i] for i in own.text_index] != texts or any(
            s[-1] != examples[i].fire for s, i in zip(own.sources, own.text_index)):
        raise EditError("an example does not end with its target right after the fire token; build examples "
                        "with redirect_data.fit_examples")
    other = Positions.from_texts(lm, kl_texts, max_kl_tokens) if kl_texts else Positions([], [], [])
    ledger = TokenLedger()
    ledger.add_positions(lm, "fit", texts, own)
    own_b, other_b = batches(lm, own, batch_size), batches(lm, other, batch_size)
    fire_m = [_last_of_row(b) for b in own_b]
    n_fire, n_kl = len(examples), own.n - len(examples) + other.n
    with frozen_params(lm.model):
        refs_own, refs_other = base_logprobs(lm, own_b), base_logprobs(lm, other_b)

        def terms() -> tuple[torch.Tensor, torch.Tensor]:
            ce = torch.zeros((), device=lm.device)
            kl = torch.zeros((), device=lm.device)
            for b, r, m in zip(own_b, refs_own, fire_m):
                lp = logprobs_at(lm, b)
                ce = ce - lp[m, target_id].sum()
                kl = kl + kl_rows(r[~m], lp[~m]).sum()
            for b, r in zip(other_b, refs_other):
                kl = kl + kl_rows(r, logprobs_at(lm, b)).sum()
            return ce / n_fire, kl / max(1, n_kl)

        w, history = optimise_write_vector(lm, component, terms, steps=steps, lr=lr, kl_weight=kl_weight,
                                           target_key="ce")
    edit = replace_write_vector(component, w)
    edit.metadata.update({"method": "redirect_trained", "target_id": int(target_id), "kl_weight": kl_weight,
                          "steps": steps, "lr": lr, "n_examples": len(examples), "n_kl_tokens": n_kl,
                          "target_tokens_used": ledger.counts(), "history": history})
    logger.info("fit_write_vector %s (n=%d, λ=%g): loss %.3f -> %.3f, CE %.3f -> %.3f", component.label,
                len(examples), kl_weight, history[0]["loss"], history[-1]["loss"], history[0]["ce"], history[-1]["ce"])
    return edit, history


def fit_lora(lm: LanguageModel, examples: Sequence[Example], kl_texts: Sequence[str], target: str,
             modules: Sequence[str], *, kl_weight: float = 1.0, rank: int = 1, steps: int = 25, lr: float = 5e-3,
             seed: int = 0) -> tuple[WeightEdit, list[dict[str, float]]]:
    """:func:`gradedit.edits.train_lora` on the examples (target positions: where the next token is the
    appended ``target``; KL at their other positions and on ``kl_texts``)."""
    if not examples:
        raise EditError("no fit examples given")
    # base distributions as top-256 summaries computed once (as the German study's LoRA), not a base pass per step
    conf = LoraConfig(rank=rank, modules=tuple(modules), steps=steps, lr=lr, kl_weight=kl_weight,
                      batch_size=min(len(examples), 8), seed=seed, kl_topk=256)
    res = train_lora(lm, TargetData([e.text for e in examples], [target]), conf, remove=False,
                     other_texts=list(kl_texts) or None, progress=False)
    if res.n_target_tokens != len(examples):
        raise EditError(f"LoRA trained on {res.n_target_tokens} target positions for {len(examples)} examples: "
                        f"{target!r} also occurs inside the example text; choose a rarer target token")
    res.edit.metadata.update({"n_examples": len(examples), "kl_weight": kl_weight})
    return res.edit, res.history
