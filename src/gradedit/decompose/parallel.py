"""Data parallelism of the decomposition: each rank takes a slice of every global batch.

Every rank holds the same components, optimiser and ``torch.Generator`` (same seed), so every rank
draws the same global batch indices ``[B]`` and the same mask noise for the whole global batch
``[B, ..., C]``, exactly as one process would; it keeps only its own contiguous slice of rows. Each
loss term is written as a function of sums over rows, and those sums are summed over ranks with a
differentiable all-reduce (:func:`gradedit.dist.sum_with_grad`), so every rank computes the
single-process loss value; after ``backward`` the gradients are averaged over ranks
(:func:`gradedit.dist.average_gradients`), which gives the single-process gradient. The optimiser
steps are then identical on every rank, and the result equals one process with the same global
batch up to float rounding (the order of the sums differs).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import dist

__all__ = ["BatchSplit"]


@dataclass(frozen=True)
class BatchSplit:
    """This rank's share of a global batch (``world == 1``: the whole batch, every method a no-op)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> BatchSplit:
        """The split for the launcher's process group (joined here); one process: the whole batch."""
        dist.init()
        return cls(dist.rank(), dist.world_size())

    @property
    def active(self) -> bool:
        return self.world > 1

    def rows(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n`` rows."""
        r = dist.shard_range(n, self.rank, self.world)
        return slice(r.start, r.stop)

    def mean(self, local_mean: Tensor, n_local: int, n_total: int) -> Tensor:
        """The global mean from this rank's mean over ``n_local`` of ``n_total`` rows (differentiable;
        ``local_mean`` itself in one process)."""
        if not self.active:
            return local_mean
        return dist.sum_with_grad(local_mean * (n_local / n_total))

    def sum(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over ranks (differentiable; ``t`` itself in one process)."""
        return dist.sum_with_grad(t) if self.active else t
