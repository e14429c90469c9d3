"""The German-removal study end to end on a tiny model: disjoint text sets, matched strength, artefacts,
and the German tokens each method read (measured here by a hook on the input embedding)."""

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
                                   gradiend=False, pareto_alphas=(0.5, 1.0), component_selection_tokens=(8, None))


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


def _german_reads(lm: ge.LanguageModel, monkeypatch: pytest.MonkeyPatch, german_texts: list[str],
                  other_texts: list[str]) -> tuple:
    """Attribute every embedding lookup during the study to (method, purpose) by wrapping its steps;
    returns (``{method: {purpose: {text index: tokens}}}``, the hook handle): per German text the
    longest prefix of its text tokens read (a row that also starts an ``other_texts`` text is not German)."""
    from gradedit.edits.components import scalar

    state: dict[str, str | None] = {"method": None, "purpose": None}

    def wrap(module, name, method, purpose):  # type: ignore[no-untyped-def]
        real = getattr(module, name)

        def run(*a, **k):  # type: ignore[no-untyped-def]
            old = dict(state)
            state["method"] = method(a) if callable(method) else (method or state["method"])
            state["purpose"] = purpose
            try:
                return real(*a, **k)
            finally:
                state.update(old)
        monkeypatch.setattr(module, name, run)

    wrap(german, "component_method", lambda a: f"component-sel{'all' if a[3] is None else a[3]}", "fit")
    wrap(scalar, "selectivity", None, "selection")
    wrap(german, "lora_methods", "lora-r1-16tok", "fit")
    wrap(german, "match_strength", lambda a: a[1].__self__.name, "calibration")
    special = set(lm.tokenizer.all_special_ids) - {lm.tokenizer.unk_token_id}
    targets = [lm.tokenizer(t)["input_ids"] for t in german_texts]
    others = [lm.tokenizer(t)["input_ids"] for t in other_texts]
    longest: dict[str, dict[str, dict[int, int]]] = {}

    def look(_m, a) -> None:  # type: ignore[no-untyped-def]
        if state["method"] is None:
            return
        for row in a[0].tolist():
            while row and row[-1] == lm.tokenizer.pad_token_id:
                row = row[:-1]
            if any(o[: len(row)] == row for o in others):
                continue
            for ti, t in enumerate(targets):
                if row and t[: len(row)] == row:
                    per = longest.setdefault(state["method"], {}).setdefault(state["purpose"], {})
                    per[ti] = max(per.get(ti, 0), sum(i not in special for i in row))
    return longest, lm.model.get_input_embeddings().register_forward_pre_hook(look)


def test_german_study_counts_the_german_tokens_it_reads(tmp_path, tiny_llama: ge.LanguageModel,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    cfg = _cfg(str(tmp_path))
    texts = german.Texts.build(cfg)
    reads, hook = _german_reads(tiny_llama, monkeypatch, texts.selection["de"] + texts.calibration,
                                [s for lang, v in texts.selection.items() if lang != "de" for s in v])
    try:
        res = german.run(cfg, lm=tiny_llama)
    finally:
        hook.remove()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == {"component-sel8", "component-selall", "lora-r1-16tok"}
    measured = {}
    for name, per in reads.items():
        union = {ti: max(p.get(ti, 0) for p in per.values()) for p in per.values() for ti in p}
        measured[name] = {**{k: sum(v.values()) for k, v in per.items()}, "total": sum(union.values())}
    n_sel = sum(len(e) - sum(e) for e in tiny_llama.tokenizer(texts.selection["de"],
                                                               return_special_tokens_mask=True)["special_tokens_mask"])
    n_cal = sum(len(e) - sum(e) for e in tiny_llama.tokenizer(texts.calibration,
                                                               return_special_tokens_mask=True)["special_tokens_mask"])
    assert measured["component-sel8"]["selection"] == 8 and measured["component-selall"]["selection"] == n_sel > 16
    assert measured["lora-r1-16tok"]["fit"] == 16 == measured["component-sel8"]["fit"]
    for name, m in summary["methods"].items():
        assert m["data"]["german_tokens"] == measured[name], name  # the study reports what was read
        assert m["data"]["german_tokens_hook"]["total"] == measured[name]["total"], name  # its own hook agrees
        assert measured[name]["calibration"] == n_cal
        assert json.loads((tmp_path / "edits" / name / "edit.json").read_text())["metadata"][
            "target_tokens_used"] == measured[name]
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
