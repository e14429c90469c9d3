"""The command line under ``torchrun --nproc_per_node 2 -m gradedit``: ``evaluate decoder``,
``evaluate encoder`` and ``blast`` give the 1-process results (rank 0 alone writes and prints);
``rewrite`` and ``score`` refuse a launcher in one line (``train`` runs under it: test_dist_train.py);
``--device`` is checked and reaches ``load_model`` (auto = the CPU here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
import gradedit.models.loading as loading
from gradedit.cli import main
from gradedit.cli.launch import DEVICE_ENV
from gradedit.data.schema import PairDataset
from gradedit.edits import WeightEdit
from gradedit.errors import ConfigError
from gradedit.models.loading import default_device, resolve_device
from json_close import assert_json_close
from pronoun_rows import pronoun_records

NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the lazy dog.",
           "Numbers like 1, 2, 3 and symbols appear too.", "The teacher knows the city is quiet.",
           "Le chat noir dort sur la chaise."]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gradedit"]
# accelerate's torchrun launcher is ``--multi_gpu``; on a CPU-only machine the ranks join with gloo. (``--cpu
# --num_processes 2`` would start ONE process: accelerate's multi-CPU mode needs an MPI config file.)
ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
              "-m", "gradedit"]


IGNORED = ("seconds", "elapsed_s", "fingerprint")  # timings; the cache fingerprint holds paths


def _torchrun(args: list[str], launcher: list[str] = TORCHRUN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADEDIT_NO_PROGRESS": "1"}
    return subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (1 process, in-process CLI)."""
    root = tmp_path_factory.mktemp("dist_cli")
    data = PairDataset.from_records(pronoun_records(), target_classes=["masc", "fem"]).save(root / "data.csv")
    (root / "neutral.txt").write_text("\n".join(NEUTRAL), encoding="utf-8")
    code = main(["train", "--model", "tiny-llama", "--data", str(data), "--classes", "masc", "fem", "--out",
                 str(root / "run"), "--neutral", str(root / "neutral.txt"), "--max-steps", "4", "--eval-steps", "2",
                 "--seeds", "1", "--device", "cpu"])
    assert code == 0
    return root / "run"


def _copies_one_done(run: Path, tmp_path: Path, *evaluations: list[str]) -> tuple[Path, Path]:
    """Two copies of ``run``; ``gradedit evaluate <what> ...`` done in this process (1 thread) on the first."""
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(run, one)
    shutil.copytree(run, two)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for what in evaluations:
            assert main(["evaluate", what[0], str(one), *what[1:]]) == 0
    finally:
        torch.set_num_threads(threads)
    return one, two


def test_evaluate_under_torchrun_equals_one_process(run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    one, two = _copies_one_done(run, tmp_path, ["decoder", "--target-class", "fem"], ["encoder"])
    capsys.readouterr()
    for what in (["decoder", "--target-class", "fem"], ["encoder"]):
        res = _torchrun(["evaluate", what[0], str(two), *what[1:]])
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count("(2 processes)") == 1  # rank 0 alone prints
    ref, got = (json.loads((d / "decoder_results.json").read_text()) for d in (one, two))
    assert got["selections"]["fem"]["learning_rate"] == ref["selections"]["fem"]["learning_rate"]
    assert_json_close(ref, got, ignore=IGNORED)
    ref, got = (json.loads((d / "encoder_results_test.json").read_text()) for d in (one, two))
    assert_json_close(ref, got, ignore=IGNORED)
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())  # nothing else written


def test_accelerate_launch_runs_the_cli_in_two_processes(run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``accelerate launch ... -m gradedit evaluate encoder`` joins 2 ranks and writes the 1-process result."""
    one, two = _copies_one_done(run, tmp_path, ["encoder"])
    capsys.readouterr()
    res = _torchrun(["evaluate", "encoder", str(two)], launcher=ACCELERATE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("(2 processes)") == 1  # two ranks joined; rank 0 alone prints
    ref, got = (json.loads((d / "encoder_results_test.json").read_text()) for d in (one, two))
    assert_json_close(ref, got, ignore=IGNORED)


def test_blast_under_torchrun_equals_one_process(tmp_path: Path, tiny_llama: ge.LanguageModel,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    name, p = [(n, p) for n, p in ge.select_parameters(tiny_llama.model).items() if p.ndim == 2][2]
    edit = WeightEdit.dense({name: torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.3},
                            metadata={"base_model": "tiny-llama"})
    edit.save(tmp_path / "edit")
    args = ["blast", str(tmp_path / "edit"), "--langs", "en,de", "--n-texts", "3", "--target", "de"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    res = _torchrun([*args, "--out", str(tmp_path / "two")])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("(2 processes)") == 1 and res.stdout.count("report:") == 1
    ref, got = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert_json_close(ref, got, ignore=IGNORED)
    assert abs(ref["ce_delta"]["de"]) > 1e-4  # the edit changes something the comparison could miss


@pytest.mark.parametrize("argv", [["rewrite", "RUN", "--target-class", "fem", "--out", "o"],
                                  ["score", "--model", "tiny-llama", "--text", "Hello there."]])
def test_single_process_commands_refuse_a_launcher(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"gradedit {argv[0]} runs in one process" in err and "without torchrun" in err and err.count("\n") == 1


def test_device_option(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--model", "tiny-llama", "--text", "Hello there.", "--device", "gpu"]) == 2
    assert "'gpu' is not a device" in capsys.readouterr().err
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == auto and resolve_device(None) == torch.device("cpu")
    with default_device("cpu"):
        assert ge.load_model("tiny-llama").device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA; use --device cpu or --device auto"):
            resolve_device("cuda")
        assert main(["score", "--model", "tiny-llama", "--text", "Hello there.", "--device", "cuda"]) == 2
        assert "no CUDA" in capsys.readouterr().err
    seen: list[Any] = []
    real = loading.resolve_device
    monkeypatch.setattr(loading, "resolve_device",
                        lambda d: seen.append((d, os.environ.get(loading.DEVICE_ENV))) or real(d))
    monkeypatch.delenv(loading.DEVICE_ENV, raising=False)
    assert main(["score", "--model", "tiny-llama", "--text", "Hello there."]) == 0
    # load_model (no device given) saw the CLI's --device default, auto; the variable is gone afterwards
    assert seen == [(None, "auto")] and json.loads(capsys.readouterr().out)["tokens"] > 0
    assert loading.DEVICE_ENV not in os.environ and loading.DEVICE_ENV == DEVICE_ENV
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
