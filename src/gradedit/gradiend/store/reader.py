"""Reading a finished gradient store: every shard memory-mapped (safetensors ``safe_open``), rows on demand."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import ArtifactError
from .index import StoreIndex, StoreKey, shard_problem

logger = logging.getLogger(__name__)


class GradientStore:
    """A complete gradient store opened for reading.

    Each shard is opened once with ``safetensors.safe_open`` (memory-mapped: a row read copies only
    that row's bytes out of the page cache). Use :meth:`open`; close with :meth:`close` or ``with``.
    """

    def __init__(self, folder: Path, index: StoreIndex, handles: list[Any]) -> None:
        self.folder, self.index, self._handles = folder, index, handles
        self._starts = [s.start for s in index.shards]
        #: rows whose gradients the call that returned this store computed (0: reused as it was)
        self.extracted_rows = 0

    @classmethod
    def open(cls, folder: str | Path, expect: StoreKey | None = None) -> GradientStore:
        """Open the store in ``folder``, checking every shard.

        Args:
            folder: the store folder (``index.json`` + shards).
            expect: when given, the store must have been made with exactly this key (same data
                fingerprint, param map, base-model weights, source/target and dtype).

        Raises:
            FileNotFoundError: ``folder`` holds no store.
            ArtifactError: the store is unfinished, was made for another key, or a shard is missing,
                truncated or foreign. The message names the file and the fix.
        """
        from safetensors import safe_open

        folder = Path(folder)
        index = StoreIndex.load(folder)
        if expect is not None and index.key != expect:
            raise ArtifactError(f"gradient store {folder} was extracted for other inputs: "
                                f"{'; '.join(index.key.differences(expect))}; delete {folder} to extract it again")
        if not index.complete:
            raise ArtifactError(f"gradient store {folder} is unfinished (extraction was interrupted); run the "
                                "extraction again: it resumes after the last finished shard")
        handles = []
        for shard in index.shards:
            problem = shard_problem(folder, shard, index.key)
            if problem:
                raise ArtifactError(f"gradient store shard {folder / shard.file} is {problem}; delete that file "
                                    "and run the extraction again (it rewrites only the missing shards)")
            handles.append(safe_open(str(folder / shard.file), framework="pt"))
        return cls(folder, index, handles)

    @property
    def key(self) -> StoreKey:
        return self.index.key

    def __len__(self) -> int:
        return self.index.key.n_rows

    def __enter__(self) -> GradientStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the shard handles (their memory maps go with them)."""
        self._handles = []

    def row(self, kind: str, i: int) -> torch.Tensor:
        """Row ``i``'s stored gradient of ``kind`` as float32 -> [n]."""
        if kind not in self.key.kinds:
            raise KeyError(f"this store holds {list(self.key.kinds)} gradients, not {kind!r}")
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for a store of {len(self)} rows")
        if not self._handles:
            raise ValueError(f"gradient store {self.folder} is closed")
        k = bisect.bisect_right(self._starts, i) - 1
        local = i - self._starts[k]
        return self._handles[k].get_slice(kind)[local : local + 1][0].float()

    def rows(self, kind: str, rows: Sequence[int]) -> torch.Tensor:
        """Stored gradients of ``kind`` for ``rows`` as float32 -> [len(rows), n]."""
        return torch.stack([self.row(kind, int(i)) for i in rows])

    def example(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(source, target)`` of one training example made of ``rows`` -> ([n], [n]) float32.

        One row: its stored vectors, unchanged (bit-identical to the live gradient in fp32). Several
        rows: their mean (the gradient of the mean loss, as the live trainer computes it from one
        batched pass; equal up to float rounding).
        """
        def read(kind: str) -> torch.Tensor:
            return self.row(kind, int(rows[0])) if len(rows) == 1 else self.rows(kind, rows).mean(0)

        source = read(self.key.source)
        return source, (source if self.key.target == self.key.source else read(self.key.target))
