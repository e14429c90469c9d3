"""The LoRA baseline: rank-r adapters trained on target positions, with a KL penalty everywhere else.

Per step, on a batch of target sequences (plus a batch of ``other_texts`` when given)::

    loss = mean_target ℓ(p_edit(y_t)) + λ · mean_other-positions KL(p_base ‖ p_edit)

with ``ℓ = −log(1 − p)`` (unlikelihood) to remove and ``ℓ = −log p`` (cross-entropy) to strengthen.
Unlikelihood rather than negative CE for removal: ``−log(1 − p) ≥ 0`` is bounded below and its gradient
vanishes as ``p → 0``, so training cannot diverge by sending one logit to −∞ (negative CE is unbounded
and does exactly that); ``log(1 − p)`` is computed as ``logsumexp`` over the other logits, stable for
``p → 1``. The adapters are forward hooks adding ``scale · x Aᵀ Bᵀ`` to each chosen ``nn.Linear`` /
GPT-2 ``Conv1D`` output; only A and B train. The result is a ``WeightEdit.low_rank`` equal to the
adapters (``ΔW = scale · B A``, transposed for ``Conv1D``)::

    res = train_lora(lm, german_texts, LoraConfig(rank=1, steps=100), other_texts=english)
    with res.edit.applied(lm.model): ...

Under ``torchrun`` / ``accelerate launch`` training is data parallel: every rank draws the same
global batch (same seed), runs the forward and backward pass on its contiguous slice of it, the
means are taken over every rank's positions (differentiable all-reduce of the sums) and the adapter
gradients are averaged (``dist.average_gradients``), so every rank takes the single-process step
and ends with the same adapters (up to float addition order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ... import dist
from ..._files import write_folder, write_json_atomic
from ..._progress import progress as progress_bar
from ...models import LanguageModel
from ..fitting import TokenLedger, text_tokens
from ..terms import EditError
from ..weight_edit import WeightEdit
from .data import (
    BatchCycler,
    TargetData,
    TargetToken,
    batch_kl,
    build_sequences,
    collate,
    compute_refs,
    target_terms,
)

logger = logging.getLogger(__name__)

__all__ = ["LoraConfig", "LoraResult", "TargetData", "attach_lora", "lora_modules", "train_lora"]


@dataclass(frozen=True)
class LoraConfig:
    """Settings of :func:`train_lora`.

    Attributes:
        rank: adapter rank r.
        modules: glob patterns (``fnmatch``) over module names; every matched ``nn.Linear`` / ``Conv1D``
            gets an adapter. Default: the MLP projections of all layers.
        alpha: the adapter output is scaled by ``alpha / rank`` (peft's convention); ``None`` = rank (scale 1).
        lr: Adam learning rate for A and B.
        steps: optimisation steps.
        batch_size: target sequences per step (and as many ``other_texts`` sequences).
        kl_weight: λ, weight of the mean KL on non-target positions.
        kl_topk: ``None``: base distributions from a no-grad forward with the adapters off, each step.
            k: base top-k log-probs + remaining mass stored once per KL position (a lower bound on KL).
        seed: seeds the local generator for A's init and batch order (the global RNG is never used).
        max_target_tokens: use only the first that many target tokens (in text order).
    """

    rank: int = 1
    modules: tuple[str, ...] = ("*.mlp.*",)
    alpha: float | None = None
    lr: float = 1e-3
    steps: int = 100
    batch_size: int = 8
    kl_weight: float = 1.0
    kl_topk: int | None = None
    seed: int = 0
    max_target_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.modules, str) or not all(isinstance(m, str) and m for m in self.modules):
            raise EditError(f"modules must be a list of glob patterns such as ['*.mlp.*'], got {self.modules!r}")
        object.__setattr__(self, "modules", tuple(self.modules))
        if not self.modules:
            raise EditError("modules is empty; give patterns such as ['*.mlp.*']")
        for name in ("rank", "steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise EditError(f"{name} must be an integer >= {0 if name == 'steps' else 1}, got {v!r}")
        for name in ("kl_topk", "max_target_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise EditError(f"{name} must be None or an integer >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise EditError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.kl_weight, (int, float)) and math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise EditError(f"kl_weight must be a number >= 0, got {self.kl_weight!r}")
        if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise EditError(f"alpha must be a finite number or None, got {self.alpha!r}")

    @property
    def scale(self) -> float:
        """Adapter output scale ``alpha / rank``."""
        return float(self.alpha if self.alpha is not None else self.rank) / self.rank

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modules"] = list(self.modules)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraConfig:
        """Build from a mapping; an unknown key raises ``EditError`` naming the closest known keys."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=2) for k in unknown}
            detail = "; ".join(f"{k!r}" + (f" (did you mean {', '.join(map(repr, h))}?)" if h else "")
                               for k, h in hints.items())
            raise EditError(f"unknown LoraConfig key(s): {detail}; known keys: {', '.join(known)}")
        return cls(**dict(d))


@dataclass
class LoraResult:
    """What :func:`train_lora` produced.

    Attributes:
        edit: ``WeightEdit.low_rank`` of the trained adapters (``scale`` = ``config.scale``).
        history: per step ``{step, loss, target_loss, target_ce, kl, n_target, n_kl}``, measured on the
            step's batch before its update (``kl`` is nan when ``kl_weight`` is 0: it is not computed).
        config: the settings used.
        n_target_tokens: scored target tokens used for training.
            ``edit.metadata["target_tokens_used"]`` counts every target-text token read in training
            (``{"fit": n, "total": n}``; with ``target_words`` also the KL positions of those texts).
        target_tokens: exactly which ones (text index, position, token).
        adapters: trained factors per module in the nn.Linear convention, ``B [out, r]``, ``A [r, in]``.
        remove: whether the target probabilities were pushed down.
    """

    edit: WeightEdit
    history: list[dict[str, float]]
    config: LoraConfig
    n_target_tokens: int
    target_tokens: list[TargetToken]
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    remove: bool = True

    def save(self, directory: str | Path) -> Path:
        """Write ``edit.json`` + ``edit.safetensors``, ``history.json`` and ``lora_config.json`` (atomic)."""
        directory = Path(directory)
        info = {"config": self.config.to_dict(), "remove": self.remove, "n_target_tokens": self.n_target_tokens,
                "target_tokens_used": self.edit.metadata.get("target_tokens_used"),
                "target_tokens": [dataclasses.asdict(t) for t in self.target_tokens]}

        def write(folder: Path) -> None:
            self.edit.save(folder)
            write_json_atomic(folder / "history.json",  # nan (KL not computed) as null: strict JSON
                              [{k: (None if v != v else v) for k, v in r.items()} for r in self.history])
            write_json_atomic(folder / "lora_config.json", info)

        write_folder(directory, write)
        logger.info("saved LoRA result to %s", directory)
        return directory


def _adaptable(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``nn.Linear`` / ``Conv1D`` modules, minus an output head tied to the input embedding."""
    from transformers.pytorch_utils import Conv1D

    get_input_embeddings = getattr(model, "get_input_embeddings", None)
    emb = get_input_embeddings() if get_input_embeddings is not None else None
    tied = getattr(emb, "weight", None)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, Conv1D)) and (tied is None or m.weight is not tied)}


def lora_modules(model: torch.nn.Module, patterns: Sequence[str]) -> dict[str, torch.nn.Module]:
    """Modules matched by ``patterns`` that can carry an adapter, in model order.

    Raises:
        EditError: a pattern matches no ``nn.Linear`` / ``Conv1D`` module (the message names close matches).
    """
    ok = _adaptable(model)
    chosen: set[str] = set()
    for pat in patterns:
        hits = [n for n in ok if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            others = [n for n, _ in model.named_modules() if n and fnmatch.fnmatchcase(n, pat)]
            close = difflib.get_close_matches(pat, list(ok), n=4, cutoff=0.5)
            why = (f"it matches only modules that cannot carry an adapter ({others[0]}, ...)" if others
                   else "it matches no module")
            hint = f"close matches: {', '.join(close)}" if close else f"names look like: {', '.join(list(ok)[:3])}"
            raise EditError(f"module pattern {pat!r}: {why}; {hint} (nn.Linear / Conv1D modules only)")
        chosen.update(hits)
    return {n: m for n, m in ok.items() if n in chosen}


def _dims(module: torch.nn.Module) -> tuple[int, int]:
    """(in, out) features of an nn.Linear ([out, in] weight) or Conv1D ([in, out] weight)."""
    w = module.weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(w).__name__}, not a tensor")
    n_in, n_out = (w.shape[1], w.shape[0]) if isinstance(module, torch.nn.Linear) else (w.shape[0], w.shape[1])
    return int(n_in), int(n_out)


class _Switch:
    """Whether the attached adapters add their output (turned off for base forwards)."""

    on = True


@contextlib.contextmanager
def attach_lora(model: torch.nn.Module, adapters: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                scale: float = 1.0) -> Iterator[_Switch]:
    """Forward hooks adding ``scale · x Aᵀ Bᵀ`` to each named module's output (``B [out, r]``, ``A [r, in]``).

    Yields a switch: ``switch.on = False`` turns the adapters off without removing them. The hooks are
    removed on exit, even on error.
    """
    modules = dict(model.named_modules())
    switch, handles = _Switch(), []

    def make(B: torch.Tensor, A: torch.Tensor) -> Callable[[torch.nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor]:
        def hook(_mod: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            if not switch.on:
                return out
            return out + (scale * ((args[0].to(A.dtype) @ A.T) @ B.T)).to(out.dtype)
        return hook

    try:
        for name, (B, A) in adapters.items():
            if name not in modules:
                raise EditError(f"no module named {name!r} to attach an adapter to")
            handles.append(modules[name].register_forward_hook(make(B, A)))
        yield switch
    finally:
        for h in handles:
            h.remove()


def _init_adapters(modules: Mapping[str, torch.nn.Module], rank: int, gen: torch.Generator,
                   device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """B = 0 [out, r]; A ~ N(0, 1/in) [r, in] from ``gen`` (fp32, trainable)."""
    out = {}
    for name, m in modules.items():
        n_in, n_out = _dims(m)
        A = (torch.randn(rank, n_in, generator=gen) / math.sqrt(n_in)).to(device).requires_grad_(True)
        out[name] = (torch.zeros(n_out, rank, device=device, requires_grad=True), A)
    return out


def train_lora(lm: LanguageModel, data: TargetData | Sequence[str], config: LoraConfig | None = None, *,
               remove: bool = True, other_texts: Sequence[str] | None = None, progress: bool = True) -> LoraResult:
    """Train rank-r adapters on ``data``'s target positions with a KL penalty elsewhere (see the module doc).

    Args:
        lm: a causal LM; its weights are left bit-identical (adapters live in hooks during training).
        data: ``TargetData`` or a list of texts (every scored position a target).
        remove: push target probabilities down (unlikelihood) instead of up (cross-entropy).
        other_texts: extra texts whose every position gets the KL term.
        progress: show a progress bar.

    Raises:
        EditError: a masked LM, a bad module pattern, or no target position.
    """
    config = config or LoraConfig()
    if not isinstance(data, TargetData):
        data = TargetData(list(data))
    if lm.kind != "clm":
        raise EditError(f"{lm.name} is a masked LM; train_lora supports causal LMs (kind 'clm') only")
    model = lm.model
    modules = lora_modules(model, config.modules)
    targets, others, used = build_sequences(lm, data, other_texts, config.max_target_tokens)
    ledger = TokenLedger()
    for seq in targets:  # every token of a target text read in training (target and KL positions)
        ledger.add("fit", data.texts[seq.text_index], text_tokens(lm, seq.ids.tolist()))
    need_kl = config.kl_weight > 0
    gen = torch.Generator().manual_seed(config.seed)
    adapters = _init_adapters(modules, config.rank, gen, lm.device)
    params = [t for pair in adapters.values() for t in pair]
    opt = torch.optim.Adam(params, lr=config.lr)
    distributed = dist.init()
    no_rows = torch.zeros((), device=lm.device)
    cyc_t, cyc_o = BatchCycler(targets, config.batch_size, gen), BatchCycler(others, config.batch_size, gen)
    pad, history = int(lm.tokenizer.pad_token_id), []
    flags = {p: p.requires_grad for p in model.parameters()}
    had_grad = {id(p) for p in flags if p.grad is not None}
    was_training = model.training
    logger.info("LoRA rank %d on %d modules, %d target tokens, remove=%s", config.rank, len(modules), len(used), remove)
    try:
        for p in flags:
            p.requires_grad_(False)
        model.eval()
        if need_kl and config.kl_topk is not None:
            compute_refs(lm, targets + others, config.kl_topk, config.batch_size)
        with attach_lora(model, adapters, config.scale) as switch:
            bar = progress_bar(range(config.steps), desc="LoRA", disable=not progress)
            for step in bar:
                batch_seqs = cyc_t.next() + cyc_o.next()
                mine = dist.shard(batch_seqs) if distributed else batch_seqs
                # a zero in the graph of every adapter: a rank without rows still sends gradients
                anchor = torch.stack([t.sum() for t in params]).sum() * 0.0 if distributed else no_rows
                t_loss = t_ce = kls = torch.zeros(0, device=lm.device)
                if mine:
                    batch = collate(mine, pad, lm.device)
                    base_logits = None
                    if need_kl and config.kl_topk is None:
                        switch.on = False
                        try:
                            with torch.no_grad():
                                base_logits = lm.forward_logits(batch.input_ids, batch.attention_mask)
                        finally:
                            switch.on = True
                    logits = lm.forward_logits(batch.input_ids, batch.attention_mask).float()
                    t_loss, t_ce = target_terms(logits[batch.target], batch.next_ids[batch.target], remove)
                    if need_kl:
                        kls = batch_kl(logits, batch, base_logits)
                target_loss, n_target = _mean_over_ranks(t_loss, anchor)
                loss = target_loss
                kl = torch.full((), float("nan"))
                n_kl = _count_over_ranks(int(sum(int(q.kl.sum()) for q in mine)))
                if need_kl:
                    kl, _ = _mean_over_ranks(kls, anchor)
                    loss = loss + config.kl_weight * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                leaked = [n for n, p in model.named_parameters() if p.grad is not None and id(p) not in had_grad]
                if leaked:  # base weights are frozen: only A and B may get gradients
                    raise RuntimeError(f"base parameters received gradients: {leaked[:3]}")
                dist.average_gradients(params)
                opt.step()
                ce, _ = _mean_over_ranks(t_ce.detach(), anchor.detach())
                history.append({"step": step, "loss": loss.item(), "target_loss": target_loss.item(),
                                "target_ce": ce.item() if n_target else float("nan"),
                                "kl": kl.item(), "n_target": n_target, "n_kl": n_kl})
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return _result(lm, modules, adapters, history, config, used, remove, ledger.counts())


def _mean_over_ranks(x: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(mean of ``x`` [n] over every rank's entries — differentiable —, their number); a zero when
    there are none. In a single process ``x.mean()`` itself."""
    if not dist.is_distributed():
        return (x.mean() if x.numel() else anchor.new_zeros(())), int(x.numel())
    n = _count_over_ranks(int(x.numel()))
    total = dist.sum_with_grad(x.sum() + anchor if x.numel() else anchor)
    return (total / n if n else total), n


def _count_over_ranks(n: int) -> int:
    """``n`` summed over ranks (itself in a single process)."""
    if not dist.is_distributed():
        return n
    return int(dist.all_reduce_sum(torch.tensor([n], dtype=torch.float64)).item())


def _result(lm: LanguageModel, modules: Mapping[str, torch.nn.Module],
            adapters: Mapping[str, tuple[torch.Tensor, torch.Tensor]], history: list[dict[str, float]],
            config: LoraConfig, used: list[TargetToken], remove: bool, tokens_used: dict[str, int]) -> LoraResult:
    """Detach the factors and express them as a ``WeightEdit.low_rank`` on the weights as stored."""
    final = {n: (B.detach().clone(), A.detach().clone()) for n, (B, A) in adapters.items()}
    factors = {n: ((A.T.contiguous(), B.T.contiguous()) if not isinstance(modules[n], torch.nn.Linear) else (B, A))
               for n, (B, A) in final.items()}  # Conv1D stores W as [in, out]: ΔW = Aᵀ Bᵀ
    meta = {"method": "lora", "base_model": lm.name, "remove": remove, "config": config.to_dict(),
            "n_target_tokens": len(used), "target_tokens_used": tokens_used}
    edit = WeightEdit.low_rank(factors, scale=config.scale, metadata=meta)
    if history:
        logger.info("LoRA done: loss %.4f -> %.4f, target CE %.3f -> %.3f", history[0]["loss"], history[-1]["loss"],
                    history[0]["target_ce"], history[-1]["target_ce"])
    return LoraResult(edit, history, config, len(used), used, final, remove)
