"""Files: the on-disk cache folder, inter-process locks (cache entries; one process per run folder),
and atomic writes of files and folders (text, JSON, safetensors) — readers never see half an
artefact. Reading JSON artefacts with errors that name the file and the fix. State trees (nested
containers of tensors and JSON values, e.g. optimiser state) are saved as safetensors + JSON: no
pickle is ever written or read."""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import numbers
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from .errors import ArtifactError, FolderLocked, UnsafeName

if TYPE_CHECKING:
    import torch

__all__ = ["FOLDER_LOCK", "json_safe", "atomic_dir", "atomic_path", "cache_dir", "current_umask", "default_mode", "load_tree",
           "lock_folder", "locked", "read_json_object", "safe_join", "safe_name", "save_safetensors_atomic", "save_tree_atomic",
           "write_folder", "write_json_atomic", "write_text_atomic"]

#: the lock file :func:`lock_folder` keeps inside a run folder
FOLDER_LOCK = ".gradedit.lock"

_UMASK_LOCK = threading.Lock()

#: folders this thread's (context's) outer ``lock_folder(..., share_nested=True)`` holds
_SHARED_FOLDERS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("gradedit_shared_folders",
                                                                                  default=frozenset())


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
def lock_folder(folder: Path, *, share_nested: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block, or fail at once.

    The lock is an ``flock`` on ``<folder>/.gradedit.lock``, which holds the owner's process id. The
    kernel drops it when the process ends however it ends (exit, exception, kill -9), so a leftover
    file never blocks a later run. Within one process the lock is not re-entrant either, unless the
    outer holder passes ``share_nested=True``: then nested ``lock_folder(folder)`` calls of the same
    thread pass through (the command line locks a run folder before the model loads and the library
    locks it again inside); other threads and processes are still refused.

    Raises:
        FolderLocked: another process (or another open lock in this one) holds ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _SHARED_FOLDERS.get():
        yield  # the outer holder of this thread owns the lock
        return
    with _exclusive(folder):
        token = _SHARED_FOLDERS.set(_SHARED_FOLDERS.get() | {key}) if share_nested else None
        try:
            yield
        finally:
            if token is not None:
                _SHARED_FOLDERS.reset(token)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """The ``flock`` of :func:`lock_folder` (filelock's portable lock where there is no ``fcntl``)."""
    path = folder / FOLDER_LOCK
    try:
        import fcntl
    except ImportError:  # not POSIX: filelock's portable lock (no owner id in the message)
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise FolderLocked(_locked_message(folder, "")) from None
        try:
            yield
        finally:
            lock.release()
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise FolderLocked(_locked_message(folder, owner)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # no stale owner id once released
    finally:
        os.close(fd)  # closing the file releases the lock


def _locked_message(folder: Path, owner: str) -> str:
    who = f"process {owner}" if owner.isdigit() else "another process"
    return (f"{folder} is in use by {who} (another gradedit run writes there); wait for it to end or "
            f"give another folder")


#: the longest file name most file systems take (bytes of UTF-8)
MAX_NAME_BYTES = 255


def safe_name(name: str, what: str) -> str:
    """``name`` itself when it can be one file or folder name inside a folder, else UnsafeName.

    Every name that comes from user data (class ids, feature, module or preset names) goes through
    here before it becomes part of a path: no path separator (``/``, ``\\``), no NUL or other control
    character, not ``.``/``..``, not empty, at most 255 bytes. ``what`` names the source in the message
    (``"class id"``). Names are refused, not rewritten, so two names never share one file.

    Raises:
        UnsafeName: the name could escape its folder or is not a valid file name.
    """
    text = name if isinstance(name, str) else str(name)
    bad = [c for c in text if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    problem = ("is empty" if not text.strip() else "is '.' or '..'" if text in (".", "..")
               else f"holds {bad[0]!r}" if bad else f"is longer than {MAX_NAME_BYTES} bytes"
               if len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES else "")
    if problem:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise UnsafeName(f"{what} {shown!r} {problem}, so it cannot name a file or folder; rename it (letters, "
                         f"digits, spaces, '-', '_' and '.' are safe)")
    return text


def safe_join(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` for a name from user data, checked with :func:`safe_name` (never outside ``folder``)."""
    path = Path(folder) / safe_name(name, what)
    if path.parent != Path(folder):  # pragma: no cover - safe_name already refuses every such name
        raise UnsafeName(f"{what} {name!r} leaves {folder}; rename it")
    return path


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


def json_safe(x: Any) -> Any:
    """A JSON-safe copy: NaN/inf become None, tuples become lists, dict keys become strings."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json_atomic(path: Path, obj: Any) -> None:
    """``json.dumps(obj, indent=2, sort_keys=True)`` written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], file: Path,
                            metadata: dict[str, str] | None = None) -> None:
    """A ``safetensors`` file written to a temp file beside ``file`` and renamed into place."""
    from safetensors.torch import save_file  # here, not at the top: the CLI's --help must not import torch

    with atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})
        _sort_header_metadata(tmp)


def _sort_header_metadata(file: Path) -> None:
    """Rewrite a safetensors header's ``__metadata__`` in key order, in place (same length): safetensors writes it
    in a Rust HashMap's per-process order, so equal tensors and metadata gave different bytes in two runs."""
    with open(file, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.get("__metadata__") or {}
        header["__metadata__"] = dict(sorted(meta.items()))
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(meta) > 1 and len(raw) <= size:  # the same entries re-ordered: never longer; padding stays spaces
            f.seek(8)
            f.write(raw.ljust(size, b" "))


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


# -- state trees: tensors in safetensors, the structure as JSON in its header (no pickle) -----------------
_TENSOR, _TUPLE, _ITEMS = "$tensor", "$tuple", "$items"


def _tree_json(x: Any, tensors: dict[str, Any], storages: set[int]) -> Any:
    """The JSON structure of ``x`` for :func:`save_tree_atomic`, its tensors put in ``tensors``. Module level: a
    recursive closure is a reference cycle, which kept ``tensors`` alive after the save until a gc run."""
    import torch

    if isinstance(x, torch.Tensor):  # a contiguous CPU tensor over its whole storage is written as it is (no copy)
        t = x.detach().to("cpu")
        s = t.untyped_storage() if t.layout == torch.strided else None
        if s is None or t.is_conj() or t.is_neg() or not t.is_contiguous() or t.data_ptr() != s.data_ptr() \
                or s.nbytes() != t.nbytes or s.data_ptr() in storages:
            t = t.clone().contiguous()  # views, and a storage met before: safetensors refuses shared memory
        storages.add(t.untyped_storage().data_ptr())
        tensors[name := f"t{len(tensors)}"] = t
        return {_TENSOR: name}
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, numbers.Real):
        return int(x) if isinstance(x, numbers.Integral) else float(x)
    if isinstance(x, (tuple, list)):
        out = [_tree_json(v, tensors, storages) for v in x]
        return {_TUPLE: out} if isinstance(x, tuple) else out
    if isinstance(x, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in x):
            return {k: _tree_json(v, tensors, storages) for k, v in x.items()}
        return {_ITEMS: [[_tree_json(k, tensors, storages), _tree_json(v, tensors, storages)] for k, v in x.items()]}
    raise TypeError(f"cannot save a {type(x).__name__} in a state tree (tensors, containers and JSON values only)")


def save_tree_atomic(file: Path, tree: Any) -> None:
    """Save ``tree`` — nested dicts, lists and tuples of tensors, str, int, float, bool and None —
    as one safetensors file written atomically: the tensors as tensors, the rest as JSON in the
    header. :func:`load_tree` rebuilds it (dict key types and tuples included) without running code.

    Raises:
        TypeError: ``tree`` holds another type.
    """
    tensors: dict[str, Any] = {}
    structure = json.dumps(_tree_json(tree, tensors, set()))
    save_safetensors_atomic(tensors, file, metadata={"format": "pt", "gradedit_tree": structure})


def load_tree(file: Path, fix: str) -> Any:
    """The tree :func:`save_tree_atomic` wrote to ``file``; ``fix`` ends every error message.

    Raises:
        FileNotFoundError: the file is missing.
        ArtifactError: it is not a state tree (corrupt, truncated, or not safetensors — e.g. a pickle).
    """
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing; {fix}")
    try:
        with safe_open(str(file), framework="pt") as fh:
            structure = json.loads((fh.metadata() or {})["gradedit_tree"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ArtifactError(f"{file} is not a readable gradedit state file ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); {fix}") from None

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if set(x) == {_TENSOR}:
                return tensors[x[_TENSOR]]
            if set(x) == {_TUPLE}:
                return tuple(dec(v) for v in x[_TUPLE])
            if set(x) == {_ITEMS}:
                return {dec(k): dec(v) for k, v in x[_ITEMS]}
            return {k: dec(v) for k, v in x.items()}
        return x

    try:
        return dec(structure)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{file} has an inconsistent structure ({type(err).__name__}: {err}); {fix}") from None
