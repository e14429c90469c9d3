"""Extracting a gradient store: each training row's source/target gradient, computed once, sharded.

The base model never changes during GRADIEND training, so a row's (pre-pruned) gradient is a
constant: computing it once and reading it back every epoch and every seed gives the same training
as recomputing it. Extraction is resumable: the index (with the shard plan) is written first, each
shard is written atomically, and a rerun skips every shard that is already finished.

Under ``torchrun`` / ``accelerate launch`` (a process group of N ranks, see :mod:`gradedit.dist`)
rank 0 locks the folder, writes or checks the index and picks the shards still to do; each rank
extracts every N-th of them with its own copy of the model; after a barrier rank 0 marks the index
complete. Each row is the same one-row call as in one process, so the stored tensors are the same
bits (at the same torch thread count); a new store gets at least N shards so that every rank has work.
The folder must be on a file system every rank sees (one machine, or a shared mount).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch

from ... import dist
from ..._files import lock_folder, save_safetensors_atomic
from ..._progress import progress
from ...errors import ArtifactError, TrainingError
from ...models.param_map import ParamMap
from ..gradients import GradientEngine, Source
from ..rows import Rows
from .index import (
    DEFAULT_SHARD_BYTES,
    INDEX_FILE,
    STORE_DTYPES,
    Shard,
    StoreIndex,
    StoreKey,
    data_fingerprint,
    model_fingerprint,
    param_map_hash,
    plan_shards,
    shard_metadata,
    shard_problem,
)
from .reader import GradientStore

logger = logging.getLogger(__name__)

#: a progress log line at least this often (seconds)
LOG_EVERY_S = 20.0
#: free space that must remain after the store is written
DISK_RESERVE_BYTES = 256 * 2**20


def store_key(engine: GradientEngine, rows: Rows, param_map: ParamMap, *, classes: Sequence[str], split: str,
              source: Source, target: Source, dtype: str) -> StoreKey:
    """The key of the store of ``rows``' gradients over ``param_map`` (hashes the base model's weights)."""
    return StoreKey(data=data_fingerprint(rows, classes, split), param_map=param_map_hash(param_map),
                    model=model_fingerprint(engine.lm.model), source=source, target=target, dtype=dtype,
                    n_rows=len(rows), n_inputs=param_map.size)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def extract_store(folder: str | Path, engine: GradientEngine, rows: Rows, param_map: ParamMap, key: StoreKey, *,
                  shard_bytes: int = DEFAULT_SHARD_BYTES, shard_rows: int | None = None) -> GradientStore:
    """Make sure ``folder`` holds the complete store for ``key`` and open it.

    A complete store with this key is opened as is; an unfinished one is resumed (finished shards
    are kept, missing or damaged ones are extracted again); an empty folder gets a new store. The
    folder is locked while extracting (one writer at a time).

    Args:
        folder: the store folder (created if needed).
        engine: computes the gradients (its model must be the one ``key.model`` was hashed from).
        rows: the training rows, in store order (row ``i`` of the store is ``rows`` row ``i``).
        param_map: the input space (which entries of which parameters).
        key: from :func:`store_key`.
        shard_bytes: target shard size; ignored when resuming (the stored plan is kept).
        shard_rows: rows per shard instead of ``shard_bytes`` (tests).

    Raises:
        ArtifactError: ``folder`` holds a store made for another key (other data, param map, base
            model, source/target or dtype). It is never overwritten: delete it to extract again.
        TrainingError: the free disk space cannot hold the missing shards.
    """
    folder = Path(folder)
    if len(rows) != key.n_rows or param_map.size != key.n_inputs:
        raise ValueError(f"the key is for {key.n_rows} rows x {key.n_inputs} entries, got {len(rows)} x "
                         f"{param_map.size}")
    if dist.init():
        return _extract_distributed(folder, engine, rows, param_map, key, shard_bytes, shard_rows)
    with lock_folder(folder):
        index = _index_for(folder, key, shard_bytes, shard_rows)
        if index.complete:
            try:
                store = GradientStore.open(folder, key)
                logger.info("reusing the gradient store in %s (%d rows x %d entries, %s)", folder, key.n_rows,
                            key.n_inputs, key.dtype)
                return store
            except ArtifactError as err:
                logger.warning("%s; extracting the damaged shards again", err)
                index.complete = False
                index.save(folder)
        todo = [s for s in index.shards if shard_problem(folder, s, key)]
        _check_disk(folder, key, sum(s.rows for s in todo))
        computed = _extract_shards(folder, engine, rows, param_map, index, todo)
        for s in index.shards:
            s.bytes = (folder / s.file).stat().st_size
        index.complete = True
        index.save(folder)
    store = GradientStore.open(folder, key)
    store.extracted_rows = computed
    return store


def _extract_distributed(folder: Path, engine: GradientEngine, rows: Rows, param_map: ParamMap, key: StoreKey,
                         shard_bytes: int, shard_rows: int | None) -> GradientStore:
    """:func:`extract_store` with every rank extracting a share of the missing shards (see the module doc)."""
    world = dist.world_size()
    with contextlib.ExitStack() as stack:

        def plan() -> list[int]:  # rank 0, holding the folder lock until the store is complete
            stack.enter_context(lock_folder(folder))
            index = _index_for(folder, key, shard_bytes, shard_rows, min_shards=world)
            if index.complete:
                try:
                    GradientStore.open(folder, key).close()
                    return []
                except ArtifactError as err:
                    logger.warning("%s; extracting the damaged shards again", err)
                    index.complete = False
                    index.save(folder)
            todo = [k for k, s in enumerate(index.shards) if shard_problem(folder, s, key)]
            _check_disk(folder, key, sum(index.shards[k].rows for k in todo))
            return todo

        todo: list[int] = dist.main_decides(plan)
        if not todo:
            logger.info("reusing the gradient store in %s (%d rows x %d entries, %s)", folder, key.n_rows,
                        key.n_inputs, key.dtype)
            return GradientStore.open(folder, key)
        index = StoreIndex.load(folder)
        mine = [index.shards[k] for k in todo[dist.rank()::world]]
        logger.info("gradient store: %d shard(s) to extract over %d ranks", len(todo), world)
        failure: Exception | None = None
        computed = 0
        try:
            computed = _extract_shards(folder, engine, rows, param_map, index, mine)
        except Exception as err:  # noqa: BLE001 - every rank learns of it in check_all_ok
            failure = err
        dist.check_all_ok(failure)
        total = sum(dist.all_gather_json(computed))

        def finish() -> None:
            for s in index.shards:
                s.bytes = (folder / s.file).stat().st_size
            index.complete = True
            index.save(folder)

        dist.main_decides(finish)
    store = GradientStore.open(folder, key)
    store.extracted_rows = total
    return store


def _index_for(folder: Path, key: StoreKey, shard_bytes: int, shard_rows: int | None,
               min_shards: int = 1) -> StoreIndex:
    """The folder's index when it is for ``key``; a new one (written now) when there is none (with at
    least ``min_shards`` shards when there are that many rows)."""
    if (folder / INDEX_FILE).is_file():
        index = StoreIndex.load(folder)
        if index.key != key:
            raise ArtifactError(f"gradient store {folder} was extracted for other inputs: "
                                f"{'; '.join(index.key.differences(key))}; delete {folder} to extract it again "
                                "(or train in another experiment_dir)")
        return index
    if shard_rows is None and min_shards > 1:
        shard_rows = min(max(1, shard_bytes // max(1, key.row_bytes)), math.ceil(key.n_rows / min_shards))
    index = StoreIndex(key, plan_shards(key.n_rows, key.row_bytes, shard_bytes, shard_rows))
    index.save(folder)
    return index


def _check_disk(folder: Path, key: StoreKey, rows_todo: int) -> None:
    """Log the disk use and refuse when the free space cannot hold the rows still to write."""
    total = key.n_rows * key.row_bytes
    need = rows_todo * key.row_bytes
    free = shutil.disk_usage(folder).free
    logger.info("gradient store %s: %d rows x %d entries x %d kind(s) (%s) in %s = %s on disk; %s to write, "
                "%s free", folder, key.n_rows, key.n_inputs, len(key.kinds), "+".join(key.kinds), key.dtype,
                human_bytes(total), human_bytes(need), human_bytes(free))
    if need + DISK_RESERVE_BYTES > free:
        raise TrainingError(f"the gradient store needs {human_bytes(need)} more in {folder} but only "
                            f"{human_bytes(free)} is free (keeping {human_bytes(DISK_RESERVE_BYTES)} spare); free "
                            "disk space, use gradient_store='bf16' (half the size), pre-prune the input space, "
                            "or set gradient_store='off'")


def _extract_shards(folder: Path, engine: GradientEngine, rows: Rows, param_map: ParamMap, index: StoreIndex,
                    todo: list[Shard]) -> int:
    """Compute and write the shards in ``todo``; returns the number of rows computed."""
    key = index.key
    dtype = STORE_DTYPES[key.dtype]
    done = key.n_rows - sum(s.rows for s in todo)
    if not todo:
        return 0
    bar = progress(total=key.n_rows, initial=done, desc="gradient store", unit="row")
    t0 = last = time.time()
    computed = 0
    try:
        for shard in todo:
            bufs = {k: torch.empty(shard.rows, key.n_inputs, dtype=dtype) for k in key.kinds}
            for j, i in enumerate(range(shard.start, shard.stop)):
                # exactly the live trainer's call for a one-row example (same inputs -> same bits)
                vecs = engine.gradient_vectors([rows.texts[i]], rows.factual[[i]], rows.alternative[[i]],
                                               cast("list[Source]", [key.source, key.target]), param_map)
                for k in key.kinds:
                    bufs[k][j] = vecs[k]
                computed += 1
                bar.update(1)
                if time.time() - last >= LOG_EVERY_S:
                    logger.info("gradient store: %d/%d rows (%.2f s/row)", done + computed, key.n_rows,
                                (time.time() - t0) / computed)
                    last = time.time()
            save_safetensors_atomic(bufs, folder / shard.file, metadata=shard_metadata(key, shard))
    finally:
        bar.close()
    logger.info("gradient store: extracted %d rows in %.1f s (%.3f s/row) into %s", computed, time.time() - t0,
                (time.time() - t0) / max(1, computed), folder)
    return computed
