"""The German-removal study end to end on a tiny model: disjoint text sets, matched strength, artefacts,
the German tokens each method read (measured here by a hook on the input embedding), the decomposed-
component method on a tiny decomposition, and the run's selection of methods (config and CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from gradedit import metrics
from gradedit.decompose import Decomposition, decompose
from gradedit.demo import german
from gradedit.demo.strength import match_strength
from gradedit.edits.components.decomposed import component_weight
from gradedit.errors import DecompositionError
from gradedit.models.zoo.tiny import tiny_corpus

MLP = ["model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj"]


@pytest.fixture(scope="module")
def tiny_dec(tiny_llama: ge.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick decomposition of tiny-llama's MLP input projections, saved to a folder."""
    out = tmp_path_factory.mktemp("dec")
    decompose(tiny_llama, MLP, 96, tiny_corpus(0)[:120], steps=60, batch_size=128, seq_len=32, seed=0, lr=0.01,
              importance_coeff=1e-3, faithfulness_coeff=100.0, out=out)
    return out


def _cfg(tmp: str, **kw: Any) -> german.GermanDemoConfig:
    return german.GermanDemoConfig(**{"model": "tiny-llama", "out_dir": tmp, "eval_texts": 5, "calibration_texts": 4,
                                      "selection_texts": 8, "lora_ranks": (1,), "lora_tokens": (16,), "lora_steps": 3,
                                      "gradiend": False, "pareto_alphas": (0.5, 1.0),
                                      "component_selection_tokens": (8, None), **kw})


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

    from gradedit.edits.components import activations

    wrap(german, "component_method", lambda a: f"component-sel{'all' if a[3] is None else a[3]}", "fit")
    wrap(german, "decomposed_methods", lambda a: f"decomposed-sel{'all' if a[4] is None else a[4]}", "fit")
    wrap(scalar, "selectivity", None, "selection")
    wrap(activations, "selectivity", None, "selection")
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
                                                         monkeypatch: pytest.MonkeyPatch, tiny_dec: Path) -> None:
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    cfg = _cfg(str(tmp_path), decomposition=str(tiny_dec), decomposed_selection_tokens=(8,))
    texts = german.Texts.build(cfg)
    reads, hook = _german_reads(tiny_llama, monkeypatch, texts.selection["de"] + texts.calibration,
                                [s for lang, v in texts.selection.items() if lang != "de" for s in v])
    try:
        res = german.run(cfg, lm=tiny_llama)
    finally:
        hook.remove()
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = ["decomposed-sel8-k1", "decomposed-sel8-k2", "decomposed-sel8-k3"]
    assert set(summary["methods"]) == {*rows, "component-sel8", "component-selall", "lora-r1-16tok"}
    assert summary["not_run_methods"] == {}
    family = reads.pop("decomposed-sel8")  # one selection for every k, then each row's fit; calibration per row
    assert set(family) == {"selection", "fit"}
    for name in rows:
        reads[name] = {**family, **reads[name]}
    measured = {}
    for name, per in reads.items():
        union = {ti: max(p.get(ti, 0) for p in per.values()) for p in per.values() for ti in p}
        measured[name] = {**{k: sum(v.values()) for k, v in per.items()}, "total": sum(union.values())}
    n_sel = sum(len(e) - sum(e) for e in tiny_llama.tokenizer(texts.selection["de"],
                                                               return_special_tokens_mask=True)["special_tokens_mask"])
    n_cal = sum(len(e) - sum(e) for e in tiny_llama.tokenizer(texts.calibration,
                                                               return_special_tokens_mask=True)["special_tokens_mask"])
    assert measured["component-sel8"]["selection"] == 8 and measured["component-selall"]["selection"] == n_sel > 16
    dec = Decomposition.load(tiny_dec)
    alive = {(n, c) for n in dec.modules for c, f in enumerate(dec.stats[n]["firing_frequency"]) if f > 0}
    for k, name in enumerate(rows, start=1):
        assert measured[name]["selection"] == 8 and measured[name]["fit"] == 16
        meta = json.loads((tmp_path / "edits" / name / "edit.json").read_text())["metadata"]
        assert meta["components_from"] == "decomposition" and meta["selection"]["n_tokens"] == 8
        chosen = [(c["module"], c["index"]) for c in meta["components"]]
        assert len(chosen) == k and set(chosen) <= alive  # the k best-ranked alive components
        assert chosen == [(r["module"], r["index"]) for r in meta["selection"]["ranking"][:k]]
        # oracle: the saved edit is alpha (s_c - 1) outer(U[c], V[:, c]) of the decomposition's own components
        edit, alpha = ge.WeightEdit.load(tmp_path / "edits" / name), summary["methods"][name]["alpha"]
        for module in {m for m, _ in chosen}:
            want = sum(alpha * (c["s"] - 1.0) * component_weight(dec, module, c["index"])
                       for c in meta["components"] if c["module"] == module)
            torch.testing.assert_close(edit.delta(f"{module}.weight", tiny_llama.model).float(), want,
                                       rtol=1e-4, atol=1e-6)
        assert meta["status"] == "fitted" and any(c["s"] != 1.0 for c in meta["components"])  # a real edit
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


def test_decomposition_of_another_model_is_refused(tmp_path: Path, tiny_dec: Path) -> None:
    """Checked before any method is built: a decomposition of other weights, and a folder without one."""
    other = ge.load_model("tiny-llama")
    with torch.no_grad():
        other.model.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    cfg = _cfg(str(tmp_path / "run"), decomposition=str(tiny_dec), methods=("decomposed-sel8", "lora-r1-16tok"))
    with pytest.raises(DecompositionError, match="another model"):
        german.run(cfg, lm=other)
    assert not (tmp_path / "run" / "edits").exists()
    bad = _cfg(str(tmp_path / "bad"), model="no-such-model", decomposition=str(tmp_path), methods=("decomposed-sel8",))
    with pytest.raises(DecompositionError, match="no decomposition in"):  # before the (unloadable) model loads
        german.run(bad)


def test_methods_subset_and_absent_decomposition_is_reported(tmp_path: Path, tiny_llama: ge.LanguageModel) -> None:
    cfg = _cfg(str(tmp_path), methods=("decomposed-sel8", "lora-r1-16tok"), target_de_ce=0.05)
    res = german.run(cfg, lm=tiny_llama)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = [f"decomposed-sel8-k{k}" for k in (1, 2, 3)]
    assert set(summary["methods"]) == {"lora-r1-16tok"}  # component-sel8/selall of the sizes are not built
    assert summary["not_run_methods"] == {n: german.NO_DECOMPOSITION for n in rows}
    page = (tmp_path / "report.html").read_text()
    assert all(f"{n} did not run" in page for n in rows) and "--decomposition DIR" in page
    assert f"{rows[0]} not run: {german.NO_DECOMPOSITION}" in res.headline
    goal = summary["goal"]["methods"]["lora-r1-16tok"]
    assert goal["met"] is (goal["german"] >= 2.0 and abs(goal["worst_other"]) <= 0.1) and goal["met"] is False
    assert any(line.startswith("lora-r1-16tok: goal not met: German") for line in res.headline)
    assert summary["target_de_ce_calibration"] == 0.05


def test_method_names_and_the_default_plan() -> None:
    default = german.GermanDemoConfig()
    assert default.plan().names() == [  # the default study, plus the decomposed rows (not run without a folder)
        "decomposed-sel16-k1", "decomposed-sel16-k2", "decomposed-sel16-k3", "component-sel16", "component-sel64",
        "component-sel256", "component-selall", "lora-r1-16tok", "lora-r1-256tok", "lora-r4-16tok",
        "lora-r4-256tok", "gradiend"]
    cfg = german.GermanDemoConfig(methods=("lora-r4-16tok", "decomposed-selall-k2", "component-sel16",
                                           "decomposed-selall"))
    plan = cfg.plan()
    assert plan.names() == ["decomposed-selall-k1", "decomposed-selall-k2", "decomposed-selall-k3",
                            "component-sel16", "lora-r4-16tok"]
    assert plan.decomposed == ((None, (1, 2, 3)),) and not plan.gradiend
    assert cfg.lora_lr_for(4) == 1e-3 and cfg.lora_lr_for(1) == 2e-3  # the rank's own lr, as in the full study
    for bad in (("lora-r4",), ("decomposed-sel0",), ("decomposed-sel16-k0",), ()):
        with pytest.raises(ValueError, match="method|budget|k counts"):
            german.GermanDemoConfig(methods=bad)


def test_cli_flags_reach_the_config(tmp_path: Path, tiny_dec: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gradedit.cli.app import main
    from gradedit.demo.common import DemoResult

    seen: list[german.GermanDemoConfig] = []

    def fake_run(cfg: german.GermanDemoConfig) -> DemoResult:
        seen.append(cfg)
        return DemoResult(out_dir=tmp_path, report=tmp_path / "report.html", headline=["done"])

    monkeypatch.setattr(german, "run", fake_run)
    argv = ["demo", "german", "--decomposition", str(tiny_dec), "--target-ce", "2", "--out", str(tmp_path),
            "--methods", "decomposed-sel16, component-sel16,lora-r4-16tok"]
    assert main(argv) == 0
    (cfg,) = seen
    assert cfg.target_de_ce == 2.0 and cfg.decomposition == str(tiny_dec) and cfg.out_dir == str(tmp_path)
    assert cfg.methods == ("decomposed-sel16", "component-sel16", "lora-r4-16tok")
    assert main(["demo", "german", "--out", str(tmp_path)]) == 0  # no flags: the default study
    assert seen[1].target_de_ce == 1.0 and seen[1].methods is None and seen[1].decomposition is None
    capsys.readouterr()
    for bad, why in ((["--methods", "lora-r4"], "unknown method"), (["--target-ce", "-1"], "target_de_ce"),
                     (["--decomposition", str(tmp_path)], "no decomposition.json")):
        assert main(["demo", "german", "--out", str(tmp_path), *bad]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
    assert main(["demo", "--methods", "lora-r4-16tok"]) == 2  # a German-study flag on the pronoun demo
    assert "German study" in capsys.readouterr().err
    assert len(seen) == 2
