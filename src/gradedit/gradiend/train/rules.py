"""The rules of a GRADIEND seed that need no model: data order, metrics, early stopping, convergence.

Split out of :mod:`.loop` (which re-exports every name here), so the loop stays one concept: running a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..rows import Rows
from .config import TrainConfig

__all__ = ["grouped_examples", "examples_per_epoch", "SeedResult", "pearson", "class_stats", "stop_reason",
           "is_converged", "steps_per_epoch"]


def grouped_examples(groups: list[list[int]], per: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of gradient examples: each group's rows shuffled and cut into blocks of ``per``
    (a group's remainder sits this epoch out; a group smaller than ``per`` is one block), then the
    blocks shuffled. Every example holds rows of one group only."""
    blocks: list[list[int]] = []
    for g in groups:
        perm = [g[int(j)] for j in torch.randperm(len(g), generator=generator)]
        n = max(1, len(g) // per)
        blocks += [perm[k * per:(k + 1) * per] for k in range(n)]
    if len(groups) == 1:  # already in shuffled order (per=1: the same order as a plain permutation)
        return blocks
    order = torch.randperm(len(blocks), generator=generator).tolist()
    return [blocks[k] for k in order]


def examples_per_epoch(groups: list[list[int]], per: int) -> int:
    """Gradient examples in one epoch of :func:`grouped_examples`."""
    return sum(max(1, len(g) // per) for g in groups if g)


@dataclass
class SeedResult:
    """What one seed produced. ``history`` holds one dict per evaluation."""

    seed: int
    directory: Path
    best_step: int
    correlation: float
    class_means: dict[str, float]
    converged: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    last_step: int = 0
    stopped_early: bool = False
    stop_reason: str = ""
    step_losses: list[list[float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "directory": str(self.directory), "best_step": self.best_step,
                "correlation": self.correlation, "class_means": self.class_means, "converged": self.converged,
                "seconds": round(self.seconds, 2), "last_step": self.last_step, "stopped_early": self.stopped_early,
                "stop_reason": self.stop_reason}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def class_stats(values: np.ndarray, labels: np.ndarray, classes: tuple[str, str]) -> dict[str, float]:
    """Mean encoded value of class A (label +1) and class B (label −1)."""
    out = {}
    for cls, lab in zip(classes, (1.0, -1.0)):
        sel = values[labels == lab]
        out[cls] = float(sel.mean()) if sel.size else float("nan")
    return out


def stop_reason(history: list[dict[str, Any]], cfg: TrainConfig) -> str:
    """Why training should stop early ("" = go on): ``early_stopping_patience`` evaluations in a row
    without validation |r| above the best so far by more than ``early_stopping_min_delta``.

    A function of the evaluation history only, so a resumed run stops where an uninterrupted one would.
    """
    patience = cfg.early_stopping_patience
    if patience is None or not history:
        return ""
    ref, ref_step, since = -math.inf, 0, 0
    for h in history:
        if abs(h["correlation"]) > ref + cfg.early_stopping_min_delta:
            ref, ref_step, since = abs(h["correlation"]), h["step"], 0
        else:
            since += 1
    if since < patience:
        return ""
    return (f"validation |r| has not improved by more than {cfg.early_stopping_min_delta:g} for {since} "
            f"evaluations since step {ref_step} (|r| = {ref:.3f}; patience {patience})")


def is_converged(r: float, means: dict[str, float], best_step: int, cfg: TrainConfig) -> bool:
    a, b = list(means.values())
    opposite = a * b < 0
    big = min(abs(a), abs(b)) >= cfg.min_class_mean
    return bool(abs(r) >= cfg.min_correlation and opposite and big and best_step > 0)



def steps_per_epoch(rows: Rows, cfg: TrainConfig) -> float:
    """Optimiser steps per pass over ``rows`` (gradient examples per epoch / ``train_batch_size``)."""
    if not len(rows):
        return math.inf
    groups = rows.groups() if cfg.rows_per_gradient > 1 else [list(range(len(rows)))]
    return examples_per_epoch(groups, cfg.rows_per_gradient) / cfg.train_batch_size
