"""Sharding work by rank, reductions, and sending small JSON values between ranks.

Every function is a no-op in a single process (rank 0 of a world of 1): a shard is everything, a
sum is the tensor itself, a broadcast returns its input. Objects travel as JSON (UTF-8 bytes in a
uint8 tensor), never as pickles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from .. import errors
from .group import comm_device, is_distributed, is_main, rank, world_size

__all__ = ["shard_range", "shard", "all_reduce_sum", "sum_with_grad", "average_gradients", "broadcast_json",
           "all_gather_json", "all_gather_rows", "main_decides", "check_all_ok", "broadcast_tensors"]

T = TypeVar("T")


def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous block of ``range(n)``; block sizes differ by at most one, lower ranks
    take the extra items, and the blocks of ranks 0..world-1 in order are ``range(n)``."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is not in a world of {w}")
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's contiguous block of ``items`` (see :func:`shard_range`)."""
    return [items[i] for i in shard_range(len(items), rank_, world)]


def all_reduce_sum(t: Tensor) -> Tensor:
    """The element-wise sum of ``t`` over ranks (a new tensor; ``t`` itself in a single process)."""
    if not is_distributed():
        return t
    buf = t.detach().to(comm_device(), copy=True).contiguous()
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    return buf.to(t.device)


def sum_with_grad(t: Tensor) -> Tensor:
    """Differentiable sum of ``t`` over ranks (``t`` itself in a single process).

    The backward pass sums the incoming gradients over ranks too, so a loss that every rank computes
    identically from such sums gets, after :func:`average_gradients`, the single-process gradient.
    """
    if not is_distributed():
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=tdist.ReduceOp.SUM)


def average_gradients(params: Iterable[Tensor]) -> None:
    """Replace each ``.grad`` by its mean over ranks (one flat all-reduce; no-op in a single process).

    Every rank must hold gradients for the same parameters (``None`` grads are skipped).
    """
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.detach().reshape(-1).to(comm_device(), torch.float64 if g.dtype == torch.float64
                                                else torch.float32) for g in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= world_size()
    pos = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[pos: pos + n].view_as(g).to(g.device, g.dtype))
        pos += n


def broadcast_tensors(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite each tensor in place with rank ``src``'s values (no-op in a single process)."""
    if not is_distributed():
        return
    dev = comm_device()
    for t in tensors:
        buf = t.detach().to(dev, copy=True).contiguous()
        tdist.broadcast(buf, src=src)
        with torch.no_grad():
            t.copy_(buf.to(t.device))


def _to_bytes(obj: Any) -> Tensor:
    data = json.dumps(obj, sort_keys=True).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (JSON-serialisable) on every rank; ``obj`` itself in a single process."""
    if not is_distributed():
        return obj
    dev = comm_device()
    payload = _to_bytes(obj) if rank() == src else torch.zeros(0, dtype=torch.uint8)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=dev)
    tdist.broadcast(size, src=src)
    buf = payload.to(dev) if rank() == src else torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
    tdist.broadcast(buf, src=src)
    return json.loads(bytes(buf.cpu().numpy().tobytes()).decode())


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (JSON-serialisable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    dev = comm_device()
    payload = _to_bytes(obj).to(dev)
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world_size())]
    tdist.all_gather(sizes, torch.tensor([payload.numel()], dtype=torch.long, device=dev))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[: payload.numel()] = payload
    bufs = [torch.empty(longest, dtype=torch.uint8, device=dev) for _ in sizes]
    tdist.all_gather(bufs, padded)
    return [json.loads(bytes(b[: int(s.item())].cpu().numpy().tobytes()).decode()) for b, s in zip(bufs, sizes)]


def all_gather_rows(t: Tensor) -> Tensor:
    """Every rank's ``t`` [n_r, ...] concatenated along dim 0 in rank order [Σ n_r, ...] (``t`` itself
    in a single process). Ranks may hold different row counts (zero included); the trailing shape and
    the dtype must agree. The values travel as tensors, bit for bit."""
    if not is_distributed():
        return t
    dev = comm_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world_size())]
    tdist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=dev))
    counts = [int(s.item()) for s in sizes]
    longest = max(max(counts), 1)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.detach().to(dev)
    bufs = [torch.empty_like(padded) for _ in counts]
    tdist.all_gather(bufs, padded)
    return torch.cat([b[:n] for b, n in zip(bufs, counts)]).to(t.device)


def _error_payload(err: BaseException) -> dict[str, str]:
    return {"error": type(err).__name__, "message": str(err)}


def _raise_remote(payload: dict[str, str], where: str) -> None:
    """Raise the error another rank reported: the same ``gradedit.errors`` class when it is one."""
    cls = getattr(errors, payload["error"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.GradeditError)):
        cls = errors.GradeditError
    raise cls(f"{where}: {payload['error']}: {payload['message']}")


def main_decides(decide: Callable[[], Any]) -> Any:
    """Run ``decide()`` on rank 0 only and return its (JSON) result on every rank.

    When ``decide`` raises on rank 0, rank 0 re-raises it and every other rank raises the same
    ``gradedit.errors`` class (``GradeditError`` for other exceptions) naming it, so no rank is
    left waiting in a collective.
    """
    if not is_distributed():
        return decide()
    result: Any = None
    failure: BaseException | None = None
    if is_main():
        try:
            result = {"ok": decide()}
        except Exception as err:  # noqa: BLE001 - sent to the other ranks, then re-raised
            failure = err
            result = _error_payload(err)
    result = broadcast_json(result)
    if failure is not None:
        raise failure
    if "error" in result:
        _raise_remote(result, "rank 0 failed")
    return result["ok"]


def check_all_ok(failure: BaseException | None) -> None:
    """Collective: every rank says whether its part failed; any failure is raised on every rank
    (the original exception on its own rank, the same error class elsewhere)."""
    if not is_distributed():
        if failure is not None:
            raise failure
        return
    states = all_gather_json(None if failure is None else _error_payload(failure))
    if failure is not None:
        raise failure
    for r, s in enumerate(states):
        if s is not None:
            _raise_remote(s, f"rank {r} failed")
