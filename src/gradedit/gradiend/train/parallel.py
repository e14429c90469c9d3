"""Data-parallel GRADIEND training under ``torchrun`` / ``accelerate launch``: the few rank-aware pieces.

Every rank holds the base model and the same feature model. Each optimiser step the batch's gradient
examples are split over the ranks (:func:`batch_share`); every rank backwards its share of the MSE
(:func:`batch_loss`: its squared errors over the *whole* batch's element count), the feature-model
gradients are summed over ranks (:func:`grad_reducer`, passed to ``FeatureOptimizer``), so every rank
takes the single-process AdamW step. Rank 0 alone writes (:func:`main_only`, :func:`lock_on_main`).

In a single process every helper is the plain computation: the loss is ``F.mse_loss`` as before and
no reducer is installed, so single-process training is unchanged bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ... import dist
from ..._files import lock_folder
from .optim import GradReducer

__all__ = ["batch_share", "batch_loss", "loss_denominator", "batch_total", "grad_reducer", "main_only",
           "lock_on_main"]


def batch_share(batch: int) -> range:
    """This rank's gradient examples of a batch of ``batch`` (a contiguous block; ``range(batch)`` in
    one process; empty on a rank beyond ``batch``)."""
    return dist.shard_range(batch)


def batch_loss(rec: torch.Tensor, tgt: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss to backward on this rank, the whole batch's loss)`` for reconstructions ``rec`` and targets
    ``tgt`` ``[b_r, n]`` of this rank's ``b_r`` examples out of ``batch``.

    One process: both are ``F.mse_loss(rec, tgt)``. Under a launcher the first is this rank's sum of
    squared errors divided by ``batch · n`` (so its gradients, summed over ranks, are the gradient of the
    single-process mean) and the second is its sum over ranks (a detached scalar, equal on every rank).
    """
    if not dist.is_distributed():
        loss = F.mse_loss(rec, tgt)
        return loss, loss.detach()
    local = F.mse_loss(rec, tgt, reduction="sum") / (batch * rec.shape[-1])
    return local, batch_total(local)


def loss_denominator(batch: int, n: int) -> int | None:
    """The fused step's MSE denominator (``FeatureOptimizer.fused_step``): ``None`` (its own ``B · n``) in
    one process; under a launcher the whole batch's ``batch · n`` on every rank, as :func:`batch_loss`."""
    return batch * n if dist.is_distributed() else None


def batch_total(local: torch.Tensor) -> torch.Tensor:
    """The whole batch's loss from this rank's share (a detached scalar; the share itself in one process)."""
    if not dist.is_distributed():
        return local.detach()
    return dist.all_reduce_sum(local.detach().reshape(1))[0]


def grad_reducer() -> GradReducer | None:
    """Under a launcher: a ``FeatureOptimizer`` ``reduce_grad`` hook that replaces a gradient by its sum
    over ranks (so every rank holds the same gradient and takes the same step); ``None`` in one process."""
    if not dist.is_distributed():
        return None

    def reduce(grad: torch.Tensor) -> None:
        grad.copy_(dist.all_reduce_sum(grad))

    return reduce


def main_only(write: Callable[[], object]) -> None:
    """``write()`` on rank 0 once every rank got here (no rank is still reading what it replaces); the
    other ranks wait until it is done, and an error in it is raised on every rank. ``write()`` in one
    process. Every rank must call it at the same point."""
    if not dist.is_distributed():
        write()
        return
    dist.barrier()

    def run() -> None:
        write()

    dist.main_decides(run)


def lock_on_main(stack: contextlib.ExitStack, folder: Path, *, share_nested: bool = False) -> None:
    """Rank 0 takes ``lock_folder(folder)`` into ``stack`` (held until the stack closes); when it cannot
    (``FolderLocked``) every rank raises. One process: just the lock."""
    main_only(lambda: stack.enter_context(lock_folder(folder, share_nested=share_nested)))
