"""Data-parallel decomposition with 2 gloo processes == 1 process with the same global batch (within
float tolerance): layer objective on a toy MLP (frequency term, sampled faithfulness rows, gradient
clipping, an odd batch), output objective (KL, two layers, layerwise term, warm-up) on tiny-llama,
and a run interrupted after a checkpoint and resumed under 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import gradedit as ge
from gradedit import dist
from gradedit.decompose import Decomposition, decompose
from gradedit.models.zoo.tiny import tiny_corpus

TOY = dict(steps=30, batch_size=63, seed=3, lr=0.01, importance_coeff=0.05, frequency_beta=0.5,
           faithfulness_rows=3, grad_clip=1.0, init="data", checkpoint_every=10)
LM = dict(objective="output", steps=6, batch_size=5, seq_len=16, faithfulness_warmup_steps=2, layerwise_coeff=0.5,
          lr=3e-3)
LM_MODULES = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6))


def _toy_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(400, 6, generator=g) * (torch.rand(400, 6, generator=g) < 0.2)


class _Stop(Exception):
    pass


def _stop_at_15(step: int, _terms: dict[str, float]) -> None:
    if step == 15:
        raise _Stop


def _params(dec: Decomposition) -> dict[str, torch.Tensor]:
    return {f"{m}/{k}": v.detach().clone().contiguous() for m in dec.modules
            for k, v in dec.layer(m).state_dict().items()}


def _worker(root: str) -> None:
    torch.set_num_threads(1)
    out = Path(root)
    decs = {"toy": decompose(_toy(), ["0", "2"], 8, _toy_inputs(), out=out / "toy", **TOY)}
    try:
        decompose(_toy(), ["0", "2"], 8, _toy_inputs(), out=out / "resumed", on_step=_stop_at_15, **TOY)
    except _Stop:
        pass
    if dist.is_main():
        steps = json.loads(load_file_meta(out / "resumed" / "checkpoint.safetensors"))["step"]
        (out / "checkpoint_step.json").write_text(json.dumps(steps))
    decs["resumed"] = decompose(_toy(), ["0", "2"], 8, _toy_inputs(), out=out / "resumed", **TOY)
    decs["again"] = decompose(_toy(), ["0", "2"], 8, _toy_inputs(), out=out / "resumed", **TOY)  # loaded
    lm = ge.load_model("tiny-llama")
    decs["lm"] = decompose(lm, LM_MODULES, 16, tiny_corpus(2)[:40], out=out / "lm", **LM)
    for name, dec in decs.items():
        save_file(_params(dec), str(out / f"{name}.rank{dist.rank()}.safetensors"))


def load_file_meta(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {})["gradedit"]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist_decompose")
    dist.launch_local(_worker, 2, str(root))
    return root


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_layer_objective_two_processes_equal_one(two: Path, one_thread: None) -> None:
    ref = decompose(_toy(), ["0", "2"], 8, _toy_inputs(), **TOY)
    got = Decomposition.load(two / "toy")
    assert got.meta["world_size"] == 2 and ref.meta["world_size"] == 1
    _assert_close(_params(got), _params(ref), rtol=1e-4, atol=1e-5)
    # every rank returned rank 0's bits
    r0, r1 = (load_file(str(two / f"toy.rank{r}.safetensors")) for r in range(2))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # the logged loss terms are the global ones
    for h1, h2 in zip(ref.meta["history"], got.meta["history"]):
        for k in h1:
            assert h2[k] == pytest.approx(h1[k], rel=1e-4, abs=1e-6), k
    # the tolerance is tight: another seed (other batches and masks) lands far outside it
    other = decompose(_toy(), ["0", "2"], 8, _toy_inputs(), **{**TOY, "seed": 4})
    assert _max_diff(_params(other), _params(ref)) > 100 * _max_diff(_params(got), _params(ref)) + 1e-3


def test_interrupted_two_process_run_resumes_to_the_one_process_result(two: Path, one_thread: None) -> None:
    assert json.loads((two / "checkpoint_step.json").read_text()) == 10
    ref = _params(Decomposition.load(two / "toy"))
    for name in ("resumed", "again"):
        for r in range(2):
            _assert_close(load_file(str(two / f"{name}.rank{r}.safetensors")), ref, rtol=1e-5, atol=1e-6)
    assert not (two / "resumed" / "checkpoint.safetensors").exists()


def test_output_objective_on_an_lm_two_processes_equal_one(two: Path, tiny_llama: ge.LanguageModel,
                                                            one_thread: None) -> None:
    ref = decompose(tiny_llama, LM_MODULES, 16, tiny_corpus(2)[:40], **LM)
    got = Decomposition.load(two / "lm")
    _assert_close(_params(got), _params(ref), rtol=1e-4, atol=1e-5)
    assert [h["loss"] for h in got.meta["history"]] == pytest.approx([h["loss"] for h in ref.meta["history"]],
                                                                      rel=1e-4)


def test_gradedit_decompose_under_torchrun_equals_one_process(tmp_path):
    """The CLI itself under ``torchrun --nproc_per_node 2 -m gradedit``: rank 0 alone locks and writes --out,
    and the result equals the 1-process run's."""
    import os
    import subprocess
    import sys

    from gradedit.decompose import Decomposition

    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADEDIT_NO_PROGRESS": "1"}
    args = ["-m", "gradedit", "decompose", "--preset", "tiny", "--steps", "6"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("decomposition saved to") == 1 and "2 processes" in two.stdout
    a, b = Decomposition.load(tmp_path / "one"), Decomposition.load(tmp_path / "two")
    assert a.modules == b.modules
    for m in a.modules:
        for x, y in zip(a.components(m), b.components(m)):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * float(x.abs().max()))  # as the API tests above
