"""Forward hooks shared by component activations, write-vector training and scalar fitting.

- :func:`read_inputs`: call a function with each hooked module's input and optionally stop the
  forward pass once every hooked module has run (the rest of the model, e.g. a 262k-vocabulary
  output head, is never computed).
- :func:`add_to_outputs`: add a term to each hooked module's output (a differentiable stand-in for a
  weight edit, used while fitting; the result is always returned as a real ``WeightEdit``).
- :func:`head_at`: run the output head only at chosen positions (logits ``[N, V]`` instead of
  ``[B, T, V]``), by a pre-hook on the model's output embedding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

from ..models import LanguageModel


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (caught by :func:`read_inputs`'s caller)."""


__all__ = ["add_to_outputs", "head_at", "read_inputs"]


@contextlib.contextmanager
def read_inputs(modules: Mapping[str, torch.nn.Module], fn: Callable[[str, torch.Tensor], None], *,
                stop_when_done: bool = False) -> Iterator[None]:
    """Call ``fn(name, x)`` with each module's first input ``x [B, T, in]`` during forwards.

    With ``stop_when_done`` the forward raises :class:`StopForward` once every module has run once;
    the caller catches it.
    """
    seen: set[str] = set()
    handles = []

    def make(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            fn(name, args[0])
            seen.add(name)
            if stop_when_done and len(seen) == len(modules):
                seen.clear()
                raise StopForward

        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_pre_hook(make(name)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def add_to_outputs(modules: Mapping[str, torch.nn.Module],
                   delta: Callable[[str, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Each module's output ``y [B, T, out]`` becomes ``y + delta(name, x)`` (``x`` = its input)."""
    handles = []

    def make(name: str) -> Callable[..., torch.Tensor]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            return out + delta(name, args[0]).to(out.dtype)

        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_hook(make(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def head_at(lm: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            flat_index: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, V]`` at flat positions ``flat_index [N]`` (indices into ``B·T``); gradients flow.

    Only those positions go through the output head; anything the model applies after the head
    elementwise (e.g. Gemma's logit soft-capping) still applies.
    """
    head = lm.model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(lm.model).__name__} has no output embedding to select positions at")
    idx = flat_index.to(input_ids.device)

    def pre(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        h = args[0]
        return (h.reshape(-1, h.shape[-1]).index_select(0, idx)[None],)

    handle = head.register_forward_pre_hook(pre)
    try:
        logits = lm.forward_logits(input_ids, attention_mask)
    finally:
        handle.remove()
    return logits.reshape(-1, logits.shape[-1])
