"""Gradient-store extraction with 2 gloo processes == 1 process: the same index and the same tensor
bytes in every shard; each rank extracts a share; a damaged shard is redone once, by one rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit import dist
from gradedit.data.schema import PairDataset
from gradedit.gradiend.gradients import GradientEngine
from gradedit.gradiend.rows import rows_of
from gradedit.gradiend.store import GradientStore, extract_store, store_key
from gradedit.models.param_map import ParamMap
from pronoun_rows import pronoun_records

CLASSES = ("masc", "fem")


def _setup(lm: ge.LanguageModel):
    data = PairDataset.from_records(pronoun_records(), target_classes=list(CLASSES))
    engine = GradientEngine(lm, ["*.mlp.*"])
    full = ParamMap.from_params(engine.params)
    pmap = full.select(torch.arange(0, full.size, 7))
    rows = rows_of(data.split("train"), lm)
    key = store_key(engine, rows, pmap, classes=CLASSES, split="train", source="alternative", target="diff",
                    dtype="fp32")
    return engine, rows, pmap, key


def _worker(root: str) -> None:
    torch.set_num_threads(1)
    engine, rows, pmap, key = _setup(ge.load_model("tiny-llama"))
    out = Path(root)
    counts = {}
    counted = {"n": 0}
    original = engine.gradient_vectors

    def count(*args, **kwargs):
        counted["n"] += 1
        return original(*args, **kwargs)

    engine.gradient_vectors = count  # type: ignore[method-assign]
    with extract_store(out / "auto", engine, rows, pmap, key) as st:
        counts["auto"] = (st.extracted_rows, counted["n"])
    with extract_store(out / "ten", engine, rows, pmap, key, shard_rows=10) as st:
        counts["ten"] = (st.extracted_rows, counted["n"])
    dist.barrier()  # every rank has opened the store before rank 0 damages it
    if dist.is_main():
        (out / "ten" / "shard_00003.safetensors").unlink()
        shard = out / "ten" / "shard_00005.safetensors"
        shard.write_bytes(shard.read_bytes()[:-50])
    dist.barrier()
    with extract_store(out / "ten", engine, rows, pmap, key, shard_rows=10) as st:
        counts["repair"] = (st.extracted_rows, counted["n"])
    with extract_store(out / "ten", engine, rows, pmap, key, shard_rows=10) as st:
        counts["reuse"] = (st.extracted_rows, counted["n"])
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(counts))


def _tensors(folder: Path) -> dict[str, tuple[dict[str, str], dict[str, bytes]]]:
    from safetensors import safe_open

    out = {}
    for p in sorted(folder.glob("shard_*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            out[p.name] = (f.metadata(), {k: f.get_tensor(k).view(torch.uint8).numpy().tobytes() for k in f.keys()})  # noqa: SIM118
    return out


@pytest.fixture(scope="module")
def two_process_stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist_store")
    dist.launch_local(_worker, 2, str(root))
    return root


def test_two_process_store_equals_one_process_store(two_process_stores: Path, tiny_llama, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks ran with one thread each
    try:
        engine, rows, pmap, key = _setup(tiny_llama)
        one = extract_store(tmp_path / "one", engine, rows, pmap, key, shard_rows=10)
    finally:
        torch.set_num_threads(threads)
    # same shard plan: the same index.json and, shard by shard, the same header and tensor bytes
    two = two_process_stores / "ten"
    assert (two / "index.json").read_bytes() == (tmp_path / "one" / "index.json").read_bytes()
    assert _tensors(two) == _tensors(tmp_path / "one")
    # the automatic plan gives each of the 2 ranks one shard; rows read back are the same bits
    auto = GradientStore.open(two_process_stores / "auto", key)
    assert [(s.start, s.stop) for s in auto.index.shards] == [(0, 32), (32, 64)]
    for kind in key.kinds:
        a, b = auto.rows(kind, range(len(rows))), one.rows(kind, range(len(rows)))
        assert a.view(torch.int32).equal(b.view(torch.int32)), kind
        assert a.abs().sum() > 0


def test_each_rank_extracts_its_share_and_repairs_only_damaged_shards(two_process_stores: Path) -> None:
    r0, r1 = (json.loads((two_process_stores / f"rank{r}.json").read_text()) for r in range(2))
    # extracted_rows is the total over ranks; the second number counts this rank's own gradient calls
    assert r0["auto"] == [64, 32] and r1["auto"] == [64, 32]
    # 7 shards of 10 rows (last 4): rank 0 takes shards 0,2,4,6 (34 rows), rank 1 shards 1,3,5 (30)
    assert r0["ten"] == [64, 32 + 34] and r1["ten"] == [64, 32 + 30]
    # shard 3 deleted, shard 5 truncated: 20 rows redone, one shard per rank; then nothing to do
    assert r0["repair"] == [20, 66 + 10] and r1["repair"] == [20, 62 + 10]
    assert r0["reuse"] == [0, 76] and r1["reuse"] == [0, 72]
