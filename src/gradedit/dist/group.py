"""The process group: found from the launcher's environment, created once, single process = no group.

``torchrun`` and ``accelerate launch`` start one process per rank and set ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init` reads them and calls
``torch.distributed.init_process_group`` (``gloo`` on CPU, ``nccl`` when CUDA is available) the
first time a data-parallel path runs. Without those variables (or with ``WORLD_SIZE=1``) nothing is
created and every helper of :mod:`gradedit.dist` is a no-op: rank 0 of a world of 1.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["DistEnv", "detect", "init", "quiet", "is_distributed", "rank", "world_size", "local_rank", "is_main", "barrier",
           "backend", "comm_device", "BACKEND_ENV", "TIMEOUT_ENV"]

#: force a backend ("gloo" / "nccl"); default: nccl when CUDA is available, else gloo
BACKEND_ENV = "GRADEDIT_DIST_BACKEND"
#: collective timeout in seconds (default 1800)
TIMEOUT_ENV = "GRADEDIT_DIST_TIMEOUT"


@dataclass(frozen=True)
class DistEnv:
    """What the launcher told this process (from environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: str


def _int_env(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; unset it or launch with "
                          "torchrun / accelerate launch") from None


def detect() -> DistEnv | None:
    """The launcher's settings when this process is one of several, else ``None``.

    Raises:
        ConfigError: ``WORLD_SIZE > 1`` but ``RANK`` or ``MASTER_ADDR`` is missing or malformed.
    """
    world = _int_env("WORLD_SIZE", 1) or 1
    if world <= 1:
        return None
    rank_ = _int_env("RANK")
    addr = os.environ.get("MASTER_ADDR", "")
    if rank_ is None or not addr or not 0 <= rank_ < world:
        raise ConfigError(f"WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}, MASTER_ADDR={addr!r}; launch "
                          "with torchrun or accelerate launch (they set all of them), or unset WORLD_SIZE")
    local = _int_env("LOCAL_RANK", rank_)
    return DistEnv(rank_, world, int(local if local is not None else rank_), addr, os.environ.get("MASTER_PORT", ""))


def _choose_backend() -> str:
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in ("gloo", "nccl"):
            raise ConfigError(f"{BACKEND_ENV}={forced!r}; use 'gloo' (CPU) or 'nccl' (CUDA)")
        return forced
    return "nccl" if torch.cuda.is_available() and tdist.is_nccl_available() else "gloo"


def init(*, quiet_other_ranks: bool = True) -> bool:
    """Join the launcher's process group once; ``True`` when more than one process takes part.

    A group that already exists (made by ``accelerate.Accelerator()`` or the user) is used as is.
    With ``quiet_other_ranks`` every rank but 0 logs only warnings from ``gradedit`` and shows no
    progress bars (rank-0-only logging).
    """
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_world_size() > 1
    env = detect()
    if env is None:
        return False
    if not tdist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed; install a torch with "
                          "distributed support or run one process")
    name = _choose_backend()
    if name == "nccl":
        torch.cuda.set_device(env.local_rank)
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    tdist.init_process_group(backend=name, init_method="env://", rank=env.rank, world_size=env.world_size,
                             timeout=timeout)
    if quiet_other_ranks and env.rank != 0:
        quiet()
    logger.info("joined the process group: rank %d of %d (local rank %d, backend %s, master %s:%s)", env.rank,
                env.world_size, env.local_rank, name, env.master_addr, env.master_port)
    return env.world_size > 1


def quiet() -> None:
    """This process logs only warnings from ``gradedit`` and shows no progress bars."""
    lib = logging.getLogger("gradedit")
    if lib.level < logging.WARNING:
        lib.setLevel(logging.WARNING)
    os.environ["GRADEDIT_NO_PROGRESS"] = "1"


def is_distributed() -> bool:
    """A process group of more than one process exists (call :func:`init` first to join one)."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a group)."""
    return tdist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without a group)."""
    env = detect() if is_distributed() else None
    return env.local_rank if env is not None else 0


def is_main() -> bool:
    """Rank 0 (always true in a single process): the one that logs, writes indexes and reports."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        if backend() == "nccl":
            tdist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            tdist.barrier()


def backend() -> str | None:
    """The group's backend name, or ``None`` without a group."""
    return str(tdist.get_backend()) if is_distributed() else None


def comm_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU for nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")
