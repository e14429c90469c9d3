"""Memory fixes of GRADIEND training measured in docs/benchmarks.md ("Memory of unpruned GRADIEND training") (issue 16.3), checked on live
tensors with the garbage collector off (no timing, no RSS): ``save_tree_atomic`` copies nothing it can write
as it is and leaves nothing behind (same file bytes as before), ``SeedTrainer.run`` frees the training model
and optimiser before it reads ``best/``, and ``SeedTrainer._batch`` does not stack copies."""

from __future__ import annotations

import gc
import json
import numbers
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradedit._files import load_tree, save_safetensors_atomic, save_tree_atomic
from gradedit.data.schema import PairDataset
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.train import loop
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.loop import SeedTrainer
from gradedit.gradiend.train.optim import FeatureOptimizer
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import pronoun_records


@contextmanager
def no_gc() -> Iterator[None]:
    """The garbage collector off: whatever a reference cycle holds stays alive where a test can see it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Outputs(TorchDispatchMode):
    """Weak references to, and the bytes of, every tensor an aten op makes (aliases of an input excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref] = []
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.refs.append(weakref.ref(t))
                self.nbytes += t.untyped_storage().nbytes()
        return out


# -- 1. save_tree_atomic -------------------------------------------------------------------------------------

def _old_save_tree_atomic(file: Path, tree: Any) -> None:
    """save_tree_atomic as it was before the fix (every tensor cloned): the oracle for the file's bytes."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().to("cpu").clone().contiguous()
            return {"$tensor": name}
        if x is None or isinstance(x, (str, bool)):
            return x
        if isinstance(x, numbers.Integral):
            return int(x)
        if isinstance(x, numbers.Real):
            return float(x)
        if isinstance(x, tuple):
            return {"$tuple": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if all(isinstance(k, str) and not k.startswith("$") for k in x):
            return {k: enc(v) for k, v in x.items()}
        return {"$items": [[enc(k), enc(v)] for k, v in x.items()]}

    save_safetensors_atomic(tensors, file, metadata={"format": "pt", "gradedit_tree": json.dumps(enc(tree))})


def _mixed_tree() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(6, 5, generator=g)
    w = torch.nn.Parameter(torch.randn(7, generator=g))
    return {"plain": torch.randn(11, generator=g), "bf16": torch.randn(9, generator=g).bfloat16(),
            "step": torch.tensor(3.0), "int": torch.arange(4), "empty": torch.zeros(0, 3),
            "param": w, "param_again": w, "transposed": big.t(), "row": big[2], "rows": big[1:4],
            "same_twice": (big, big), "state": {0: {"exp_avg": torch.ones(3), "flag": True}, 1: None},
            "list": [1, 2.5, "x", torch.full((2, 2), 7, dtype=torch.int32)], "bool": torch.tensor([True, False])}


def test_save_tree_writes_the_same_bytes_as_before(tmp_path: Path):
    """Tensors written as they are (no clone) or copied (views, shared storage): the file is unchanged."""
    tree = _mixed_tree()
    save_tree_atomic(tmp_path / "new.safetensors", tree)
    _old_save_tree_atomic(tmp_path / "old.safetensors", tree)
    assert (tmp_path / "new.safetensors").read_bytes() == (tmp_path / "old.safetensors").read_bytes()
    back = load_tree(tmp_path / "new.safetensors", "fix")
    assert torch.equal(back["transposed"], tree["transposed"])
    assert torch.equal(back["rows"], tree["rows"]) and torch.equal(back["param"], tree["param"].detach())
    assert back["same_twice"][0] is not back["same_twice"][1] and torch.equal(*back["same_twice"])


def test_save_tree_copies_no_contiguous_cpu_tensor_and_leaves_nothing_alive(tmp_path: Path):
    """The optimiser moments (contiguous CPU tensors) are written from where they are; the copies it does
    make (a transposed view) are gone when it returns, without a gc run (the old closure kept them)."""
    fm = FeatureModel(5000, 1, seed=0)
    opt = FeatureOptimizer(fm, TrainConfig(learning_rate=1e-3))
    src = torch.randn(2, 5000)
    rec, _ = fm(src)
    opt.step(torch.nn.functional.mse_loss(rec, src))
    state = opt.state_dict()
    moments = sum(t.untyped_storage().nbytes() for s in state["state"].values() for t in s.values())
    assert moments >= 6 * 4 * 5000  # exp_avg, exp_avg_sq of W_e [1, n], W_d [n, 1], b_d [n]
    tree = {"optimizer": state, "view": torch.randn(40, 30).t()}
    with no_gc():
        with Outputs() as made:
            save_tree_atomic(tmp_path / "s.safetensors", tree)
        alive = [r() for r in made.refs if r() is not None]
        assert alive == []
    assert made.nbytes < 4 * 5000  # the 40 x 30 view's copy and scalars; no moment was cloned
    back = load_tree(tmp_path / "s.safetensors", "fix")
    for k, s in state["state"].items():
        assert all(torch.equal(back["optimizer"]["state"][k][name], t) for name, t in s.items())


# -- 2. SeedTrainer.run frees the training model and optimiser before reading best/ ---------------------------

@pytest.fixture(scope="module")
def pronouns() -> PairDataset:
    return PairDataset.from_records(pronoun_records(), target_classes=["masc", "fem"])


def _cfg(run: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(experiment_dir=str(run), max_steps=4, eval_steps=2, pre_prune_topk=0.2,  # type: ignore[arg-type]
                       pre_prune_samples=8, eval_max_size=16, post_prune_topk=None, early_stopping_patience=None, **kw)


@pytest.mark.parametrize("mode", [{}, {"optimizer_in_backward": True}, {"fused_step": True}])
def test_run_frees_model_and_optimiser_before_reading_best(tiny_gpt2, pronouns, tmp_path, monkeypatch, mode):
    made: list[weakref.ref] = []
    seen: list[list[bool]] = []
    new_model, new_opt, from_pretrained = SeedTrainer._new_model, SeedTrainer._optimizer, FeatureModel.from_pretrained

    def track_model(self: SeedTrainer) -> FeatureModel:
        fm = new_model(self)
        made.append(weakref.ref(fm))
        return fm

    def track_opt(self: SeedTrainer, fm: FeatureModel) -> FeatureOptimizer:
        opt = new_opt(self, fm)
        made.extend([weakref.ref(opt), weakref.ref(opt.opt)])
        return opt

    def read(path: Path, *a: Any, **kw: Any) -> FeatureModel:
        if Path(path).name == "best" and made:
            seen.append([r() is None for r in made])
        return from_pretrained(path, *a, **kw)

    monkeypatch.setattr(SeedTrainer, "_new_model", track_model)
    monkeypatch.setattr(SeedTrainer, "_optimizer", track_opt)
    monkeypatch.setattr(loop.FeatureModel, "from_pretrained", staticmethod(read))
    with no_gc():
        Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "run", **mode)).train()
    assert len(made) == 3 and seen, "the run did not read best/"
    assert seen[0] == [True, True, True]  # model, FeatureOptimizer, inner AdamW all freed first


# -- 3. SeedTrainer._batch --------------------------------------------------------------------------------------

class _Batcher(SeedTrainer):
    """Only what ``_batch`` needs: ``n`` and ``_vectors``, which hands out fresh random pairs and checks, with
    the gc off, how many earlier pairs are still alive when the next is made."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.param_map = type("PM", (), {"size": n})()  # type: ignore[assignment]
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.refs: list[weakref.ref] = []
        self.alive_before: list[int] = []

    def _vectors(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        self.alive_before.append(sum(r() is not None for r in self.refs))
        g = torch.Generator().manual_seed(rows[0])
        s, t = torch.randn(self.n, generator=g), torch.randn(self.n, generator=g)
        self.pairs.append((s.clone(), t.clone()))  # copies for the oracle; the pair itself is not kept
        self.refs += [weakref.ref(s), weakref.ref(t)]
        return s, t


def test_batch_of_one_is_a_view_of_the_example():
    b = _Batcher(50)
    kept: list[torch.Tensor] = []
    orig = b._vectors

    def vectors(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = orig(rows)
        kept.extend([s, t])
        return s, t

    b._vectors = vectors  # type: ignore[method-assign]
    src, tgt = b._batch([[4]])
    assert src.shape == tgt.shape == (1, 50)
    assert src.data_ptr() == kept[0].data_ptr() and tgt.data_ptr() == kept[1].data_ptr()  # no copy
    assert torch.equal(src[0], b.pairs[0][0]) and torch.equal(tgt[0], b.pairs[0][1])


@pytest.mark.parametrize("size", [2, 5])
def test_batch_fills_one_buffer_and_holds_one_pair_at_a_time(size):
    b = _Batcher(64)
    rows = [[k] for k in range(size)]
    with no_gc():
        src, tgt = b._batch(rows)
        assert sum(r() is not None for r in b.refs) == 0
    assert b.alive_before == [0] * size  # each pair gone before the next is computed
    assert torch.equal(src, torch.stack([p[0] for p in b.pairs]))  # oracle: the stacked copies
    assert torch.equal(tgt, torch.stack([p[1] for p in b.pairs]))
    assert src.dtype == tgt.dtype == torch.float32 and src.is_contiguous()
    empty_src, empty_tgt = b._batch([])
    assert empty_src.shape == empty_tgt.shape == (0, 64)
