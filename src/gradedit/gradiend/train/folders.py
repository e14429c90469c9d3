"""Checkpoint folders swapped in whole: ``replace_dir`` writes ``<name>.new`` and renames it into place;
``settle_dir`` finishes a swap that a kill interrupted (moved here from ``loop.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..._files import atomic_dir

__all__ = ["replace_dir", "settle_dir"]


def settle_dir(target: Path) -> None:
    """Finish a swap of :func:`replace_dir` that a kill interrupted, so ``target`` holds the newest
    complete folder and no ``<name>.new`` / ``<name>.old`` is left to block the next swap.

    ``<name>.new`` only ever exists complete (``atomic_dir`` renames it into place whole) and is newer
    than ``target``, so it wins; ``<name>.old`` is a replaced folder, removed. Every step is safe to
    interrupt again: the next call picks up where this one stopped.
    """
    new, old = target.with_name(target.name + ".new"), target.with_name(target.name + ".old")
    if new.is_dir():
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            target.rename(old)
        new.rename(target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def replace_dir(target: Path, write: Callable[[Path], object]) -> None:
    """Write a folder through ``write(tmp)`` and swap it in for ``target`` (never half-written; a swap
    interrupted earlier is finished first)."""
    settle_dir(target)
    with atomic_dir(target.with_name(target.name + ".new")) as tmp:
        write(tmp)
    settle_dir(target)
