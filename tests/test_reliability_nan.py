"""NaN/Inf stops training (issue 18.2): a non-finite loss, model gradient or feature-model gradient
stops GRADIEND training, and a non-finite loss or gradient stops the decomposition, each with one
clear line naming the step and the kept checkpoint; nothing of the bad step is written, and the
kept checkpoint resumes to the model of an uninterrupted run, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gradedit._files import load_tree
from gradedit.data.schema import PairDataset
from gradedit.decompose import decompose
from gradedit.decompose.objectives import LayerObjective
from gradedit.decompose.train import CHECKPOINT_FILE, read_checkpoint_meta
from gradedit.errors import DecompositionError, TrainingError
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.train import loop
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import SUBJECTS, VERBS, pronoun_records


@pytest.fixture(scope="module")
def pronouns() -> PairDataset:
    return PairDataset.from_records(pronoun_records(SUBJECTS[:6], VERBS[:3]), target_classes=["masc", "fem"])


def _cfg(run: Path, **kw: object) -> TrainConfig:
    base: dict = dict(experiment_dir=str(run), max_steps=12, eval_steps=5, pre_prune_topk=300, pre_prune_samples=8,
                      eval_max_size=8)
    base.update(kw)
    return TrainConfig(**base)


def _steps_seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count optimiser steps taken (appends the step number after each ``opt.step``)."""
    seen: list[int] = []
    original = torch.optim.AdamW.step

    def step(self, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(seen) + 1)
        return original(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


def _assert_resumes_to_uninterrupted(lm, data: PairDataset, cut: Path, full: Path) -> None:
    ref = Trainer(lm, data, ["masc", "fem"], config=_cfg(full)).train()
    tr = Trainer(lm, data, ["masc", "fem"], config=_cfg(cut))
    resumed = tr.train()
    assert [h["step"] for h in tr.seed_results[0].history] == [5, 10, 12]
    for name, tensor in ref.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_nan_loss_stops_gradiend_and_keeps_the_last_good_checkpoint(tiny_gpt2, pronouns, tmp_path, monkeypatch):
    original = torch.nn.functional.mse_loss
    calls = []

    def mse_loss(a, b, *args, **kw):  # the 8th training loss is NaN
        calls.append(1)
        out = original(a, b, *args, **kw)
        return out * float("nan") if len(calls) == 8 else out

    monkeypatch.setattr(torch.nn.functional, "mse_loss", mse_loss)
    seen = _steps_seen(monkeypatch)
    cut = tmp_path / "cut"
    with pytest.raises(TrainingError) as err:
        Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(cut)).train()
    last = cut / "seed_0" / "last"
    assert str(err.value) == (f"GRADIEND training of seed 0 stopped at step 8: the loss is nan; the last good "
                              f"checkpoint (step 5) is kept in {last}; lower learning_rate (now 0.001) or check the data")
    assert len(seen) == 7  # the bad step was not applied
    assert load_tree(last / loop.STATE_FILE, "fix")["step"] == 5
    assert all(torch.isfinite(p).all() for p in FeatureModel.from_pretrained(last).parameters())
    assert (cut / "seed_0" / "best" / "config.json").is_file() and not (cut / "model").exists()
    monkeypatch.undo()
    _assert_resumes_to_uninterrupted(tiny_gpt2, pronouns, cut, tmp_path / "full")


def test_nan_model_gradient_names_the_row(tiny_gpt2, pronouns, tmp_path, monkeypatch):
    original = loop.SeedTrainer._vectors
    poisoned: list[int] = []

    def vectors(self, rows):  # type: ignore[no-untyped-def]
        src, tgt = original(self, rows)
        if not poisoned:
            poisoned.append(rows[0])  # the first row of the first example: a NaN/Inf model gradient
        return (src * float("inf"), tgt) if poisoned[0] in rows else (src, tgt)

    monkeypatch.setattr(loop.SeedTrainer, "_vectors", vectors)
    seen = _steps_seen(monkeypatch)
    with pytest.raises(TrainingError) as err:
        Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "run")).train()
    msg = str(err.value)
    assert msg.startswith("GRADIEND training of seed 0 stopped at step 1: the loss is nan; no checkpoint was written "
                          "yet (the first is at step 5); the model gradient of 1 training row(s) is NaN/Inf (e.g. '")
    assert msg.endswith("'): check those rows and the base model's weights") and "\n" not in msg
    assert seen == []


def test_nan_feature_model_gradient_stops_before_the_step(tiny_gpt2, pronouns, tmp_path, monkeypatch):
    original = loop.SeedTrainer._new_model
    backwards: list[int] = []

    def new_model(self):  # type: ignore[no-untyped-def]
        fm = original(self)

        def hook(grad: torch.Tensor) -> torch.Tensor:  # the 3rd backward gives a NaN encoder gradient
            backwards.append(1)
            return grad * float("nan") if len(backwards) == 3 else grad

        next(p for n, p in fm.named_parameters() if "encoder" in n and p.dim() == 2).register_hook(hook)
        return fm

    monkeypatch.setattr(loop.SeedTrainer, "_new_model", new_model)
    seen = _steps_seen(monkeypatch)
    with pytest.raises(TrainingError, match=r"^GRADIEND training of seed 0 stopped at step 3: the gradient of "
                                            r"encoder\S* is not finite \(NaN/Inf\); no checkpoint was written yet"):
        Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "run")).train()
    assert len(seen) == 2


def test_cli_reports_a_nan_in_one_line_with_the_user_error_code(tiny_gpt2, pronouns, tmp_path, monkeypatch, capsys):
    from gradedit.cli.app import main

    data = tmp_path / "pairs.csv"
    pronouns.save(data)
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("The weather was fine.\n")
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda a, b, *x, **k: ((a - b) ** 2).mean() * float("inf"))
    code = main(["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem", "--out",
                 str(tmp_path / "run"), "--neutral", str(neutral), "--max-steps", "4", "--eval-steps", "2",
                 "--pre-prune", "100"])
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if "error" in line] == [
        "gradedit: error: GRADIEND training of seed 0 stopped at step 1: the loss is inf; no checkpoint was written "
        "yet (the first is at step 2); lower learning_rate (now 0.001) or check the data"]


# -- the decomposition ---------------------------------------------------------------------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6))


X = torch.randn(512, 6, generator=torch.Generator().manual_seed(1))


def _dec(out: Path, **kw: object):  # type: ignore[no-untyped-def]
    return decompose(_net(), ["0", "2"], 4, X, objective="layer", steps=30, batch_size=32, seed=2,
                     checkpoint_every=10, out=out, **kw)


def test_nan_loss_stops_the_decomposition_and_keeps_its_checkpoint(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    original = LayerObjective.step

    def step(self, layers, gen, s):  # type: ignore[no-untyped-def]
        loss, terms = original(self, layers, gen, s)
        return (loss * float("nan"), terms) if s == 24 else (loss, terms)

    monkeypatch.setattr(LayerObjective, "step", step)
    cut = tmp_path / "cut"
    with pytest.raises(DecompositionError) as err:
        _dec(cut)
    assert str(err.value) == (f"decomposition stopped at step 25: the loss is nan; the checkpoint of step 20 is kept "
                              f"in {cut / CHECKPOINT_FILE}; lower lr (now 0.001) or importance_coeff, or set grad_clip")
    assert read_checkpoint_meta(cut / CHECKPOINT_FILE)["step"] == 20
    monkeypatch.undo()
    ref, resumed = _dec(tmp_path / "full"), _dec(cut)
    assert resumed.meta["steps_done"] == ref.meta["steps_done"] == 30
    for name in ("0", "2"):
        a, b = ref.layer(name).state_dict(), resumed.layer(name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return grad * float("nan")


def test_nan_gradient_stops_the_decomposition(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    original = LayerObjective.step
    before: dict[str, torch.Tensor] = {}

    def step(self, layers, gen, s):  # type: ignore[no-untyped-def]
        loss, terms = original(self, layers, gen, s)
        if s == 3:  # a finite loss whose gradient is NaN
            first = next(iter(layers.values()))
            before.update({k: v.detach().clone() for k, v in first.state_dict().items()})
            loss = loss + _NanGrad.apply(first.U).sum() * 0
            assert torch.isfinite(loss)
        return loss, terms

    monkeypatch.setattr(LayerObjective, "step", step)
    with pytest.raises(DecompositionError, match=r"^decomposition stopped at step 4: a gradient is not finite "
                                                 r"\(NaN/Inf\); no checkpoint was written yet;"):
        _dec(tmp_path / "run", grad_clip=1.0)
    assert before and not (tmp_path / "run" / CHECKPOINT_FILE).exists()
