"""The on-disk cache (``$GRADEDIT_CACHE``, default ``~/.cache/gradedit``) and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock


def cache_dir() -> Path:
    """The root of gradedit's cache; read from ``$GRADEDIT_CACHE`` on every call."""
    root = os.environ.get("GRADEDIT_CACHE") or os.path.join(Path.home(), ".cache", "gradedit")
    return Path(root).expanduser()


@contextlib.contextmanager
def locked(path: Path, timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process file lock named after ``path`` (``<path>.lock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it is renamed to ``final`` in one step.

    On error the temp folder is removed and ``final`` is untouched. ``final`` must not exist.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache folder is readable like any other
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_folder(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(folder)`` so that ``path`` is never seen half-written.

    A new folder is written into a temp folder and renamed into place in one step (``atomic_dir``);
    into an existing folder ``write`` writes directly (each of its files should be atomic itself).
    """
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a folder")
        write(path)
    else:
        with atomic_dir(path) as tmp:
            write(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """``json.dumps(obj, indent=2)`` written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
