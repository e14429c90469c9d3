"""Rank-0-only work, and starting N local CPU processes without a launcher (tests, notebooks).

For real runs use ``torchrun`` or ``accelerate launch`` (docs/scaling.md); :func:`launch_local` is
the equivalent of accelerate's ``debug_launcher``: it sets the launcher's environment variables
itself and spawns the processes with ``torch.multiprocessing``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch.distributed as tdist

from .group import BACKEND_ENV, barrier, init, is_main

__all__ = ["main_first", "on_main", "launch_local", "free_port"]

T = TypeVar("T")


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), the other ranks after it is done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` on rank 0 only (``None`` on the others); no barrier."""
    return fn(*args, **kwargs) if is_main() else None


def free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(local: int, fn: Callable[..., Any], world: int, port: int, args: tuple[Any, ...]) -> None:
    os.environ.update({"RANK": str(local), "LOCAL_RANK": str(local), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    os.environ.setdefault(BACKEND_ENV, "gloo")
    init()
    try:
        fn(*args)
        # every rank past its last collective before any tears the group down (a rank destroying it while
        # the other's gloo/autograd threads still run aborted with "terminate called without an active
        # exception", ~1 run in 3 of tests/test_dist_ops.py)
        tdist.barrier()
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def launch_local(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nprocs`` fresh processes forming one gloo group on this machine.

    ``fn`` must be importable by name (a module-level function). Each process sees ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` as under ``torchrun`` and has
    joined the group before ``fn`` runs. An exception in any process is raised here.
    """
    import torch.multiprocessing as mp

    mp.spawn(_child, args=(fn, nprocs, free_port(), args), nprocs=nprocs, join=True)
