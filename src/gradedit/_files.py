"""Files: the on-disk cache folder, inter-process locks, and atomic writes of files and folders
(text, JSON, safetensors) — readers never see half an artefact. Reading JSON artefacts with errors
that name the file and the fix."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from .errors import ArtifactError

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_dir", "atomic_path", "cache_dir", "current_umask", "default_mode", "locked", "read_json_object",
           "save_safetensors_atomic", "write_folder", "write_json_atomic", "write_text_atomic"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it for other threads.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting and restoring it
    under a lock (``os.umask`` has no getter).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_mode(*, folder: bool = False) -> int:
    """The mode a new file (``0o666``) or folder (``0o777``) gets under the current umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _normalise_modes(root: Path) -> None:
    """Give ``root`` and everything below it the umask's default modes (files keep an executable bit
    only if they had one): temp files/folders and safetensors' own writes are private (0600/0700)."""
    file_mode, dir_mode = default_mode(), default_mode(folder=True)
    os.chmod(root, dir_mode)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if not os.path.islink(path):
                os.chmod(path, dir_mode)
        for f in filenames:
            path = os.path.join(dirpath, f)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, dir_mode if executable else file_mode)


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
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp file path beside ``path``; on success it replaces ``path`` in one step, with the mode
    any new file gets under the umask (``0o666 & ~umask``; mkstemp alone would leave it 0600).

    On error the temp file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it is renamed to ``final`` in one step.

    On error the temp folder is removed and ``final`` is untouched. ``final`` must not exist. On
    success the folder and everything written into it get the umask's default modes (mkdtemp makes
    the folder private and safetensors writes its files 0600; a saved model is readable like any
    other file of the user's).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _normalise_modes(tmp)
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
    """Write ``text`` (UTF-8) to ``path`` via a temp file + rename, so readers never see half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj: Any) -> None:
    """``json.dumps(obj, indent=2, sort_keys=True)`` written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], file: Path,
                            metadata: dict[str, str] | None = None) -> None:
    """A ``safetensors`` file written to a temp file beside ``file`` and renamed into place."""
    from safetensors.torch import save_file  # here, not at the top: the CLI's --help must not import torch

    with atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})


def read_json_object(file: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``file``; ``fix`` (e.g. "save the model again") ends every error message.

    Raises:
        FileNotFoundError: the file is missing.
        ArtifactError: it is not valid JSON or not an object.
    """
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing; {fix}")
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{file} is corrupt ({err}); {fix}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{file} should hold a JSON object, got {type(obj).__name__}")
    return obj
