"""GRADIEND training data parallel (2 gloo processes) == 1 process: the same pre-pruned input space,
the same trained feature model (every tensor within 1e-6), the same kept step, r and losses, for live
gradients, the gradient store, a batch smaller than the world (a rank without examples), an MLM head,
the fused and the in-backward optimiser step, a run resumed under the launcher, and ``gradedit train``
under torchrun; rank 0 alone writes the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import gradedit as ge
from gradedit import dist
from gradedit.cli import main
from gradedit.data.schema import PairDataset
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from json_close import assert_json_close
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

# one module fixture launches the 2 processes: its tests stay on one xdist worker
pytestmark = pytest.mark.xdist_group("dist_train")

CLASSES = ["masc", "fem"]
# 192 rows: 20 validation rows, so the validation's jvp batches of 8 split unevenly over the ranks (2 + 1)
MORE_VERBS = [*VERBS, "hopes that", "feels that", "says that", "wrote me that", "guessed that", "told us that",
              "heard that"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gradedit"]
BASE: dict[str, Any] = dict(max_steps=8, eval_steps=2, train_batch_size=3, pre_prune_topk=0.2, pre_prune_samples=7,
                            eval_max_size=20)
# name -> config changes; 3 examples per step (2 + 1 over the ranks), 7 pre-pruning rows (4 + 3);
# "batch1": one example per step, rank 1 computes none; "head": an MLM head, trained by rank 0, loaded by all;
# "fused" / "in_backward": the other two ways FeatureOptimizer steps (each sums its gradients over ranks)
RUNS: dict[str, dict[str, Any]] = {"live": {}, "store": {"gradient_store": "fp32", "rows_per_gradient": 2},
                                   "batch1": {"train_batch_size": 1, "max_steps": 4},
                                   "head": {"mlm_head": True, "mlm_head_pooling": [1, 3], "max_steps": 4},
                                   "fused": {"fused_step": True, "max_steps": 4},
                                   "in_backward": {"optimizer_in_backward": True, "max_steps": 4}}
IGNORED = ("seconds", "directory", "experiment_dir", "folder")


def _data() -> PairDataset:
    return PairDataset.from_records(pronoun_records(SUBJECTS, MORE_VERBS), target_classes=CLASSES)


def _train(lm: ge.LanguageModel, out: Path, **changes: Any) -> Trainer:
    cfg = TrainConfig(**{**BASE, **changes, "experiment_dir": str(out)})
    tr = Trainer(lm, _data(), CLASSES, config=cfg)
    tr.train()
    return tr


def _summary(tr: Trainer) -> dict[str, Any]:
    return {"runs": tr.training_runs(), "model": {k: v.tolist() for k, v in _tensors(tr.feature_model).items()}}


def _tensors(fm: FeatureModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in fm.named_parameters()}


def _worker(root: str) -> None:
    torch.set_num_threads(1)
    lm = ge.load_model("tiny-llama")
    out: dict[str, Any] = {}
    for name, changes in RUNS.items():
        out[name] = _summary(_train(lm, Path(root, name), **changes))
    # interrupted after 4 steps (the checkpoint of step 4 in last/), resumed to 8 by the same 2 processes
    _train(lm, Path(root, "resumed"), max_steps=4)
    out["resumed"] = _summary(_train(lm, Path(root, "resumed")))
    Path(root, f"rank{dist.rank()}.json").write_text(json.dumps(out))


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist_train")
    dist.launch_local(_worker, 2, str(root))
    return root


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory, tiny_llama: ge.LanguageModel) -> Path:
    root = tmp_path_factory.mktemp("one_train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same gradient bits
    try:
        for name, changes in RUNS.items():
            _train(tiny_llama, root / name, **changes)
    finally:
        torch.set_num_threads(threads)
    return root


def _files(run: Path) -> list[str]:
    """Every path below ``run``; of the gradient store only its index (2 ranks plan >= 2 shards, 1 process 1)."""
    paths = (str(p.relative_to(run)) for p in run.rglob("*"))
    return sorted(p for p in paths if not p.startswith("gradient_store/shard_"))


def _load(folder: Path) -> dict[str, torch.Tensor]:
    return _tensors(FeatureModel.from_pretrained(folder))


def _assert_models_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        # measured: <= 2.5e-8 (weights up to 0.012; training moves them by > 1e-3)
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)


def _check_run(ref_dir: Path, got_dir: Path, ranks: list[dict[str, Any]]) -> None:
    # rank 0 wrote what one process writes, and nothing else was written (the other rank writes nothing)
    assert _files(got_dir) == _files(ref_dir)
    # the pre-pruned input space is the same (same entries), and so is the trained model
    ref_pre, got_pre = FeatureModel.from_pretrained(ref_dir / "pre_prune"), FeatureModel.from_pretrained(got_dir / "pre_prune")
    assert ref_pre.param_map == got_pre.param_map
    for sub in ("seed_0/best", "seed_0/last", "model"):
        _assert_models_close(_load(ref_dir / sub), _load(got_dir / sub))
    if (ref_dir / "mlm_head").exists():  # rank 0 fitted the same head as one process
        ref_head, got_head = (load_file(str(d / "mlm_head" / "mlm_head.safetensors")) for d in (ref_dir, got_dir))
        assert ref_head.keys() == got_head.keys() and all(torch.equal(ref_head[k], got_head[k]) for k in ref_head)
    # every rank returned the same model, bit for bit, and it is the one rank 0 saved
    saved = {k: v.tolist() for k, v in _load(got_dir / "model").items()}
    assert ranks[0]["model"] == ranks[1]["model"] == saved
    ref, got = (json.loads((d / "seed_0" / "result.json").read_text()) for d in (ref_dir, got_dir))
    assert got["best_step"] == ref["best_step"] and got["last_step"] == ref["last_step"]
    assert_json_close(ref, got, ignore=IGNORED, rel_tol=1e-5, abs_tol=1e-6)  # r, class means, every step's loss
    # the same history on every rank, bit for bit (every rank takes the same decisions); timings aside
    assert _untimed(ranks[0]["runs"]) == _untimed(ranks[1]["runs"])
    # training moved the model far beyond the tolerance (the comparison can fail)
    init = FeatureModel(ref_pre.param_map.size, 1, param_map=ref_pre.param_map, seed=0)
    best = _load(ref_dir / "seed_0" / "best")
    assert (best["decoder_weight"] - init.decoder_weight.detach()).abs().max() > 1e-3


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize("name", list(RUNS))
def test_two_process_training_equals_one_process(name: str, one: Path, two: Path) -> None:
    ranks = [json.loads((two / f"rank{r}.json").read_text())[name] for r in range(2)]
    _check_run(one / name, two / name, ranks)


def test_training_resumed_under_two_processes_equals_one_uninterrupted_process(one: Path, two: Path) -> None:
    ranks = [json.loads((two / f"rank{r}.json").read_text())["resumed"] for r in range(2)]
    res = json.loads((two / "resumed" / "seed_0" / "result.json").read_text())
    assert [s for s, _ in res["step_losses"]] == list(range(1, 9))  # 4 steps, then 4 more after the resume
    _check_run(one / "live", two / "resumed", ranks)


def test_gradedit_train_under_torchrun_equals_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data().save(tmp_path / "data.csv")
    (tmp_path / "neutral.txt").write_text("The city is quiet.\nThe house is old.\n", encoding="utf-8")
    args = ["train", "--model", "tiny-llama", "--data", str(data), "--classes", *CLASSES, "--neutral",
            str(tmp_path / "neutral.txt"), "--max-steps", "6", "--eval-steps", "2", "--batch-size", "3",
            "--pre-prune", "0.2", "--seeds", "1", "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADEDIT_NO_PROGRESS": "1"}
    res = subprocess.run([*TORCHRUN, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=900)  # niced on the busy machine: 117 s (27 s otherwise)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("(2 processes)") == 1 and res.stdout.count("validation r =") == 1  # rank 0 prints
    one, two = tmp_path / "one", tmp_path / "two"
    assert _files(two) == _files(one)
    _assert_models_close(_load(one / "model"), _load(two / "model"))
    ref, got = (json.loads((d / "seed_report.json").read_text()) for d in (one, two))
    assert got["seeds"][0]["best_step"] == ref["seeds"][0]["best_step"]
    assert_json_close(ref, got, ignore=IGNORED, rel_tol=1e-5, abs_tol=1e-6)
    assert json.loads((two / "neutral.json").read_text()) == json.loads((one / "neutral.json").read_text())
