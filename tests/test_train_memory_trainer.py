"""The memory options through the real training loop (``Trainer.train`` on tiny-gpt2): optimizer-in-backward
trains the same model bit for bit, bf16 moments a close one (the measured difference is printed), and a bf16
run interrupted at a checkpoint resumes to the uninterrupted model bit for bit."""

from __future__ import annotations

import pytest
import torch

from gradedit.data.schema import PairDataset
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import pronoun_records


@pytest.fixture(scope="module")
def pronouns() -> PairDataset:
    return PairDataset.from_records(pronoun_records(), target_classes=["masc", "fem"])


def _cfg(run, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = dict(experiment_dir=str(run), max_steps=20, eval_steps=10, pre_prune_topk=0.2, pre_prune_samples=8,
                eval_max_size=16, post_prune_topk=None, early_stopping_patience=None)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _last(run) -> FeatureModel:  # type: ignore[no-untyped-def]
    """The model after the last step (``best/`` may hold an earlier one)."""
    return FeatureModel.from_pretrained(run / "seed_0" / "last")


def test_trainer_in_backward_equals_default_and_bf16_is_close(tiny_gpt2, pronouns, tmp_path):
    runs = {name: tmp_path / name for name in ("fp32", "in_backward", "bf16")}
    trainers = {"fp32": Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(runs["fp32"])),
                "in_backward": Trainer(tiny_gpt2, pronouns, ["masc", "fem"],
                                       config=_cfg(runs["in_backward"], optimizer_in_backward=True)),
                "bf16": Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(runs["bf16"], optimizer_state="bf16"))}
    for tr in trainers.values():
        tr.train()
    ref, inb, low = (_last(runs[k]) for k in ("fp32", "in_backward", "bf16"))
    for (name, a), b in zip(ref.named_parameters(), inb.parameters()):
        assert torch.equal(a, b), name
    r = {k: tr.seed_results[0].history[-1]["correlation"] for k, tr in trainers.items()}
    assert r["in_backward"] == r["fp32"]
    init = FeatureModel(ref.input_dim, 1, seed=0)
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(ref.parameters(), init.parameters()))
    dw = max(float((a - b).detach().abs().max()) for a, b in zip(ref.parameters(), low.parameters()))
    print(f"\nbf16 vs fp32 moments, tiny-gpt2, {ref.input_dim} inputs, 20 steps: r {r['bf16']:+.4f} vs {r['fp32']:+.4f}, "
          f"max|dw| {dw:.3g} (largest move {moved:.3g})")
    assert 0 < dw < 0.05 * moved
    assert abs(r["bf16"] - r["fp32"]) < 0.05


def test_trainer_bf16_resume_equals_uninterrupted(tiny_gpt2, pronouns, tmp_path):
    cut = _cfg(tmp_path / "cut", max_steps=10, eval_steps=5, optimizer_state="bf16-sr")
    Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cut).train()
    full = Trainer(tiny_gpt2, pronouns, ["masc", "fem"],
                   config=_cfg(tmp_path / "full", max_steps=15, eval_steps=5, optimizer_state="bf16-sr"))
    full.train()
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cut.replace(max_steps=15))
    tr.train()
    assert [h["step"] for h in tr.seed_results[0].history] == [5, 10, 15]  # resumed at 10, not retrained
    a, b = _last(tmp_path / "full"), _last(tmp_path / "cut")
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
