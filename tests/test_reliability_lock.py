"""One process per run folder (issue 18.2): ``gradedit train`` and ``decompose(out=...)`` lock their
folder; a second process gets one clear line (CLI exit code 2) and writes nothing; the lock goes
when its holder ends, even by kill -9. Every test runs real separate processes on tiny models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gradedit._files import FOLDER_LOCK, lock_folder
from gradedit.data.schema import PairDataset
from gradedit.decompose import Decomposition, decompose
from gradedit.errors import FolderLocked
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

TIMEOUT = 180
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GRADEDIT_NO_PROGRESS": "1"}
CLI = [sys.executable, "-c", "import sys; from gradedit.cli import main; sys.exit(main())"]

# waits inside the locked section until the test creates the "go" file
PAUSED_TRAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gradedit.gradiend.train import loop
    from gradedit.cli import main
    ready, go = Path(sys.argv[1]), Path(sys.argv[2])
    original = loop.SeedTrainer.run
    def run(self):
        ready.write_text("in")
        end = time.time() + 170
        while not go.exists() and time.time() < end:
            time.sleep(0.05)
        return original(self)
    loop.SeedTrainer.run = run
    sys.exit(main(sys.argv[3:]))
""")

PAUSED_DECOMPOSE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from gradedit.decompose import decompose
    ready, go, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 6))
    def wait(step, terms):
        if step == 1:
            ready.write_text("in")
            end = time.time() + 170
            while not go.exists() and time.time() < end:
                time.sleep(0.05)
    decompose(net, "0", 3, torch.randn(256, 6, generator=torch.Generator().manual_seed(1)), steps=6, batch_size=32,
              objective="layer", seed=0, out=out, on_step=wait)
""")


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    end = time.time() + TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first process ended early: {proc.communicate()}")
        if time.time() > end:
            proc.kill()
            raise AssertionError("the first process never reached its locked section")
        time.sleep(0.05)


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (but the lock) with its modification time in ns."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.name != FOLDER_LOCK}


def test_second_gradedit_train_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "pairs.csv"
    PairDataset.from_records(pronoun_records(SUBJECTS[:6], VERBS[:3], rest="left."),
                             target_classes=["masc", "fem"]).save(data)
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("The weather was fine.\nA river runs through the valley.\n")
    run, ready, go = tmp_path / "run", tmp_path / "ready", tmp_path / "go"
    args = ["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem", "--out", str(run),
            "--neutral", str(neutral), "--max-steps", "4", "--eval-steps", "2", "--pre-prune", "100"]
    first = subprocess.Popen([sys.executable, "-c", PAUSED_TRAIN, str(ready), str(go), *args], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, first)
        before = _files(run)
        assert "data.csv" in before  # the first run has started writing
        second = subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
        assert second.returncode == 2, second
        errors = [line for line in second.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
        assert errors == [f"gradedit: error: {run} is in use by process {first.pid} (another gradedit run writes "
                         f"there); wait for it to end or give another folder"], second.stderr
        assert _files(run) == before  # the refused process wrote nothing
    finally:
        go.write_text("go")
        out, err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, err
    assert (run / "model" / "config.json").is_file() and (run / "seed_report.json").is_file()
    with lock_folder(run):  # released by the first process's exit
        pass


def test_second_decompose_into_the_same_out_is_refused(tmp_path: Path) -> None:
    out, ready, go = tmp_path / "dec", tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", PAUSED_DECOMPOSE, str(ready), str(go), str(out)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6))
    x = torch.randn(256, 6)
    try:
        _wait_for(ready, first)
        before = _files(out)
        with pytest.raises(FolderLocked, match=rf"^{out} is in use by process {first.pid} "):
            decompose(net, "0", 3, x, steps=6, batch_size=32, objective="layer", seed=0, out=out)
        assert _files(out) == before
    finally:
        go.write_text("go")
        _, err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, err
    assert Decomposition.load(out).meta["steps_done"] == 6


def test_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    folder, ready = tmp_path / "run", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from gradedit._files import lock_folder
        with lock_folder(Path({str(folder)!r})):
            Path({str(ready)!r}).write_text("in")
            time.sleep(170)
    """)], env=ENV)
    try:
        _wait_for(ready, holder)
        with pytest.raises(FolderLocked, match=f"in use by process {holder.pid}"), lock_folder(folder):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
    with lock_folder(folder):  # the kernel dropped the dead process's lock; its file is still there
        assert (folder / FOLDER_LOCK).read_text() == f"{os.getpid()}\n"
    assert (folder / FOLDER_LOCK).read_text() == ""


def test_lock_is_exclusive_within_a_process_and_released_on_error(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "run"
    with lock_folder(folder):
        assert folder.is_dir()
        with pytest.raises(FolderLocked, match=f"^{folder} is in use by process {os.getpid()} "), lock_folder(folder):
            pass
    with pytest.raises(RuntimeError, match="boom"), lock_folder(folder):
        raise RuntimeError("boom")
    with lock_folder(folder):
        pass
