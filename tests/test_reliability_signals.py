"""No lost work (issue 18.2): ``gradedit train`` and ``gradedit decompose`` interrupted by SIGINT,
SIGTERM or SIGKILL after their first checkpoint, then run again with the same command, end with
tensors bit-identical to an uninterrupted run; SIGINT/SIGTERM print one line saying how to resume
(exit 130/143). And the run folder is locked from before the model loads: ``gradedit evaluate`` /
``rewrite`` on a run that ``gradedit train`` is writing get FolderLocked. Real processes, tiny models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gradedit.cli import main
from gradedit.data.schema import PairDataset
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

TIMEOUT = 240
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GRADEDIT_NO_PROGRESS": "1"}
CLI = [sys.executable, "-c", "import sys; from gradedit.cli import main; sys.exit(main())"]

# runs the CLI; after the first checkpoint is on disk it writes the "ready" file and waits to be signalled
PAUSE_TRAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gradedit.gradiend.train import loop
    from gradedit.cli import main
    ready = Path(sys.argv[1])
    original = loop.SeedTrainer._checkpoint
    def checkpoint(self, *a, **kw):
        original(self, *a, **kw)
        if not ready.exists():
            ready.write_text("checkpointed")
            time.sleep(200)
    loop.SeedTrainer._checkpoint = checkpoint
    sys.exit(main(sys.argv[2:]))
""")

PAUSE_DECOMPOSE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gradedit.decompose import train
    from gradedit.cli import main
    ready = Path(sys.argv[1])
    original = train.save_checkpoint
    def save_checkpoint(*a, **kw):
        original(*a, **kw)
        if not ready.exists():
            ready.write_text("checkpointed")
            time.sleep(200)
    train.save_checkpoint = save_checkpoint
    sys.exit(main(sys.argv[2:]))
""")

# holds a finished run's folder: gradedit train again into it, paused inside the locked section
HOLD_TRAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gradedit.cli import train
    from gradedit.cli import main
    ready = Path(sys.argv[1])
    original = train._train
    def held(*a, **kw):
        ready.write_text("holding")
        time.sleep(200)
    train._train = held
    sys.exit(main(sys.argv[2:]))
""")

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("signal_inputs")
    data = folder / "pairs.csv"
    PairDataset.from_records(pronoun_records(SUBJECTS[:6], VERBS[:3], rest="left."),
                             target_classes=["masc", "fem"]).save(data)
    texts = folder / "texts.txt"
    texts.write_text("The weather was fine.\nA river runs through the valley.\nShe walked home in the rain.\n"
                     "The old man sold bread at the market.\n" * 4)
    return data, texts


def _train_args(data: Path, texts: Path, out: Path) -> list[str]:
    return ["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem", "--out", str(out),
            "--neutral", str(texts), "--max-steps", "6", "--eval-steps", "2", "--pre-prune", "200"]


def _decompose_args(texts: Path, out: Path) -> list[str]:
    return ["decompose", "--model", "tiny-llama", "--modules", "model.layers.0.mlp.up_proj", "-C", "4",
            "--texts", str(texts), "--out", str(out), "--steps", "6", "--batch-size", "4", "--seed", "0",
            "--set", "checkpoint_every=2", "faithfulness_warmup_steps=0", "seq_len=16"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def _interrupt(script: str, args: list[str], ready: Path, sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``args``, send ``sig`` once it has checkpointed, and return how it ended."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(ready), *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    end = time.time() + TIMEOUT
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"ended before its first checkpoint: {proc.communicate()}")
            if time.time() > end:
                raise AssertionError("never reached its first checkpoint")
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _tensors(file: Path) -> dict[str, object]:
    return dict(load_file(str(file)))


def _assert_same(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for name, t in ta.items():
        assert t.dtype == tb[name].dtype and t.shape == tb[name].shape and bool((t == tb[name]).all()), name  # type: ignore[attr-defined]


def _assert_resume_line(done: subprocess.CompletedProcess[str], sig: signal.Signals, what: str, out: Path) -> None:
    assert done.returncode == EXIT[sig], done.stderr
    if sig == signal.SIGKILL:
        return
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("gradedit:")]
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert lines == [f"gradedit: {what} interrupted ({name}); the checkpoints in {out} are kept: run the same "
                     f"command again to resume"], done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def train_reference(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_ref") / "run"
    done = _run(_train_args(*inputs, out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_train_resumes_bit_identically(sig, inputs, train_reference, tmp_path) -> None:
    out = tmp_path / "run"
    args = _train_args(*inputs, out)
    done = _interrupt(PAUSE_TRAIN, args, tmp_path / "ready", sig)
    _assert_resume_line(done, sig, "training", out)
    assert (out / "seed_0" / "last" / "trainer_state.safetensors").is_file()
    assert not (out / "model").exists()  # stopped mid-run
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp-*")) or sig == signal.SIGKILL
    again = _run(args)
    assert again.returncode == 0, again.stderr
    assert "resuming seed 0 from step 2" in again.stderr
    _assert_same(out / "model" / "model.safetensors", train_reference / "model" / "model.safetensors")
    _assert_same(out / "seed_0" / "best" / "model.safetensors", train_reference / "seed_0" / "best" / "model.safetensors")


@pytest.fixture(scope="module")
def decompose_reference(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dec_ref") / "dec"
    done = _run(_decompose_args(inputs[1], out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_decompose_resumes_bit_identically(sig, inputs, decompose_reference, tmp_path) -> None:
    out = tmp_path / "dec"
    args = _decompose_args(inputs[1], out)
    done = _interrupt(PAUSE_DECOMPOSE, args, tmp_path / "ready", sig)
    _assert_resume_line(done, sig, "decomposition", out)
    assert not (out / "decomposition.json").exists()
    again = _run(args)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr and "at step 2" in again.stderr
    _assert_same(out / "decomposition.safetensors", decompose_reference / "decomposition.safetensors")


@pytest.mark.parametrize("command", ["evaluate", "rewrite"])
def test_evaluate_and_rewrite_refuse_a_run_that_train_holds(command, inputs, train_reference, tmp_path,
                                                            capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(train_reference, run)
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_TRAIN, str(ready), *_train_args(*inputs, run)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + TIMEOUT
        while not ready.exists():
            assert holder.poll() is None, holder.communicate()
            assert time.time() < end
            time.sleep(0.05)
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".gradedit.lock"}
        args = (["evaluate", "decoder", str(run)] if command == "evaluate"
                else ["rewrite", str(run), "--target-class", "fem", "--out", str(tmp_path / "out")])
        code = main(args)
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("gradedit:")]
        assert code == 2
        assert err == [f"gradedit: error: {run} is in use by process {holder.pid} (another gradedit run writes "
                       f"there); wait for it to end or give another folder"]
        after = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".gradedit.lock"}
        assert after == before and not (tmp_path / "out").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)


def test_train_takes_its_lock_before_the_model_loads(inputs, tmp_path, monkeypatch) -> None:
    """The second ``gradedit train`` into a held folder fails without loading a model."""
    from gradedit._files import lock_folder
    from gradedit.errors import FolderLocked
    from gradedit.models import loading

    loaded: list[str] = []
    monkeypatch.setattr(loading, "_load_hf", lambda name, **kw: loaded.append(name))
    import gradedit.models.zoo as zoo

    monkeypatch.setattr(zoo, "load", lambda name, **kw: loaded.append(name))
    out = tmp_path / "run"
    with lock_folder(out), pytest.raises(FolderLocked):
        main(["--debug", *_train_args(*inputs, out)])
    assert loaded == []
