"""gradedit.dist: single process = no group and no-ops; with 2 gloo processes the reductions,
the differentiable sum, JSON broadcast/gather and error propagation agree with 1-process oracles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from gradedit import dist
from gradedit.errors import ArtifactError, ConfigError


@pytest.mark.parametrize("n, world", [(0, 1), (7, 1), (7, 2), (8, 2), (5, 3), (2, 4), (64, 3)])
def test_shard_range_partitions_in_order(n: int, world: int) -> None:
    blocks = [dist.shard_range(n, r, world) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))  # disjoint, complete, in rank order
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert dist.shard(list("abcdefg"), 1, 2) == list("efg")


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    assert dist.detect() is None and dist.init() is False and not tdist.is_initialized()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    t = torch.arange(3.0, requires_grad=True)
    assert dist.all_reduce_sum(t) is t and dist.sum_with_grad(t) is t
    assert dist.broadcast_json({"a": 1}) == {"a": 1} and dist.all_gather_json(2) == [2]
    assert dist.all_gather_rows(t) is t
    assert dist.shard_range(5) == range(5) and dist.main_decides(lambda: 3) == 3
    dist.barrier()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.detect() is None


def test_bad_launcher_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but RANK=None.*torchrun"):
        dist.detect()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        dist.detect()


def _worker(out: str) -> None:
    r, w = dist.rank(), dist.world_size()
    res: dict[str, object] = {"rank": r, "world": w, "env": dist.detect().__dict__ if dist.detect() else None}
    res["sum"] = dist.all_reduce_sum(torch.tensor([1.0 + r, 10.0])).tolist()
    # a loss built from a global sum: L = (Σ_ranks x_r·a)^2 with x_r this rank's data
    a = torch.tensor(2.0, requires_grad=True)
    x = torch.tensor([1.0, 3.0][r])
    loss = dist.sum_with_grad(x * a) ** 2
    loss.backward()
    dist.average_gradients([a])
    res["loss"], res["grad"] = float(loss), float(a.grad)
    res["bcast"] = dist.broadcast_json({"from": r, "txt": "ünï"})
    res["gather"] = dist.all_gather_json([r] * (r + 1))
    p = torch.nn.Parameter(torch.full((2,), float(r)))
    dist.broadcast_tensors([p])
    res["broadcast_tensor"] = p.tolist()
    rows = torch.tensor([[r + 0.1, 1 / 3]] * (2 - r), dtype=torch.float64)  # rank 0: 2 rows, rank 1: 1 row
    res["rows"] = dist.all_gather_rows(rows).tolist()
    res["rows_dtype"] = str(dist.all_gather_rows(rows.float()).dtype)
    res["rows_empty"] = dist.all_gather_rows(torch.arange(3 * (1 - r)).view(-1, 3)).tolist()  # rank 1: no rows

    def fail() -> None:
        raise ArtifactError("store is broken; delete it")

    try:
        dist.main_decides(fail)
    except ArtifactError as err:
        res["main_error"] = str(err)
    try:
        dist.check_all_ok(ValueError("bad row") if r == 1 else None)
    except Exception as err:  # noqa: BLE001
        res["all_ok_error"] = f"{type(err).__name__}: {err}"
    Path(out, f"rank{r}.json").write_text(json.dumps(res))


def test_two_processes_agree_with_one_process_oracles(tmp_path: Path) -> None:
    dist.launch_local(_worker, 2, str(tmp_path))
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, got in enumerate(res):
        assert got["rank"] == r and got["world"] == 2 and got["env"]["master_addr"] == "127.0.0.1"
        assert got["sum"] == [3.0, 20.0]
        # one process: L = ((1 + 3) a)^2 = 64 at a = 2, dL/da = 2 (4a) 4 = 64
        assert got["loss"] == 64.0 and got["grad"] == 64.0
        assert got["bcast"] == {"from": 0, "txt": "ünï"}
        assert got["gather"] == [[0], [1, 1]]
        assert got["broadcast_tensor"] == [0.0, 0.0]
        assert got["rows"] == [[0.1, 1 / 3], [0.1, 1 / 3], [1.1, 1 / 3]]  # rank order, float64 bits kept
        assert got["rows_dtype"] == "torch.float32" and got["rows_empty"] == [[0, 1, 2]]
        assert "store is broken" in got["main_error"]
    assert res[1]["main_error"].startswith("rank 0 failed: ArtifactError")
    assert res[0]["all_ok_error"] == "GradeditError: rank 1 failed: ValueError: bad row"
    assert res[1]["all_ok_error"] == "ValueError: bad row"
