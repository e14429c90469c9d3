"""The pronoun demo end to end on a tiny model: artefacts, held-out discipline, and the report in Chromium."""

from __future__ import annotations

import json
import math

import pytest

import gradedit as ge
from chromium import external, guarded_page
from gradedit import metrics
from gradedit.data import corpora
from gradedit.demo import pronouns
from gradedit.demo.conclusion import GOAL_PERPLEXITY, conclude, edit_groups, goal_of


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> pronouns.DemoResult:
    out = tmp_path_factory.mktemp("demo")
    cfg = pronouns.PronounDemoConfig(model="tiny-llama", out_dir=str(out), steps=4, eval_steps=2,
                                     encoder_max_size=16, decoder_rows_per_class=4, neutral_selection=8,
                                     neutral_heldout=6, other_lang_texts=3, refine_steps=1,
                                     selector="perplexity:0.5", debias_selector="balance:0.5")
    return pronouns.run(cfg)


def test_demo_writes_report_and_consistent_summary(demo: pronouns.DemoResult, tiny_llama: ge.LanguageModel) -> None:
    summary = json.loads((demo.out_dir / "summary.json").read_text())
    assert demo.report.is_file() and demo.report.name == "report.html"
    names = [n for c in summary["conclusion"] for n in c["names"]] + list(summary["not_rewritten"])
    assert sorted(names) == ["debias", "strengthen fem", "weaken masc"]
    assert demo.headline[-1].startswith("total time")
    # the base probabilities are an independent recomputation away
    base = pronouns.probe_prompts(tiny_llama, list(pronouns.EXAMPLE_PROMPTS))
    assert [round(b["he"], 6) for b in base] == [round(b["he"], 6) for b in summary["base"]["examples"]]
    for rw in summary["rewrites"].values():
        assert set(rw["blast"]["ce_delta"]) == {"en", "de", "fr"}
        assert set(rw["blast"]["on_target"]["by_token"]) <= {" he", " she"}
    # held-out discipline: blast corpora are not the decoder's selection text, other languages' text is the tail
    trainer = ge.Trainer.load(demo.out_dir / "run", lm=tiny_llama)
    held = pronouns.held_out_corpora(pronouns.PronounDemoConfig(**{**summary["config"], "other_langs": ("de", "fr")}),
                                     trainer)
    assert not set(held["en"]) & set(trainer.neutral[:8])
    assert held["de"] == corpora.sentences("de")[-3:]
    ce = metrics.cross_entropy(tiny_llama, held["en"])
    assert summary["base"]["perplexity"] == pytest.approx(math.exp(ce), rel=1e-4)
    for rw in summary["rewrites"].values():
        assert rw["blast"]["ce_base"]["en"] == pytest.approx(ce, abs=1e-4)
    # the conclusion's perplexity change is the blast radius's CE change on the same held-out English
    for c in summary["conclusion"]:
        rw = summary["rewrites"][c["rewrite"]]
        assert c["heldout_perplexity_change"] == pytest.approx(math.expm1(rw["blast"]["ce_delta"]["en"]), abs=1e-4)
        assert c["met"] == (all(g["reached"] for g in c["goals"]) and c["heldout_perplexity_change"] <= GOAL_PERPLEXITY)


def test_identical_rewrites_are_grouped_and_goals_are_held_out() -> None:
    class Sel:
        def __init__(self, ff: float, lr: float) -> None:
            self.feature_factor, self.learning_rate = ff, lr

    groups = edit_groups({"strengthen fem": Sel(1, 0.02), "weaken masc": Sel(1.0, 0.02), "debias": Sel(-1, 0.01)})
    assert groups == [["strengthen fem", "weaken masc"], ["debias"]]
    tokens = {"masc": " he", "fem": " she"}
    assert goal_of("strengthen fem", tokens)["key"] == "p_fem_on_masc"
    assert goal_of("weaken masc", tokens)["key"] == "p_masc_on_masc"
    with pytest.raises(ValueError, match="unknown rewrite"):
        goal_of("boost fem", tokens)

    class Rep:
        ce_delta, kl, control_kl, control_ce_delta = {"en": 0.01}, {"en": 0.001}, {"en": 0.0001}, {"en": 0.0}

    base = {"p_fem_on_masc": 0.01, "p_masc_on_masc": 0.2, "lms": 0.4, "perplexity": 10.0}
    edit = {"names": ["strengthen fem", "weaken masc"], "feature_factor": 1.0, "learning_rate": 0.02, "blast": Rep(),
            "held": {"p_fem_on_masc": 0.021, "p_masc_on_masc": 0.15, "lms": 0.39, "perplexity": 10.1},
            "selection": {"constraint": "perplexity <= 1.01 x base", "split": "val", "data": "rows"}}
    (c,) = conclude(base, [edit], tokens)
    assert c["rewrite"] == "strengthen fem = weaken masc" and c["identical"]
    assert [g["reached"] for g in c["goals"]] == [True, False] and not c["met"]  # he fell x0.75 only
    assert c["heldout_perplexity_change"] == pytest.approx(0.01)


def _small(x: float) -> str:
    return f"{x:.4f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.1e}"


def _fmt_checks(c: dict) -> list[str]:
    """The numbers of one conclusion as the page must show them (formats fixed here, not imported)."""
    want = [c["rewrite"], f"{100 * c['heldout_perplexity_change']:+.1f}%", f"{c['lms_before']:.4f}",
            f"{c['lms_after']:.4f}", c["selected_under"]]
    for g in c["goals"]:
        want += [f"{_small(g['before'])} → {_small(g['after'])}", f"×{g['ratio']:.2f}"]
    want += [f"{v:+.3f}" for v in c["ce_delta"].values()]
    want += [f"{lang} {_small(v)}" for lang, v in c["kl"].items()] + [_small(v) for v in c["control_kl"].values()]
    return want


def test_report_opens_with_a_conclusion_that_carries_the_summary_numbers(demo: pronouns.DemoResult) -> None:
    summary = json.loads((demo.out_dir / "summary.json").read_text())
    requests: list[str] = []
    with guarded_page(requests, viewport=(1200, 900)) as page:
        page.goto(demo.report.as_uri())
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        conclusion = page.locator(".gx-conclusion").inner_text()
        table = page.locator("table.gx-conclusion-table").inner_text() if summary["conclusion"] else ""
        first_box = page.locator(".gx-conclusion").bounding_box()
        body = page.locator("body").inner_text()
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        th = page.eval_on_selector_all("th", "els => els.map(e => e.textContent)")
    assert headings[0] == "Conclusion" and first_box is not None and first_box["y"] < 300
    for name in summary["not_rewritten"]:
        assert name in conclusion and "not rewritten" in conclusion
    for c in summary["conclusion"]:
        text = conclusion + "\n" + table
        missing = [w for w in _fmt_checks(c) if w not in text]
        assert not missing, f"{c['rewrite']}: numbers of summary.json missing from the conclusion: {missing}"
        assert ("meets the goal" if c["met"] else "misses the goal") in conclusion
        if c["identical"]:
            assert "selected the same edit" in conclusion and "shown once" in conclusion
    # labels for a reader: no raw field names, no pandas index column, no "(training)" for held-out rows
    for raw in ("selection_base_value", "control_ce_delta", "ce_delta", "feature_factor", "(training)"):
        assert raw not in body, raw
    assert "" not in th, "a table has an unnamed (index) column"
    assert "Hover over" in body and "share one colour scale" in body
    assert len(images) >= 4 and all(ok and width > 0 for ok, width in images), images
    assert any("Blast radius" in h for h in headings) and any("Token heatmaps" in h for h in headings)
    assert external(requests) == [], f"the report requested external resources: {external(requests)}"
