"""The German-removal study end to end on a tiny model: disjoint text sets, matched strength, artefacts."""

from __future__ import annotations

import json

import pytest
import torch

import gradedit as ge
from gradedit import metrics
from gradedit.demo import german
from gradedit.demo.strength import match_strength


def _cfg(tmp: str) -> german.GermanDemoConfig:
    return german.GermanDemoConfig(model="tiny-llama", out_dir=tmp, eval_texts=5, calibration_texts=4,
                                   selection_texts=8, lora_ranks=(1,), lora_tokens=(16,), lora_steps=3,
                                   gradiend=False, pareto_alphas=(0.5, 1.0))


def test_text_sets_are_disjoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    texts = german.Texts.build(_cfg(str(tmp_path)))
    evaluation = {s for v in texts.evaluation.values() for s in v}
    used = {s for v in texts.selection.values() for s in v} | set(texts.calibration)
    assert not evaluation & used
    assert not set(texts.calibration) & set(texts.selection["de"])
    assert set(texts.evaluation) == set(german.LANGS)


def test_match_strength_hits_the_target(tiny_llama: ge.LanguageModel) -> None:
    name = "model.layers.0.mlp.up_proj.weight"
    p = dict(tiny_llama.model.named_parameters())[name]
    edit = ge.WeightEdit.dense({name: torch.randn(p.shape, generator=torch.Generator().manual_seed(1))})
    texts = ["Und Gott sprach: Es werde Licht.", "Der Herr ist mein Hirte."]
    base = metrics.cross_entropy(tiny_llama, texts)
    with edit.applied(tiny_llama.model):
        d1 = metrics.cross_entropy(tiny_llama, texts) - base
    if d1 < 0:  # a random direction may help a random model: take the one that hurts
        edit, d1 = -edit, None
        with edit.applied(tiny_llama.model):
            d1 = metrics.cross_entropy(tiny_llama, texts) - base
    assert d1 > 0
    target = d1 / 2
    m = match_strength(tiny_llama, lambda a: edit * a, texts, target, base_ce=base)
    with (edit * m.alpha).applied(tiny_llama.model):
        got = metrics.cross_entropy(tiny_llama, texts) - base
    assert got == pytest.approx(m.delta, abs=1e-5)
    assert m.reached and abs(got - target) <= 0.1 * target
    assert 0 < m.alpha < 1.5
    with pytest.raises(ValueError, match="positive"):
        match_strength(tiny_llama, lambda a: edit * a, texts, -1.0)


def test_german_study_runs_and_reports(tmp_path, tiny_llama: ge.LanguageModel) -> None:  # type: ignore[no-untyped-def]
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    res = german.run(_cfg(str(tmp_path)), lm=tiny_llama)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == {"component", "lora-r1-16tok"}
    assert summary["methods"]["lora-r1-16tok"]["data"]["train_german_tokens"] == 16
    assert summary["methods"]["component"]["data"]["fit_german_tokens"] == 16
    for name in summary["methods"]:
        assert (tmp_path / "edits" / name / "edit.json").is_file()
        blast = summary["methods"][name]["blast"]
        assert set(blast["ce_delta"]) == set(german.LANGS) and blast["target"] == "de"
    assert res.report.is_file() and "Pareto" in res.report.read_text()
    after = tiny_llama.model.state_dict()  # every edit was applied in place and restored
    assert all(bool((before[k] == after[k]).all()) for k in before)


def test_match_strength_brackets_an_edit_far_too_strong(tiny_llama: ge.LanguageModel) -> None:
    """An edit whose unit strength overshoots the target by orders of magnitude is still matched (the
    GRADIEND language edit on gemma3 was ~30x too strong at alpha 1)."""
    name = "model.norm.weight"  # scaling the final norm scales the logits: CE grows with the scale
    p = dict(tiny_llama.model.named_parameters())[name]
    texts = ["Und Gott sprach: Es werde Licht.", "Der Herr ist mein Hirte."]
    base = metrics.cross_entropy(tiny_llama, texts)
    edit = ge.WeightEdit.dense({name: p.detach() * 1000.0})
    with (edit * 3e-3).applied(tiny_llama.model):
        target = metrics.cross_entropy(tiny_llama, texts) - base
    with edit.applied(tiny_llama.model):
        assert metrics.cross_entropy(tiny_llama, texts) - base > 10 * target > 0
    m = match_strength(tiny_llama, lambda a: edit * a, texts, target, base_ce=base)
    assert m.reached, m.probes
    assert 1e-3 < m.alpha < 1e-2 and len(m.probes) <= 24
