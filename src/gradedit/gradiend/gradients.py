"""Factual / alternative / diff gradients of single-token predictions, restricted to selected parameters.

For a row with prediction point x, factual token f and alternative token a:

- ``factual``:     ∇θ CE_f = ∇θ(−log p(f | x))
- ``alternative``: ∇θ CE_a
- ``diff``:        ∇θ(CE_f − CE_a) = ∇θ(logit_a − logit_f)   (the log-partition cancels: ONE forward,
  ONE backward, no softmax)

Only the selected parameters take part in autograd: all others are frozen for the duration of the
call (their ``requires_grad`` flags are restored afterwards) and never receive a ``.grad``.
``jvp_dot`` returns ⟨v, ∇θ L_i⟩ for every row i of a batch from one forward-mode pass, without
materialising any gradient: the encoder's pre-activation for a whole batch at the price of a forward.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models import LanguageModel, select_parameters
from ..models.param_map import ParamMap

if TYPE_CHECKING:
    from .mlm_head import MLMHead

logger = logging.getLogger(__name__)

Source = Literal["factual", "alternative", "diff"]
SOURCES: tuple[str, ...] = ("factual", "alternative", "diff")


def row_losses(lm: LanguageModel, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
               source: Source, parameters: Mapping[str, torch.Tensor] | None = None,
               head: MLMHead | None = None) -> torch.Tensor:
    """Per-row loss [B] whose gradient is the requested ``source`` (see module docstring).

    With an MLM ``head`` the logits are the head's ``[B, n]`` over its target tokens (``texts`` are then
    full texts with the head's placeholder, see ``MLMHead.texts``) instead of the LM's ``[B, V]``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    return _losses(lm, texts, factual_ids, alternative_ids, [source], parameters, head)[source]


def _losses(lm: LanguageModel, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
            sources: Sequence[str], parameters: Mapping[str, torch.Tensor] | None,
            head: MLMHead | None) -> dict[str, torch.Tensor]:
    if head is None:
        logits = lm.prediction_logits(list(texts), parameters)  # [B, V]
        return _losses_from_logits(logits, factual_ids, alternative_ids, sources)
    logits = head.logits(lm, list(texts), parameters)  # [B, n]: the head's target tokens
    return _losses_from_logits(logits, head.index(factual_ids), head.index(alternative_ids), sources)


@contextlib.contextmanager
def only_these_require_grad(model: torch.nn.Module, keep: Mapping[str, torch.nn.Parameter]) -> Iterator[None]:
    """Freeze every parameter not in ``keep`` (and unfreeze those in it); restore flags on exit."""
    keep_ids = {id(p) for p in keep.values()}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep_ids)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class GradientEngine:
    """Gradients of single-token predictions w.r.t. a selected parameter set of ``lm.model``.

    Args:
        lm: the model; it is used in place and never copied.
        params: glob patterns (see ``select_parameters``) or a ready ``{name: parameter}`` dict;
            ``None`` selects every transformer-block weight matrix.
        include_embeddings: with ``params=None``, also select the embedding matrices.
        head: an MLM head of a causal LM (:class:`~gradedit.gradiend.mlm_head.MLMHead`): losses are taken
            on its logits, so texts are full texts with its placeholder. It is frozen; only the selected
            base-model parameters get gradients.
    """

    def __init__(self, lm: LanguageModel, params: Sequence[str] | Mapping[str, torch.nn.Parameter] | None = None,
                 *, include_embeddings: bool = False, head: MLMHead | None = None) -> None:
        self.lm = lm
        self.head = head
        if head is not None:
            head.requires_grad_(False)
        if isinstance(params, Mapping):
            named = dict(lm.model.named_parameters())
            unknown = [n for n in params if n not in named]
            if unknown:
                raise KeyError(f"not parameters of {lm.name}: {unknown[:5]}")
            self.params: dict[str, torch.nn.Parameter] = {n: named[n] for n in params}
        else:
            self.params = select_parameters(lm.model, params, include_embeddings=include_embeddings)
        self.names = list(self.params)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def gradients(self, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
                  source: Source = "diff") -> dict[str, torch.Tensor]:
        """Batch-mean gradient of the ``source`` loss: ``{name: tensor shaped like the parameter}``."""
        return self.multi_gradients(texts, factual_ids, alternative_ids, (source,))[source]

    def multi_gradients(self, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
                        sources: Sequence[Source]) -> dict[str, dict[str, torch.Tensor]]:
        """Several batch-mean gradients from ONE forward pass (one backward per distinct source)."""
        wanted = list(dict.fromkeys(sources))
        with only_these_require_grad(self.lm.model, self.params), torch.enable_grad():
            losses = _losses(self.lm, texts, factual_ids, alternative_ids, wanted, None, self.head)
            out: dict[str, dict[str, torch.Tensor]] = {}
            tensors = list(self.params.values())
            for i, src in enumerate(wanted):
                grads = torch.autograd.grad(losses[src].mean(), tensors, retain_graph=i < len(wanted) - 1,
                                            allow_unused=True)
                out[src] = {n: (g if g is not None else torch.zeros_like(p)).detach()
                            for (n, p), g in zip(self.params.items(), grads)}
        return out

    def gradient_vectors(self, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
                         sources: Sequence[Source], param_map: ParamMap) -> dict[str, torch.Tensor]:
        """Batch-mean gradients gathered straight into ``param_map``'s input space: ``{source: [n]}``.

        Equal to ``param_map.gather(multi_gradients(...)[source])`` but each parameter's gradient is
        gathered and freed the moment autograd finishes it (post-accumulate hooks), so at most one
        parameter's dense gradient exists at a time instead of all of them.
        """
        wanted = list(dict.fromkeys(sources))
        named = {n: self.params[n] for n in param_map.names if n in self.params}
        missing = [n for n in param_map.names if n not in named]
        if missing:
            raise KeyError(f"param_map names parameters outside this engine's selection: {missing[:3]}")
        if any(p.grad is not None for p in named.values()):
            raise RuntimeError("selected parameters already hold .grad; zero them (set_to_none) first")
        spans = {n: (start, start + size, idx) for n, start, size, idx in
                 zip(param_map.names, param_map.offsets, param_map.sizes, param_map.indices)}
        out: dict[str, torch.Tensor] = {}
        with only_these_require_grad(self.lm.model, named), torch.enable_grad():
            losses = _losses(self.lm, texts, factual_ids, alternative_ids, wanted, None, self.head)
            for i, src in enumerate(wanted):
                vec = torch.zeros(param_map.size, dtype=torch.float32)

                def take(p: torch.Tensor, name: str, vec: torch.Tensor = vec) -> None:
                    lo, hi, idx = spans[name]
                    if p.grad is None:
                        raise RuntimeError(f"autograd finished {name} without accumulating a gradient")
                    flat = p.grad.reshape(-1)
                    vec[lo:hi] = (flat if idx is None else flat[idx.to(flat.device)]).float().cpu()
                    p.grad = None

                hooks = [p.register_post_accumulate_grad_hook(lambda p, n=n: take(p, n)) for n, p in named.items()]
                try:
                    torch.autograd.backward(losses[src].mean(), inputs=list(named.values()),
                                            retain_graph=i < len(wanted) - 1)
                finally:
                    for h in hooks:
                        h.remove()
                    for p in named.values():
                        p.grad = None
                out[src] = vec
        return out

    def each_gradient(self, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
                      source: Source, visit: Callable[[str, torch.Tensor], object]) -> None:
        """Call ``visit(name, grad)`` with each selected parameter's batch-mean gradient as soon as autograd
        finishes it (its return value is ignored); the gradient is freed right after, so only one dense
        gradient exists at a time."""
        named = self.params
        if any(p.grad is not None for p in named.values()):
            raise RuntimeError("selected parameters already hold .grad; zero them (set_to_none) first")
        with only_these_require_grad(self.lm.model, named), torch.enable_grad():
            loss = row_losses(self.lm, texts, factual_ids, alternative_ids, source, head=self.head).mean()

            def take(p: torch.Tensor, name: str) -> None:
                if p.grad is None:
                    raise RuntimeError(f"autograd finished {name} without accumulating a gradient")
                visit(name, p.grad)
                p.grad = None

            hooks = [p.register_post_accumulate_grad_hook(lambda p, n=n: take(p, n)) for n, p in named.items()]
            try:
                torch.autograd.backward(loss, inputs=list(named.values()))
            finally:
                for h in hooks:
                    h.remove()
                for p in named.values():
                    p.grad = None

    def per_row_gradients(self, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
                          sources: Sequence[Source]) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        """One gradient set per row (batch of one: no padding, the cheapest exact per-row gradient)."""
        for i in range(len(texts)):
            yield self.multi_gradients([texts[i]], factual_ids[i : i + 1], alternative_ids[i : i + 1], sources)

    def jvp_dot(self, texts: Sequence[str], factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
                direction: Mapping[str, torch.Tensor], source: Source = "diff") -> torch.Tensor:
        """⟨direction, ∇θ L_i⟩ for every row i -> [B], by forward-mode AD (no gradient materialised).

        ``direction`` maps selected parameter names to tensors of the parameter's shape (zeros where
        an entry is not part of the feature); missing names count as zero.
        """
        names = [n for n in self.names if n in direction]
        extra = set(direction) - set(self.names)
        if extra:
            raise KeyError(f"direction has entries for unselected parameters: {sorted(extra)[:5]}")
        primals = tuple(self.params[n].detach() for n in names)
        tangents = tuple(direction[n].to(self.params[n].dtype).to(self.params[n].device) for n in names)

        def losses(*values: torch.Tensor) -> torch.Tensor:
            return row_losses(self.lm, texts, factual_ids, alternative_ids, source, dict(zip(names, values)),
                              self.head)

        # the fused CPU attention kernels have no forward-mode derivative; the math kernel does
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            dots = jvp(losses, primals, tangents)[1]  # (losses, tangent of the losses); has_aux=False
        return dots.detach()


def _losses_from_logits(logits: torch.Tensor, factual_ids: torch.Tensor, alternative_ids: torch.Tensor,
                        sources: Sequence[str]) -> dict[str, torch.Tensor]:
    rows = torch.arange(logits.shape[0], device=logits.device)
    f, a = factual_ids.to(logits.device), alternative_ids.to(logits.device)
    out: dict[str, torch.Tensor] = {}
    lp = torch.log_softmax(logits.float(), -1) if {"factual", "alternative"} & set(sources) else None
    for src in sources:
        if src == "diff":
            out[src] = logits[rows, a].float() - logits[rows, f].float()
        elif src == "factual":
            assert lp is not None
            out[src] = -lp[rows, f]
        elif src == "alternative":
            assert lp is not None
            out[src] = -lp[rows, a]
        else:
            raise ValueError(f"source must be one of {SOURCES}, got {src!r}")
    return out
