"""GRADIEND training on a tiny model: convergence, sign, resume, seeds, pruning, encoding paths."""

import json
import re

import numpy as np
import pytest
import torch

from gradedit.data.schema import PairDataset
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import pronoun_records


@pytest.fixture(scope="module")
def pronouns() -> PairDataset:
    return PairDataset.from_records(pronoun_records(), target_classes=["masc", "fem"])


def _cfg(tmp_path, **kw):
    base = dict(experiment_dir=str(tmp_path / "run"), max_steps=20, eval_steps=10, pre_prune_topk=0.2,
                pre_prune_samples=8, eval_max_size=16)
    base.update(kw)
    return TrainConfig(**base)


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({"max_step": 3})
    with pytest.raises(TypeError):
        TrainConfig(max_step=3)
    with pytest.raises(ValueError, match="source must be one of"):
        TrainConfig(source="grad")
    with pytest.raises(ValueError, match="fraction"):
        TrainConfig(pre_prune_topk=1.5)
    with pytest.raises(ValueError, match="min_convergent_seeds"):
        TrainConfig(max_seeds=1, min_convergent_seeds=2)


def test_trainer_rejects_missing_class(tiny_gpt2, pronouns, tmp_path):
    with pytest.raises(ValueError, match="not in the data"):
        Trainer(tiny_gpt2, pronouns, ["masc", "neutral"], config=_cfg(tmp_path))
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config={"experiment_dir": str(tmp_path), "lr": 1})


@pytest.mark.parametrize("source", ["factual", "diff"])
def test_training_converges_with_sign_normalised(tiny_gpt2, pronouns, tmp_path, source):
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path, source=source, max_steps=30))
    fm = tr.train()
    res = tr.seed_results[0]
    assert res.converged and abs(res.correlation) >= 0.8
    assert res.class_means["masc"] > 0 > res.class_means["fem"], "class A must encode positive"
    enc = tr.get_model().encode(pronouns.split("test"))
    labels = pronouns.split("test").to_frame()["label"].to_numpy()
    assert np.all(np.sign(enc) == labels)
    saved = json.loads((tmp_path / "run" / "seed_report.json").read_text())
    assert saved["chosen_seed"] == 0 and saved["converged_seeds"] == 1
    assert fm.metadata["base_model"] == "tiny-gpt2" and fm.metadata["source"] == source
    assert (tmp_path / "run" / "run.json").is_file()


def test_jvp_encoding_equals_explicit(tiny_gpt2, pronouns, tmp_path):
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path, max_steps=10))
    tr.train()
    m = tr.get_model()
    test = pronouns.split("test")
    np.testing.assert_allclose(m.encode(test), m.encode(test, method="explicit"), atol=1e-5)


def test_pre_pruning_restricts_input_space(tiny_gpt2, pronouns, tmp_path):
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path, max_steps=10, pre_prune_topk=500,
                                                                       post_prune_topk=None))
    fm = tr.train()
    assert fm.input_dim == 500 == fm.param_map.size
    full = sum(p.numel() for p in tr.engine.params.values())
    assert full > 500


def test_resume_continues_from_last_checkpoint(tiny_gpt2, pronouns, tmp_path):
    cfg = _cfg(tmp_path, max_steps=10, eval_steps=5)
    Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg).train()
    uninterrupted = _cfg(tmp_path / "b", max_steps=20, eval_steps=5)
    a = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=uninterrupted).train()
    # continue the first run to 20 steps: it must resume at step 10 and end where the long run ended
    resumed_tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg.replace(max_steps=20))
    b = resumed_tr.train()
    steps = [h["step"] for h in resumed_tr.seed_results[0].history]
    assert steps == [5, 10, 15, 20]
    torch.testing.assert_close(a.encoder_weight, b.encoder_weight, atol=1e-6, rtol=1e-5)


def test_changed_config_does_not_resume(tiny_gpt2, pronouns, tmp_path):
    cfg = _cfg(tmp_path, max_steps=10, eval_steps=5)
    Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg).train()
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg.replace(learning_rate=5e-4, max_steps=10))
    tr.train()
    assert [h["step"] for h in tr.seed_results[0].history] == [5, 10]


def test_multi_seed_report(tiny_gpt2, pronouns, tmp_path):
    cfg = _cfg(tmp_path, max_steps=10, max_seeds=3, min_convergent_seeds=2, min_correlation=2.0)  # never converges
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg)
    tr.train()
    report = json.loads((tmp_path / "run" / "seed_report.json").read_text())
    assert [s["seed"] for s in report["seeds"]] == [0, 1, 2] and report["converged_seeds"] == 0
    best = max(report["seeds"], key=lambda s: abs(s["correlation"]))
    assert report["chosen_seed"] == best["seed"]


def test_post_pruning_and_reload(tiny_gpt2, pronouns, tmp_path):
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path, max_steps=10, post_prune_topk=100))
    fm = tr.train()
    assert fm.input_dim == 100
    again = ModelWithGradiend.from_pretrained(tmp_path / "run", lm=tiny_gpt2)
    assert again.feature_model.input_dim == 100
    torch.testing.assert_close(again.feature_model.decoder_weight, fm.decoder_weight)
    assert isinstance(FeatureModel.from_pretrained(tmp_path / "run" / "model"), FeatureModel)


def test_convergence_plot(tiny_gpt2, pronouns, tmp_path):
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path, max_steps=10, eval_steps=5))
    tr.train()
    tr.plot_training_convergence()
    png = tmp_path / "run" / "training_convergence.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_rewrite_manual_lr_zero_is_identity_and_inplace_restores(tiny_gpt2, pronouns, tmp_path):
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path, max_steps=10))
    tr.train()
    m = tr.get_model()
    same = m.rewrite_base_model(learning_rate=0.0, feature_factor=1.0)
    for (n, p), q in zip(tiny_gpt2.model.named_parameters(), same.parameters()):
        assert torch.equal(p, q), n
    changed = m.rewrite_base_model(learning_rate=1e-2, feature_factor=1.0, output_dir=tmp_path / "out")
    assert any(not torch.equal(p, q) for p, q in zip(tiny_gpt2.model.parameters(), changed.parameters()))
    info = json.loads((tmp_path / "out" / "rewrite_info.json").read_text())
    assert info["learning_rate"] == 1e-2 and info["base_model"] == "tiny-gpt2"
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    with pytest.raises(FileExistsError):
        m.rewrite_base_model(learning_rate=1e-2, feature_factor=1.0, output_dir=tmp_path / "out")


def test_top_entries_matches_global_topk():
    from gradedit.gradiend.train.pruning import top_entries

    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(7, 5, generator=g), "b": torch.rand(13, generator=g), "c": torch.rand(3, 4, generator=g)}
    scores["b"][:4] = 0.5  # ties
    flat = torch.cat([t.reshape(-1) for t in scores.values()])
    for k in (1, 5, 17, 40, flat.numel()):
        got = top_entries(scores, k)
        assert sum(v.numel() for v in got.values()) == k
        chosen = torch.cat([scores[n].reshape(-1)[got[n]] for n in scores])
        want = torch.topk(flat, k).values
        torch.testing.assert_close(chosen.sort().values, want.sort().values)


def _with_identity_rows() -> PairDataset:
    """Pronoun rows plus identity rows (label 0: he -> he, she -> she) of both classes."""
    recs = pronoun_records()
    ident = [dict(r, alternative=r["factual"], alternative_class=r["factual_class"]) for r in recs[::3]]
    return PairDataset.from_records(recs + ident, target_classes=["masc", "fem"])


def test_rows_per_gradient_groups_one_class_and_label_sign(tiny_gpt2, tmp_path, monkeypatch):
    """A gradient example averages rows of ONE factual class and ONE label (never +1 with -1 rows,
    never an identity row with a real one); within an epoch no row is used twice."""
    from gradedit.gradiend.train.loop import SeedTrainer

    data = _with_identity_rows()
    seen: list[list[int]] = []
    real = SeedTrainer._vectors

    def spy(self, rows):
        seen.append(list(rows))
        return real(self, rows)

    monkeypatch.setattr(SeedTrainer, "_vectors", spy)
    tr = Trainer(tiny_gpt2, data, ["masc", "fem"],
                 config=_cfg(tmp_path, rows_per_gradient=3, use_identity_rows=True, train_batch_size=2,
                             max_steps=4, eval_steps=4))
    tr.train()
    train = data.split("train").to_frame().reset_index(drop=True)
    assert set(train["label"]) == {-1, 0, 1}
    assert len(seen) == 8
    for rows in seen:
        groups = {(train["label"][i], train["factual_class"][i]) for i in rows}
        assert len(groups) == 1, f"a gradient mixed rows of {sorted(groups)}"
    # one epoch of examples: every example has rows_per_gradient rows, and no row repeats
    st = SeedTrainer(tr.engine, None, tr.config, 0, tr._rows("train"), tr._rows("val"), tr.classes, tmp_path / "x", {})
    n = st.examples_per_epoch()
    epoch = [st._example_rows(i) for i in range(n)]
    flat = [i for rows in epoch for i in rows]
    assert all(len(rows) == 3 for rows in epoch) and len(flat) == len(set(flat))
    assert len(flat) > len(train) - 3 * 4, "an epoch must cover all but each group's remainder"
    assert st._example_rows(n) != epoch[0], "the next epoch reshuffles"


@pytest.mark.parametrize("damage", ["missing_key", "corrupt_key", "missing_config"])
def test_interrupted_pre_pruning_cache_is_recomputed(tiny_gpt2, pronouns, tmp_path, monkeypatch, damage):
    """A pre_prune/ folder left by an interrupted run (map written, key.json not, or a half-written
    folder) must be recomputed, not crash the next run."""
    import gradedit.gradiend.train.trainer as T

    cfg = _cfg(tmp_path, max_steps=2, eval_steps=2, pre_prune_topk=300, post_prune_topk=None)  # keep all 300
    Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg).train()
    cache = tmp_path / "run" / "pre_prune"
    assert (cache / "param_map.json").is_file() and (cache / "key.json").is_file()
    if damage == "missing_key":
        (cache / "key.json").unlink()
    elif damage == "corrupt_key":
        (cache / "key.json").write_text("{not json")
    else:
        (cache / "config.json").unlink()
    calls = []
    real = T.pre_prune
    monkeypatch.setattr(T, "pre_prune", lambda *a, **k: calls.append(1) or real(*a, **k))
    fm = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg.replace(max_steps=4, eval_steps=2)).train()
    assert calls == [1] and fm.input_dim == 300
    assert (cache / "key.json").is_file()
    calls.clear()  # the repaired cache is reused
    Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg.replace(max_steps=4, eval_steps=2)).train()
    assert calls == []


def test_stop_reason_counts_evaluations_without_gain():
    from gradedit.gradiend.train.loop import stop_reason

    cfg = TrainConfig(early_stopping_patience=2, early_stopping_min_delta=0.01)
    hist = [{"step": s, "correlation": r} for s, r in [(5, 0.5), (10, 0.9), (15, -0.905), (20, 0.85)]]
    assert stop_reason(hist[:3], cfg) == ""          # one evaluation without a gain > 0.01
    reason = stop_reason(hist, cfg)                  # two in a row: stop, naming the reference step
    assert "since step 10" in reason and "patience 2" in reason
    assert stop_reason(hist, cfg.replace(early_stopping_patience=None)) == ""
    assert stop_reason(hist, cfg.replace(early_stopping_min_delta=0.0)) == ""  # 0.905 counted as a gain
    with pytest.raises(ValueError, match="early_stopping_patience"):
        TrainConfig(early_stopping_patience=0)


def test_early_stopping_keeps_best_step_and_does_not_resume_past_it(tiny_gpt2, pronouns, tmp_path, caplog):
    import logging

    # min_delta 0.5: after the first evaluation nothing counts as a gain, so the run stops after `patience`
    cfg = _cfg(tmp_path, max_steps=60, eval_steps=2, early_stopping_patience=2, early_stopping_min_delta=0.5)
    with caplog.at_level(logging.INFO, logger="gradedit.gradiend.train.loop"):
        tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg)
        tr.train()
    res = tr.seed_results[0]
    assert [h["step"] for h in res.history] == [2, 4, 6]
    assert res.stopped_early and res.last_step == 6 and "patience 2" in res.stop_reason
    # kept: the last evaluation that improved |r| by more than min_delta = the first one here, even if a later
    # one is higher by less than min_delta (the rule early stopping counts from)
    assert res.best_step == 2
    assert max(abs(h["correlation"]) for h in res.history) <= abs(res.history[0]["correlation"]) + 0.5
    assert [s for s, _ in res.step_losses] == list(range(1, 7))
    assert "step 1/60" in caplog.text and "early stop at step 6" in caplog.text
    saved = json.loads((tmp_path / "run" / "seed_0" / "result.json").read_text())
    assert saved["stopped_early"] and len(saved["step_losses"]) == 6
    # resuming the stopped run (same config, more steps) trains nothing more
    again = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg.replace(max_steps=80))
    again.train()
    assert [h["step"] for h in again.seed_results[0].history] == [2, 4, 6]
    # without early stopping every step is trained
    full = Trainer(tiny_gpt2, pronouns, ["masc", "fem"],
                   config=_cfg(tmp_path / "full", max_steps=8, eval_steps=2, early_stopping_patience=None,
                               early_stopping_min_delta=0.5))
    full.train()
    assert full.seed_results[0].last_step == 8 and not full.seed_results[0].stopped_early


def test_convergence_plot_marks_best_step_and_labels_the_loss(tiny_gpt2, pronouns, tmp_path):
    cfg = _cfg(tmp_path, max_steps=30, eval_steps=2, early_stopping_patience=2, early_stopping_min_delta=0.5)
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=cfg)
    tr.train()
    fig = tr.plot_training_convergence()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    best = tr.seed_results[0].best_step
    assert any(lab.startswith(f"kept model: step {best},") for lab in labels), labels
    assert any("training loss per step" in lab for lab in labels), labels
    assert any(lab.startswith("early stop at step 6") for lab in labels), labels
    # the same figure from disk (a reloaded trainer has no seed_results in memory)
    fig2 = Trainer.load(tmp_path / "run", lm=tiny_gpt2).plot_training_convergence(tmp_path / "again.png")
    labels2 = [t.get_text() for t in fig2.axes[0].get_legend().get_texts()]
    assert labels2 == labels


def test_kept_model_is_not_re_validated_and_its_sign_flip_is_exact(tiny_gpt2, pronouns, tmp_path, monkeypatch):
    from gradedit.gradiend.train import loop

    calls = []
    real = loop.SeedTrainer.evaluate
    monkeypatch.setattr(loop.SeedTrainer, "evaluate", lambda self, fm: calls.append(1) or real(self, fm))
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path, max_steps=10, eval_steps=5))
    tr.train()
    assert len(calls) == 2, "only the two scheduled validation passes may run"
    res = tr.seed_results[0]
    assert not res.stopped_early and res.last_step == 10  # reaching max_steps is not an early stop
    # the reported r and class means are those of the saved (sign-normalised) model
    st = loop.SeedTrainer(tr.engine, tr.feature_model.param_map, tr.config, 0, tr._rows("train"),
                          tr._rows("val", cap=16, seed=0), tr.classes, tmp_path / "x", {})
    r, means, _ = real(st, FeatureModel.from_pretrained(tmp_path / "run" / "seed_0" / "best"))
    assert r == pytest.approx(res.correlation, abs=1e-6) and means["masc"] > 0
    assert means == pytest.approx(res.class_means, abs=1e-6)


def test_given_input_space_replaces_pre_pruning(tiny_gpt2, pronouns, tmp_path, caplog):
    """Oracle: the pre-pruned space handed back as ``input_space`` trains the same model bit for bit, with no
    pre-pruning of its own; a checkpoint of another input space is not resumed."""
    cfg = dict(max_steps=10, eval_steps=5, post_prune_topk=None)
    a = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "a", **cfg)).train()
    given = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "b", **cfg), input_space=a.param_map)
    b = given.train()
    assert b.param_map == a.param_map and not (tmp_path / "b" / "run" / "pre_prune").exists()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    smaller = a.param_map.select(torch.arange(100))
    with caplog.at_level("WARNING"):
        c = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "a", **cfg), input_space=smaller).train()
    assert "trained on another input space" in caplog.text
    assert c.input_dim == 100 and c.param_map == smaller


def test_input_space_must_fit_the_trainer(tiny_gpt2, tiny_llama, pronouns, tmp_path):
    from gradedit.errors import ConfigError
    from gradedit.models.param_map import ParamMap

    name, p = next((n, p) for n, p in tiny_gpt2.model.named_parameters() if n.endswith("attn.c_attn.weight"))
    llama = {n: q for n, q in tiny_llama.model.named_parameters() if q.dim() == 2}
    for space, match in [(ParamMap.from_params(llama), r"^input_space holds parameters that config.params does not "
                                                       r"select: \['model\."),
                         (ParamMap([name], [(3, 3)], [None]), rf"^input_space was built for another model: {name} has "
                                                             rf"shape \(3, 3\) there, {re.escape(str(tuple(p.shape)))} in tiny-gpt2"),
                         ({name: p}, r"^input_space must be a ParamMap \(e\.g\. FeatureModel\.param_map\), got dict")]:
        with pytest.raises(ConfigError, match=match):
            Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path), input_space=space)
