"""What a gradient store holds and what it was made from: the key, the shard plan, the index file.

A store folder holds ``index.json`` and ``shard_NNNNN.safetensors`` files. Shard ``k`` holds the
training rows ``[start, stop)`` as one ``[stop - start, n]`` tensor per gradient kind (``"diff"``,
``"factual"``, ``"alternative"``; one tensor when source and target are the same kind). Row ``i`` of
the store is row ``i`` of the training ``Rows`` it was extracted from; entry ``j`` is input-space
position ``j`` of the param map.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from ..._files import read_json_object, write_json_atomic
from ...errors import ArtifactError
from ...models.param_map import ParamMap
from ..rows import Rows

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
#: the folder below ``experiment_dir`` that the trainer uses
STORE_DIR = "gradient_store"
StoreDtype = Literal["fp32", "bf16"]
STORE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: safetensors' dtype names of the store dtypes
SAFETENSORS_DTYPES = {"fp32": "F32", "bf16": "BF16"}
#: target size of one shard file
DEFAULT_SHARD_BYTES = 256 * 2**20


def _sha(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little") + p)
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def data_fingerprint(rows: Rows, classes: Sequence[str], split: str) -> str:
    """sha256 of the rows a store is extracted from: split name, target classes, and per row (in
    order) the prompt text, factual and alternative token ids and label."""
    head = json.dumps({"split": split, "classes": list(classes), "n": len(rows)}, sort_keys=True).encode()
    texts = json.dumps(list(rows.texts), ensure_ascii=False).encode()
    return _sha([head, texts, _tensor_bytes(rows.factual.long()), _tensor_bytes(rows.alternative.long()),
                 _tensor_bytes(rows.labels.float())])


def param_map_hash(pmap: ParamMap) -> str:
    """sha256 of which coordinates form the input space: names, shapes and selected flat indices."""
    meta = json.dumps({"names": pmap.names, "shapes": [list(s) for s in pmap.shapes]}).encode()
    return _sha([meta, *(b"all" if i is None else _tensor_bytes(i.long()) for i in pmap.indices)])


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's class and every parameter's name, shape, dtype and content (the gradients
    depend on all weights, not only the selected ones). Reads every weight once (≈0.3 s per GB)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, p in model.named_parameters():
        t = p.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"\n{name}:{tuple(p.shape)}:{p.dtype}\n".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().data)  # a memoryview: no copy
    return h.hexdigest()


@dataclass(frozen=True)
class StoreKey:
    """Everything the stored gradients depend on. Two stores with equal keys hold equal gradients.

    ``rows_per_gradient`` is the number of data rows behind each stored gradient: always 1 (per-row
    gradients); training with ``rows_per_gradient > 1`` averages stored rows.
    """

    data: str
    param_map: str
    model: str
    source: str
    target: str
    dtype: str
    n_rows: int
    n_inputs: int
    rows_per_gradient: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {sorted(STORE_DTYPES)}, got {self.dtype!r}")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The gradient kinds stored (source, then target unless it is the same kind)."""
        return tuple(dict.fromkeys((self.source, self.target)))

    @property
    def row_bytes(self) -> int:
        """Bytes one row takes on disk (every kind)."""
        return self.n_inputs * STORE_DTYPES[self.dtype].itemsize * len(self.kinds)

    @property
    def digest(self) -> str:
        """sha256 (16 hex) of the whole key; written into every shard's header."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreKey:
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"store key fields {sorted(d)} are not {sorted(names)}")
        return cls(**d)

    def differences(self, other: StoreKey) -> list[str]:
        """Human-readable list of the fields in which ``other`` differs from this key."""
        labels = {"data": "data fingerprint", "param_map": "param-map hash", "model": "base-model weights"}
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                shown = (f"{str(a)[:12]}… vs {str(b)[:12]}…" if f.name in labels else f"{a!r} vs {b!r}")
                out.append(f"{labels.get(f.name, f.name)} ({shown})")
        return out


@dataclass
class Shard:
    """One shard file: rows ``[start, stop)``; ``bytes`` is its size once the store is complete."""

    file: str
    start: int
    stop: int
    bytes: int | None = None

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class StoreIndex:
    """The contents of ``index.json``: the key, the shard plan, and whether extraction finished."""

    key: StoreKey
    shards: list[Shard]
    complete: bool = False
    format: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def disk_bytes(self) -> int:
        """Estimated size of all shards (tensor data; headers add well under 1 KB per shard)."""
        return self.key.n_rows * self.key.row_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "complete": self.complete, "key": self.key.to_dict(),
                "shards": [asdict(s) for s in self.shards], "disk_bytes_estimate": self.disk_bytes,
                "extra": self.extra}

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / INDEX_FILE, self.to_dict())

    @classmethod
    def load(cls, folder: Path) -> StoreIndex:
        """Read ``folder/index.json``.

        Raises:
            FileNotFoundError: there is no index (not a store, or extraction never started).
            ArtifactError: the index is corrupt or of an unknown format.
        """
        fix = f"delete {folder} and extract the store again"
        d = read_json_object(folder / INDEX_FILE, fix)
        if d.get("format") != FORMAT_VERSION:
            raise ArtifactError(f"{folder / INDEX_FILE} has store format {d.get('format')!r}, this gradedit reads "
                                f"{FORMAT_VERSION}; {fix}")
        try:
            key = StoreKey.from_dict(d["key"])
            shards = [Shard(**s) for s in d["shards"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{folder / INDEX_FILE} is not a gradient-store index ({err}); {fix}") from None
        check_plan(shards, key.n_rows, folder)
        return cls(key, shards, bool(d.get("complete")), extra=dict(d.get("extra") or {}))


def plan_shards(n_rows: int, row_bytes: int, shard_bytes: int = DEFAULT_SHARD_BYTES,
                shard_rows: int | None = None) -> list[Shard]:
    """Cut ``n_rows`` rows into shards of about ``shard_bytes`` (or exactly ``shard_rows`` rows)."""
    if n_rows < 1:
        raise ValueError("a gradient store needs at least one row")
    per = shard_rows if shard_rows is not None else max(1, shard_bytes // max(1, row_bytes))
    if per < 1:
        raise ValueError(f"shard_rows must be >= 1, got {per}")
    n = math.ceil(n_rows / per)
    return [Shard(f"shard_{k:05d}.safetensors", k * per, min(n_rows, (k + 1) * per)) for k in range(n)]


def check_plan(shards: list[Shard], n_rows: int, folder: Path) -> None:
    """The shards must cover rows 0..n_rows-1 in order without gaps."""
    pos = 0
    for s in shards:
        if s.start != pos or s.stop <= s.start or "/" in s.file or "\\" in s.file:
            raise ArtifactError(f"{folder / INDEX_FILE} has an invalid shard plan at {s.file!r}; delete {folder} "
                                "and extract the store again")
        pos = s.stop
    if pos != n_rows:
        raise ArtifactError(f"{folder / INDEX_FILE}: the shards cover {pos} rows, the key says {n_rows}; delete "
                            f"{folder} and extract the store again")


def shard_problem(folder: Path, shard: Shard, key: StoreKey) -> str:
    """Why ``shard``'s file cannot be used ("" when it is a finished shard of this key).

    Checks the file size (when recorded), that safetensors can read its header and that the data
    covers the whole file (a truncated file fails here), the key digest and row range in its
    metadata, and each kind's shape and dtype.
    """
    from safetensors import SafetensorError, safe_open

    path = folder / shard.file
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if shard.bytes is not None and size != shard.bytes:
        return f"{size} bytes instead of {shard.bytes} (truncated or overwritten)"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        return f"unreadable ({err}; truncated?)"
    if meta.get("store_key") != key.digest:
        return f"made for another store (key {meta.get('store_key')!r}, expected {key.digest!r})"
    if (meta.get("start"), meta.get("stop")) != (str(shard.start), str(shard.stop)):
        return f"holds rows {meta.get('start')}..{meta.get('stop')}, expected {shard.start}..{shard.stop}"
    want = {k: ([shard.rows, key.n_inputs], SAFETENSORS_DTYPES[key.dtype]) for k in key.kinds}
    if shapes != want:
        return f"holds tensors {shapes}, expected {want}"
    return ""


def shard_metadata(key: StoreKey, shard: Shard) -> dict[str, str]:
    """The safetensors header metadata written with a shard."""
    return {"format": "pt", "store_key": key.digest, "start": str(shard.start), "stop": str(shard.stop)}
