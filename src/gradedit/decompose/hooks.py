"""Forward hooks: capture decomposed layers' inputs, or run the model with component masks.

The target model's parameters are never written: masks act on each layer's *output* in a forward
hook (``y ↦ y + change``, see :mod:`gradedit.decompose.layers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .layers import ComponentLayer

__all__ = ["StopForward", "capture_inputs", "masked_model", "call_model"]

# a mask source: for module ``name`` and its input ``x [..., d_in]`` -> (mask [..., C] or [C], delta mask or None)
MaskFn = Callable[[str, Tensor], tuple[Tensor, Tensor | None]]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (every wanted input has been seen)."""


@contextlib.contextmanager
def capture_inputs(modules: Mapping[str, nn.Module], *, stop_early: bool = False
                   ) -> Iterator[dict[str, list[Tensor]]]:
    """Record each module's input ``[..., d_in]`` (detached) on every forward inside the block.

    With ``stop_early`` the forward is cut short (:class:`StopForward`, caught by
    :func:`call_model`) once every module has been called, so later layers and the LM head are skipped.
    """
    seen: dict[str, list[Tensor]] = {n: [] for n in modules}
    handles = []

    def make(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            seen[name].append(args[0].detach())
            if stop_early and all(seen.values()):
                raise StopForward
        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_pre_hook(make(name)))
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def masked_model(modules: Mapping[str, nn.Module], layers: Mapping[str, ComponentLayer],
                 mask_fn: MaskFn) -> Iterator[None]:
    """Run ``modules`` with component masks: ``y ↦ y + (a ⊙ (m − m_δ)) U + (m_δ − 1)(y − b)``.

    Only modules in ``layers`` that ``mask_fn`` is asked about are changed; ``mask_fn`` returns
    ``(mask, delta_mask)`` for the module name and its input.
    """
    handles = []

    def make(name: str, layer: ComponentLayer) -> Callable[..., Tensor]:
        def hook(mod: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            x = args[0]
            mask, dmask = mask_fn(name, x)
            bias = getattr(mod, "bias", None)
            y_nobias = output if bias is None else output - bias
            change = layer.masked_change(layer.inner(x), y_nobias.to(layer.V.dtype), mask, dmask)
            return output + change.to(output.dtype)
        return hook

    try:
        for name, layer in layers.items():
            handles.append(modules[name].register_forward_hook(make(name, layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def call_model(model: nn.Module, batch: Tensor, is_lm: bool) -> Tensor | None:
    """``model(batch)`` → its main output tensor (LM logits ``[B, T, V]``); ``None`` if stopped early."""
    try:
        if is_lm:
            out = model(input_ids=batch, attention_mask=torch.ones_like(batch))
        else:
            out = model(batch)
    except StopForward:
        return None
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        from ..errors import DecompositionError

        raise DecompositionError(f"the model returned {type(out).__name__}; objective='output' needs a tensor "
                                 f"(or an object with .logits) — use objective='layer'")
    return out
