"""Interrupting a long command (``train``, ``decompose``): Ctrl-C (SIGINT) and SIGTERM end it the same
way — Python unwinds (``finally`` blocks run, half-written temp files are removed, folder locks are
released), every checkpoint written so far stays, and one line says how to resume. Exit code 130 for
SIGINT, 143 for SIGTERM (128 + the signal number, as shells report it). kill -9 cannot be caught:
the run just stops, and the same command resumes from the last checkpoint too.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

__all__ = ["Terminated", "run_interruptible", "sigterm_raises"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the command unwinds instead of dying mid-write."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (main thread only; the old handler comes back after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_interruptible(args: argparse.Namespace, folder: Path, what: str, work: Callable[[], int]) -> int:
    """``work()`` with SIGTERM raising like Ctrl-C; on either, one line naming ``folder`` and the exit code.

    With ``--debug`` the interrupt propagates (traceback).
    """
    try:
        with sigterm_raises():
            return work()
    except KeyboardInterrupt as err:
        if getattr(args, "debug", False):
            raise
        name, code = ("SIGTERM", 143) if isinstance(err, Terminated) else ("SIGINT", 130)
        print(f"gradedit: {what} interrupted ({name}); the checkpoints in {folder} are kept: run the same command "
              f"again to resume", file=sys.stderr)
        return code
