"""The issue-18 gaps in gradiend/, blast/, decompose/config.py and the CLI: each test failed before its fix.

Config type checks (ConfigError naming key, value and type), gradedit errors instead of KeyError /
ValueError in Trainer and rewrite_base_model, non-finite rewrite factors, empty or blank corpora,
class ids as folder names, the ``last.new`` resume bug, and what ``run.json`` records.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from gradedit._config import value_fits
from gradedit.data.schema import PairDataset
from gradedit.decompose.config import DecomposeConfig
from gradedit.decompose.presets import PRESETS
from gradedit.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    DecomposeConfigError,
    DecompositionError,
    EditError,
    GradeditError,
)
from gradedit.gradiend.evaluate.results import DecoderResults, Selection
from gradedit.gradiend.train import TrainConfig, Trainer
from gradedit.gradiend.train.after import NotEvaluated
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

RECORDS = pronoun_records(SUBJECTS[:4], VERBS[:3])
NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the dog."]


# -- 1. config values of the wrong type or non-finite: ConfigError naming key, value and expected type ----------
@pytest.mark.parametrize("values, pattern", [
    ({"learning_rate": None}, r"^learning_rate must be a number, got None \(NoneType\), e\.g\. 0\.001 \(the default\)$"),
    ({"max_steps": "abc"}, r"^max_steps must be an int, got 'abc' \(str\), e\.g\. 200"),
    ({"max_steps": 2.0}, r"^max_steps must be an int, got 2\.0 \(float\)"),
    ({"resume": 1}, r"^resume must be true or false, got 1 \(int\)"),
    ({"learning_rate": float("inf")}, r"^learning_rate must be finite, got inf$"),
    ({"min_correlation": float("nan")}, r"^min_correlation must be finite, got nan$"),
    ({"source": "grad"}, r"^source must be one of \('factual', 'alternative', 'diff'\), got 'grad'"),
    ({"params": ["*.mlp.*", 3]}, r"^params must be a list of str or None, got \['\*\.mlp\.\*', 3\]"),
    ({"params": "*.mlp.*"}, r"^params must be a list of glob patterns, e\.g\. \['\*\.mlp\.\*'\], got the single string"),
    ({"extra": [1]}, r"^extra must be a dict with str keys, got \[1\] \(list\)"),
    ({"pre_prune_topk": True}, r"^pre_prune_topk must be a number, an int or None, got True \(bool\)"),
    ({"lr": 1e-3}, r"^unknown TrainConfig key\(s\) \['lr'\]; known: \[.*'learning_rate'"),
    ({"max_seeds": 1, "min_convergent_seeds": 2}, r"^min_convergent_seeds \(2\) cannot exceed max_seeds \(1\); raise"),
])
def test_train_config_refuses_wrong_types_and_non_finite_numbers(values: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values)
    assert re.search(pattern, str(info.value)), str(info.value)


@pytest.mark.parametrize("values, pattern", [
    ({"lr": None}, r"^DecomposeConfig: lr must be a number, got None \(NoneType\)"),
    ({"steps": "abc"}, r"^DecomposeConfig: steps must be an int, got 'abc' \(str\), e\.g\. 2000"),
    ({"ci_lr": "fast"}, r"^DecomposeConfig: ci_lr must be a number or None, got 'fast'"),
    ({"objective": "kl"}, r"^DecomposeConfig: objective must be one of \('layer', 'output'\), got 'kl'"),
    ({"delta_component": "yes"}, r"^DecomposeConfig: delta_component must be true or false, got 'yes'"),
    ({"p_end": float("-inf")}, r"^DecomposeConfig: p_end must be finite, got -inf"),
    ({"colour": 1}, r"^DecomposeConfig: unknown decomposition option\(s\) \['colour'\]; known: \[.*'lr'"),
])
def test_decompose_config_refuses_wrong_types(values: dict[str, Any], pattern: str) -> None:
    with pytest.raises(DecomposeConfigError) as info:
        DecomposeConfig.from_dict(values)
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, DecompositionError)  # old `except` clauses still catch it
    assert re.search(pattern, str(err)), str(err)


def test_from_dict_needs_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^TrainConfig needs a mapping of its fields, got list"):
        TrainConfig.from_dict([("seed", 1)])  # type: ignore[arg-type]
    with pytest.raises(DecomposeConfigError, match=r"DecomposeConfig needs a mapping of its fields, got str"):
        DecomposeConfig.from_dict("lr=1")  # type: ignore[arg-type]


def test_configs_accept_what_they_accepted_and_keep_their_hashes(tmp_path: Path) -> None:
    """Ints for float fields, a tuple of patterns and a Path still work; nothing is coerced, so training
    fingerprints (the resume keys of existing runs) are unchanged."""
    cfg = TrainConfig(learning_rate=1, params=("*.mlp.*",), experiment_dir=tmp_path, pre_prune_topk=100)
    assert cfg.learning_rate == 1 and type(cfg.learning_rate) is int
    assert cfg.params == ["*.mlp.*"] and cfg.experiment_dir == str(tmp_path)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.replace(seed=3).seed == 3
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.load(path) == cfg
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"c\.json is not a readable TrainConfig \(JSONDecodeError"):
        TrainConfig.load(path)
    # the gemma3-270m preset's hash, pinned since its run folder must stay resumable (see presets.py)
    assert DecomposeConfig.from_dict(dict(PRESETS["gemma3-270m"].options)).training_hash() == "24edd6c0540fcff1"
    assert DecomposeConfig(faithfulness_warmup_steps=None).faithfulness_warmup_steps == 0


def test_value_fits_oracle() -> None:
    """The type check itself, on the annotations the configs use."""
    assert value_fits(1, float) and value_fits(1.5, float) and not value_fits(True, float)
    assert value_fits(3, int) and not value_fits(3.0, int) and not value_fits(False, int)
    assert value_fits(None, int | None) and not value_fits("x", int | None)
    assert value_fits(["a"], list[str]) and value_fits(("a",), list[str]) and not value_fits(["a", 1], list[str])
    assert value_fits({"a": 1}, dict[str, Any]) and not value_fits({1: 1}, dict[str, Any])


# -- 2. gradedit errors in Trainer and rewrite_base_model ---------------------------------------------------------
def _data() -> PairDataset:
    return PairDataset.from_records(RECORDS, ["masc", "fem"])


def test_trainer_refuses_unknown_classes_and_empty_neutral(tiny_gpt2, tmp_path) -> None:
    cfg = TrainConfig(experiment_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"target class\(es\) \['neuter'\] not in the data; its classes are "
                                          r"\['fem', 'masc'\]: choose two of them"):
        Trainer(tiny_gpt2, _data(), ["masc", "neuter"], config=cfg)
    with pytest.raises(ConfigError, match=r"target_classes must be two different class ids, got \['masc'\]"):
        Trainer(tiny_gpt2, _data(), "masc", config=cfg)
    with pytest.raises(ConfigError, match=r"config must be a TrainConfig or a dict of its fields, got int"):
        Trainer(tiny_gpt2, _data(), ["masc", "fem"], config=3)  # type: ignore[arg-type]
    for neutral, what in [([], r"neutral holds no text \(0 blank or no entries\)"),
                          (["", "  "], r"neutral holds no text \(2 blank"),
                          ("The city is quiet.", r"neutral is a single string, not a list of texts"),
                          (["ok", None], r"neutral\[1\] is NoneType, not a string")]:
        with pytest.raises(DataError, match=what + r".*give a list of neutral texts"):
            Trainer(tiny_gpt2, _data(), ["masc", "fem"], neutral=neutral, config=cfg)  # type: ignore[arg-type]
    assert Trainer(tiny_gpt2, _data(), ["masc", "fem"], neutral=("a", ""), config=cfg).neutral == ["a", ""]


@pytest.fixture(scope="module")
def trained(tiny_gpt2, tmp_path_factory) -> Trainer:
    cfg = TrainConfig(experiment_dir=str(tmp_path_factory.mktemp("run")), max_steps=2, eval_steps=2,
                      pre_prune_topk=50, pre_prune_samples=4, eval_max_size=4)
    trainer = Trainer(tiny_gpt2, _data(), ["masc", "fem"], neutral=NEUTRAL, config=cfg)
    trainer.train()
    return trainer


def _results(**selections: dict[str, Any]) -> DecoderResults:
    out = {}
    for key, change in selections.items():
        cls = key.removesuffix("_weaken")
        values = dict(key=key, target_class=cls, increase=not key.endswith("_weaken"), value=0.2, base_value=0.1,
                      feature_factor=1.0, learning_rate=1e-3, lms=0.5, base_lms=0.5)
        out[key] = Selection(**{**values, **change})
    return DecoderResults(out, [], {})


def test_rewrite_without_results_for_a_class_or_direction_names_the_step(trained) -> None:
    dec = _results(fem={})
    with pytest.raises(NotEvaluated) as info:
        trained.rewrite_base_model(dec, target_class="fem", increase_target_probabilities=False)
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, KeyError)  # `except KeyError` callers (cli rewrite) work
    assert str(err) == ("no decoder selection 'fem_weaken': the decoder was not evaluated to weaken 'fem' "
                        "(evaluated: ['fem']); run "
                        "trainer.evaluate_decoder(target_class='fem', increase_target_probabilities=False) first")
    with pytest.raises(ConfigError, match=r"^target class\(es\) \['neuter'\] are not classes of this run; give one of "
                                          r"\['masc', 'fem'\] \(or 'debias' after evaluate_debias\)"):
        trained.rewrite_base_model(dec, target_class="neuter")
    with pytest.raises(ConfigError, match=r"^give target_class"):
        trained.rewrite_base_model(dec)
    with pytest.raises(ConfigError, match=r"^target_class is an empty list"):
        trained.rewrite_base_model(dec, target_class=[])
    saved, trained.neutral = trained.neutral, None
    try:
        with pytest.raises(ConfigError, match=r"^this step needs neutral text: create the Trainer with neutral="):
            trained.evaluate_decoder()
    finally:
        trained.neutral = saved


@pytest.mark.parametrize("field", ["learning_rate", "feature_factor"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rewrite_factors_are_refused(trained, field: str, bad: float) -> None:
    before = {n: p.detach().clone() for n, p in trained.lm.model.named_parameters()}
    with pytest.raises(ArtifactError, match=rf"^the decoder selection 'fem' holds a non-finite {field} {bad!r}; "
                                            r"evaluate the decoder again"):
        trained.rewrite_base_model(_results(fem={field: bad}), target_class="fem")
    mwg = trained.get_model()
    kwargs = {"learning_rate": 1e-3, "feature_factor": 1.0, field: bad}
    for call in (lambda: mwg.as_edit(**kwargs), lambda: mwg.rewrite_base_model(**kwargs),
                 lambda: mwg.applied(**kwargs).__enter__()):
        with pytest.raises(EditError, match=rf"^{field} must be finite, got {bad!r}; give a finite number"):
            call()
    for n, p in trained.lm.model.named_parameters():  # nothing was applied
        assert torch.equal(p, before[n]), n
    assert math.isfinite(mwg.as_edit(1e-3, 1.0).norm())


# -- 3. blast: empty and blank corpora are DataErrors naming the fix -----------------------------------------------
def _edit(lm: ge.LanguageModel) -> ge.WeightEdit:
    name, p = next((n, p) for n, p in lm.model.named_parameters() if p.dim() == 2)
    return ge.WeightEdit.dense({name: torch.full_like(p, 1e-3)})


@pytest.mark.parametrize("corpora, pattern", [
    ({}, r"^corpora must be a non-empty mapping such as \{'en': \[\.\.\.\], 'de': \[\.\.\.\]\}; give at least one"),
    ({"en": []}, r"^corpus 'en' is empty; give it at least one text or leave it out$"),
    ({"en": ["", "  \n"]}, r"^corpus 'en' holds only blank texts \(2\); give it texts with words in them or leave it out$"),
    ({"en": ["x"]}, r"^corpus 'en': no token could be scored \(every text is shorter than two tokens\); give longer"),
])
def test_empty_and_blank_corpora_are_data_errors(tiny_gpt2, corpora: dict[str, list[str]], pattern: str) -> None:
    with pytest.raises(DataError) as info:
        ge.blast_radius(tiny_gpt2, _edit(tiny_gpt2), corpora, control=False)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_blank_target_texts_and_bad_sweeps_are_gradedit_errors(tiny_gpt2) -> None:
    with pytest.raises(DataError, match=r"^TargetSpec\.texts holds only blank texts \(1\); give texts that contain"):
        ge.TargetSpec([" "], [" he"])
    with pytest.raises(DataError, match=r"^TargetSpec\.texts is empty"):
        ge.TargetSpec([], [" he"])
    edit = _edit(tiny_gpt2)
    with pytest.raises(ConfigError, match=r"^values is empty"):
        ge.pareto_sweep(tiny_gpt2, lambda v: edit * v, [], {"en": ["The city is quiet."]}, None)
    with pytest.raises(ConfigError, match=r"^values must be finite, got \[1\.0, nan\]; give finite edit strengths"):
        ge.pareto_sweep(tiny_gpt2, lambda v: edit * v, [1, float("nan")], {"en": ["The city is quiet."]}, None)
    with pytest.raises(ConfigError, match=r"^target 'fr' is not a corpus key"):
        ge.blast_radius(tiny_gpt2, edit, {"en": ["The city is quiet."]}, "fr", control=False)
    # a corpus with one blank text among real ones is fine (blank texts score nothing)
    report = ge.blast_radius(tiny_gpt2, edit, {"en": ["", "The city is quiet and old."]}, control=False)
    assert report.n_tokens["en"] > 0 and isinstance(DataError("x"), GradeditError)


# -- 5. a kill between writing a checkpoint and swapping it in ------------------------------------------------------
class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs."""


def _resume_cfg(folder: Path) -> TrainConfig:
    return TrainConfig(experiment_dir=str(folder), max_steps=6, eval_steps=2, pre_prune_topk=50, pre_prune_samples=4,
                       eval_max_size=4, early_stopping_patience=None)


# (rename that is killed, how many such renames come before it): ``last`` is first moved away at step 4;
# ``last.new`` moves in at every checkpoint (steps 2, 4, 6)
@pytest.mark.parametrize("kill_at, before", [(("last", "last.old"), 0), (("last.new", "last"), 1)],
                         ids=["before-moving-last-away", "before-moving-last.new-in"])
def test_kill_during_a_checkpoint_swap_resumes_from_the_new_checkpoint(tiny_gpt2, tmp_path, monkeypatch, caplog,
                                                                       kill_at: tuple[str, str], before: int) -> None:
    """The step-4 checkpoint is complete in ``last.new`` when the kill comes: the rerun resumes from step 4
    (not 2, not 0), its later checkpoints succeed, and the model equals an uninterrupted run bit for bit."""
    reference = Trainer(tiny_gpt2, _data(), ["masc", "fem"], config=_resume_cfg(tmp_path / "ref")).train()
    real_rename = Path.rename
    seen = []

    def rename(self: Path, target: Any) -> Any:
        if (self.name, Path(target).name) == kill_at and self.parent.name == "seed_0":
            seen.append(1)
            if len(seen) == before + 1:  # the swap of the step-4 checkpoint
                raise Killed
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(tiny_gpt2, _data(), ["masc", "fem"], config=_resume_cfg(run)).train()
    assert (run / "seed_0" / "last.new").is_dir()  # what the kill left behind
    monkeypatch.setattr(Path, "rename", real_rename)
    with caplog.at_level("INFO", logger="gradedit.gradiend.train.loop"):
        resumed = Trainer(tiny_gpt2, _data(), ["masc", "fem"], config=_resume_cfg(run)).train()
    assert "resuming seed 0 from step 4" in caplog.text
    assert sorted(p.name for p in (run / "seed_0").iterdir()) == ["best", "last", "result.json"]
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


# -- 4. class ids as folder names ----------------------------------------------------------------------------------
def test_rewrite_of_several_classes_writes_one_checked_folder_per_class(trained, tmp_path, monkeypatch) -> None:
    dec = _results(fem={}, masc={})
    out = tmp_path / "out"
    models = trained.rewrite_base_model(dec, target_class=["masc", "fem"], output_dir=out)
    assert len(models) == 2 and sorted(p.name for p in out.iterdir()) == ["fem", "masc"]
    for cls in ("masc", "fem"):
        assert json.loads((out / cls / "rewrite_info.json").read_text())["target_class"] == cls
    # the folder name goes through safe_join even for a class id that slipped past the data checks
    monkeypatch.setattr(trained, "classes", ("masc", "../fem"))
    from gradedit.errors import UnsafeName

    with pytest.raises(UnsafeName, match=r"^class id '\.\./fem' holds '/'"):
        trained.rewrite_base_model(_results(**{"../fem": {}}), target_class=["../fem"], output_dir=tmp_path / "o2")
    assert not (tmp_path / "o2" / ".." / "fem").exists()


def test_rerunning_or_extending_a_finished_run_keeps_the_sign_normalisation(tiny_gpt2, tmp_path) -> None:
    """A finished seed's ``best/`` is sign-normalised (class A encodes positive). Rerunning the finished run,
    or extending it when no later evaluation replaces ``best/``, must not flip it a second time."""
    from gradedit._files import load_tree

    run = _resume_cfg(tmp_path / "run")
    first = Trainer(tiny_gpt2, _data(), ["masc", "fem"], config=run).train()
    state = load_tree(tmp_path / "run" / "seed_0" / "last" / "trainer_state.safetensors", "")
    assert state["best"]["class_means"]["masc"] < 0  # seed 0 trains masc negative: the flip path is taken
    again = Trainer(tiny_gpt2, _data(), ["masc", "fem"], config=run).train()  # nothing left to train
    longer = Trainer(tiny_gpt2, _data(), ["masc", "fem"], config=run.replace(max_steps=8)).train()
    straight = Trainer(tiny_gpt2, _data(), ["masc", "fem"],
                       config=_resume_cfg(tmp_path / "ref").replace(max_steps=8)).train()
    for other, ref in ((again, first), (longer, straight)):
        for (name, a), (_, b) in zip(ref.state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), name
    assert first.metadata["sign_normalised"] and first.metadata["correlation"] > 0
