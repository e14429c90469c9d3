"""``FeatureOptimizer``: one optimiser step of a FeatureModel from a loss (backward, finite check, step).

The training loop only calls :meth:`FeatureOptimizer.step` (or :meth:`~FeatureOptimizer.fused_step`); how the update is made (AdamW state
precision, when gradients are freed, how ranks reduce them) lives here.

Three ways to step. The first two (``TrainConfig.optimizer_in_backward``) are bit-identical:

* after backward (default): backward leaves all 3n gradients, each is reduced (``reduce_grad``) and
  checked; if all are finite one fused AdamW step updates every weight, else nothing is applied. The
  gradients are freed right after the step (not at the start of the next one), so they never sit
  beside the next step's gradient computation.
* in backward: a post-accumulate-grad hook on each weight reduces, checks and steps it the moment
  autograd has its gradient, then frees that gradient (torch's "optimizer step in backward" pattern),
  so the weights' gradients never exist together. A NaN/Inf gradient stops the updates of that
  weight and of every weight whose gradient comes later in the same backward; weights stepped before
  it (the decoder's come first) keep their update in memory. The loop then stops training with a
  ``TrainingError`` and ``last/`` keeps the previous checkpoint, so nothing of that step reaches disk.
  The loss itself is checked by the loop before backward. ``reduce_grad`` still runs on every
  gradient of every rank (its collectives must match across ranks), before that weight's step.
  Measured: no lower peak than after backward, because the decoder's gradients (2n) and the
  reconstruction's gradient come from one autograd node and coexist anyway.
* fused (``TrainConfig.fused_step``; the loop calls :meth:`FeatureOptimizer.fused_step` with the
  sources and targets instead of building the loss): loss, gradients and update chunk by chunk without
  autograd (:mod:`.fused`); equal up to summation order, and no n-sized temporary at all.

Moments in fp32 or bf16 (``TrainConfig.optimizer_state``): :class:`~.adamw.FeatureAdamW`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch

from ...errors import ConfigError
from ..feature_model import FeatureModel
from .adamw import FeatureAdamW
from .config import TrainConfig
from .fused import all_finite, fused_mse_step

logger = logging.getLogger(__name__)

__all__ = ["FeatureOptimizer", "GradReducer"]

#: called on every parameter's gradient after backward and before the update (e.g. a data-parallel all-reduce)
GradReducer = Callable[[torch.Tensor], None]

_STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-sr": torch.bfloat16}


def _remove(handles: list[Any]) -> None:
    for h in handles:
        h.remove()


class FeatureOptimizer:
    """AdamW over a FeatureModel's weights (fused kernel; unpruned smollm2: 1.9 s -> 0.37 s per step
    against the unfused one).

    Args:
        fm: the feature model being trained (fp32 weights).
        cfg: learning rate, weight decay, ``optimizer_in_backward`` and ``optimizer_state`` come from here.
        reduce_grad: applied in place to each gradient before its update (None: nothing).
    """

    def __init__(self, fm: FeatureModel, cfg: TrainConfig, reduce_grad: GradReducer | None = None) -> None:
        self.fm, self.cfg, self.reduce_grad = fm, cfg, reduce_grad
        self.in_backward = bool(cfg.optimizer_in_backward)
        self.opt: torch.optim.Optimizer
        if cfg.optimizer_state == "fp32" and not self.in_backward and not cfg.fused_step:
            # the default: torch's own fused AdamW (FeatureAdamW's fp32 steps are bit-identical to it)
            self.opt = torch.optim.AdamW(fm.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                         fused=True)
        else:
            self.opt = FeatureAdamW(fm.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                    state_dtype=_STATE_DTYPES[cfg.optimizer_state],
                                    stochastic_rounding=cfg.optimizer_state == "bf16-sr", seed=fm.init_seed or 0)
        self._names: dict[torch.Tensor, str] = {p: n for n, p in fm.named_parameters()}
        self._bad: list[str] = []
        self._armed = False  # the hooks act only inside step(): another backward through fm is left alone
        self._hooks: list[Any] = []
        if self.in_backward:
            # the hooks reach this optimiser through a weak reference: a bound method would make a cycle
            # (weight -> hook -> optimiser -> feature model -> weight) that keeps both alive after the
            # loop drops them, until the next garbage collection (measured: +9n numbers beside the next
            # model load); the hooks are removed when the optimiser goes
            ref = weakref.ref(self)

            def hook(p: torch.Tensor) -> None:
                me = ref()
                if me is not None:
                    me._on_grad(p)

            self._hooks = [p.register_post_accumulate_grad_hook(hook) for p in fm.parameters()]
            weakref.finalize(self, _remove, list(self._hooks))

    @property
    def fused(self) -> bool:
        """``TrainConfig.fused_step``: the loop must call :meth:`fused_step` instead of :meth:`step`."""
        return bool(self.cfg.fused_step)

    def step(self, loss: torch.Tensor) -> list[str]:
        """Backward ``loss`` and apply the update; returns the names of parameters whose gradient is not
        finite (after backward: then nothing was applied; in backward: see the module docstring)."""
        if self.fused:
            raise ConfigError("TrainConfig.fused_step is set but the training loop called FeatureOptimizer.step(loss); "
                              "the loop must call fused_step(src, tgt) when FeatureOptimizer.fused is true")
        self.opt.zero_grad(set_to_none=True)
        if self.in_backward:
            self._bad, self._armed = [], True
            try:
                loss.backward()
            finally:
                self._armed = False
                self.opt.zero_grad(set_to_none=True)
            self.opt.step()  # no gradient is left: updates nothing, runs the optimizer-step hooks once per step
            return list(self._bad)
        try:
            loss.backward()
            params = [p for p in self.fm.parameters() if p.grad is not None]
            if self.reduce_grad is not None:
                for p in params:
                    self.reduce_grad(p.grad)  # type: ignore[arg-type]
            bad = [self._names[p] for p in params if not all_finite(p.grad)]  # type: ignore[arg-type]
            if not bad:
                self.opt.step()
        finally:
            self.opt.zero_grad(set_to_none=True)  # freed now, not when the next step starts
        return bad

    def fused_step(self, src: torch.Tensor, tgt: torch.Tensor,
                   denominator: int | None = None) -> tuple[torch.Tensor, list[str]]:
        """One step on sources/targets ``[B, n]`` without autograd (:func:`~.fused.fused_mse_step`): the
        MSE loss, gradients and update a chunk of the input space at a time, so no n-sized temporary
        exists (``fm(src)`` + ``mse_loss`` + :meth:`step` hold 4n more numbers at their peak for B = 1).

        Returns ``(loss, bad)``; a non-finite loss or ``bad`` means nothing (or, for a product overflowing
        mid-step, not everything) was applied. ``denominator``: see ``fused_mse_step`` (data parallel).
        """
        if not isinstance(self.opt, FeatureAdamW) or not self.fused:
            raise ConfigError("FeatureOptimizer.fused_step needs TrainConfig(fused_step=True); set it, or call step(loss)")
        self.opt.zero_grad(set_to_none=True)
        loss, bad = fused_mse_step(self.fm, self.opt, src, tgt, denominator=denominator,
                                   reduce_grad=self.reduce_grad)
        self.opt.step()  # no gradient is held: updates nothing, runs the optimizer-step hooks once per step
        return loss, bad

    def _on_grad(self, p: torch.Tensor) -> None:
        """Post-accumulate-grad hook (in-backward mode): reduce, check, step and free one weight's gradient."""
        if not self._armed or p.grad is None:
            return
        if self.reduce_grad is not None:
            self.reduce_grad(p.grad)
        if not all_finite(p.grad):
            self._bad.append(self._names[p])
        if not self._bad:
            cast(FeatureAdamW, self.opt).step_param(p)  # in-backward mode always builds a FeatureAdamW
        p.grad = None

    def close(self) -> None:
        """Remove the in-backward hooks from the feature model's weights (nothing to do otherwise)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def state_dict(self) -> dict[str, Any]:
        """The optimiser state to checkpoint (tensors + plain values; ``torch.optim.AdamW``'s layout)."""
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict` (either stepping mode; moments cast to this
        optimiser's precision)."""
        self.opt.load_state_dict(state)
