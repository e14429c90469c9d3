"""``FeatureOptimizer``: one optimiser step of a FeatureModel from a loss (backward, finite check, step).

The training loop only calls :meth:`FeatureOptimizer.step`; how the update is made (AdamW state
precision, when gradients are freed, how ranks reduce them) lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ..feature_model import FeatureModel
from .config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["FeatureOptimizer", "GradReducer"]

#: called on every parameter's gradient after backward and before the update (e.g. a data-parallel all-reduce)
GradReducer = Callable[[torch.Tensor], None]


class FeatureOptimizer:
    """AdamW over a FeatureModel's weights (fused: one kernel over all 2n+k weights; unpruned smollm2:
    1.9 s -> 0.37 s per optimiser step).

    Args:
        fm: the feature model being trained.
        cfg: learning rate and weight decay come from here.
        reduce_grad: applied in place to each gradient before the update (None: nothing).
    """

    def __init__(self, fm: FeatureModel, cfg: TrainConfig, reduce_grad: GradReducer | None = None) -> None:
        self.fm, self.cfg, self.reduce_grad = fm, cfg, reduce_grad
        self.opt = torch.optim.AdamW(fm.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)

    def step(self, loss: torch.Tensor) -> list[str]:
        """Backward ``loss`` and apply the update; returns the names of parameters whose gradient is not
        finite (then nothing was applied)."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.reduce_grad is not None:
            for p in self.fm.parameters():
                if p.grad is not None:
                    self.reduce_grad(p.grad)
        bad = [n for n, p in self.fm.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if not bad:
            self.opt.step()
        return bad

    def state_dict(self) -> dict[str, Any]:
        """The optimiser state to checkpoint (tensors + plain values)."""
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""
        self.opt.load_state_dict(state)
