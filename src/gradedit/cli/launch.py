"""``--device`` for the commands that run a model, and which commands run under a launcher.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``) every rank runs the command:
``train``, ``decompose``, ``evaluate``, ``blast`` and ``edit`` share the work and rank 0 alone locks,
writes and prints; ``rewrite`` and ``score`` run in one process only and say so. Nothing here
imports torch at import time (``gradedit --help`` stays fast).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator

from ..errors import ConfigError

__all__ = ["DEVICE_ENV", "DEVICE_HELP", "add_device", "device_arg", "device_scope", "launcher_world",
           "single_process_only"]

#: read by ``gradedit.models.loading.load_model`` when no device is given (the same name as ``DEVICE_ENV`` there)
DEVICE_ENV = "GRADEDIT_DEVICE"

DEVICE_HELP = ("where the model runs: cpu, cuda (this rank's GPU under torchrun), cuda:N, or auto (default: CUDA "
               "when available, else the CPU)")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_arg(value: str) -> str:
    """argparse ``type=`` of ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased)."""
    name = value.strip().lower()
    if not _DEVICE.match(name):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return name


def add_device(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (default ``auto``) to a command's parser."""
    parser.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)


@contextlib.contextmanager
def device_scope(device: str | None) -> Iterator[None]:
    """Models loaded in the block without an explicit device go to ``device`` (nothing changes for
    ``None``): ``GRADEDIT_DEVICE`` is set for the block, so no torch is imported before a command's
    own checks; ``load_model`` resolves it (and names a missing GPU) when the model loads."""
    if device is None:
        yield
        return
    old = os.environ.get(DEVICE_ENV)
    os.environ[DEVICE_ENV] = device
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(DEVICE_ENV, None)
        else:
            os.environ[DEVICE_ENV] = old


def launcher_world() -> int:
    """``WORLD_SIZE`` set by torchrun / accelerate launch (1 without a launcher)."""
    raw = os.environ.get("WORLD_SIZE", "") or "1"
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} is not an integer; unset it or launch with "
                          "torchrun / accelerate launch") from None


def single_process_only(command: str, why: str) -> None:
    """Refuse to run ``command`` on several ranks (one line naming the fix).

    Raises:
        ConfigError: ``WORLD_SIZE > 1``.
    """
    world = launcher_world()
    if world > 1:
        raise ConfigError(f"gradedit {command} runs in one process ({why}) but was started as {world} processes; "
                          f"run it without torchrun / accelerate launch (train, decompose, evaluate, blast and edit "
                          f"run under them)")
