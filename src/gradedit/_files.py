"""Files: the on-disk cache folder, inter-process locks, and atomic writes of files and folders
(text, JSON, safetensors) — readers never see half an artefact. Reading JSON artefacts with errors
that name the file and the fix."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from .errors import ArtifactError

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_dir", "atomic_path", "cache_dir", "locked", "read_json_object", "save_safetensors_atomic",
           "write_folder", "write_json_atomic", "write_text_atomic"]


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
    """Yield a temp file path beside ``path``; on success it replaces ``path`` in one step (mode 644).

    On error the temp file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
