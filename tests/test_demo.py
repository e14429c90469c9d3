"""The pronoun demo end to end on a tiny model: artefacts, held-out discipline, and the report in Chromium."""

from __future__ import annotations

import json

import pytest

import gradedit as ge
from chromium import external, guarded_page
from gradedit import metrics
from gradedit.data import corpora
from gradedit.demo import pronouns


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> pronouns.DemoResult:
    out = tmp_path_factory.mktemp("demo")
    cfg = pronouns.PronounDemoConfig(model="tiny-llama", out_dir=str(out), steps=3, encoder_max_size=16,
                                     decoder_rows_per_class=4, neutral_selection=8, neutral_heldout=6,
                                     other_lang_texts=3)
    return pronouns.run(cfg)


def test_demo_writes_report_and_consistent_summary(demo: pronouns.DemoResult, tiny_llama: ge.LanguageModel) -> None:
    summary = json.loads((demo.out_dir / "summary.json").read_text())
    assert demo.report.is_file() and demo.report.name == "report.html"
    assert set(summary["rewrites"]) == {"strengthen fem", "weaken masc"}
    assert demo.headline[-1].startswith("total time") and any("strengthen fem" in h for h in demo.headline)
    # the base probabilities are an independent recomputation away
    base = pronouns.probe_prompts(tiny_llama, list(pronouns.EXAMPLE_PROMPTS))
    assert [round(b["he"], 6) for b in base] == [round(b["he"], 6) for b in summary["base"]["examples"]]
    for name, rw in summary["rewrites"].items():
        blast = rw["blast"]
        assert set(blast["ce_delta"]) == {"en", "de", "fr"}
        assert (demo.out_dir / f"blast_{name.replace(' ', '_')}.json").is_file()
    # held-out discipline: blast corpora are not the decoder's selection text, other languages' text is the tail
    trainer = ge.Trainer.load(demo.out_dir / "run", lm=tiny_llama)
    held = pronouns.held_out_corpora(pronouns.PronounDemoConfig(**{**summary["config"], "other_langs": ("de", "fr")}),
                                     trainer)
    assert not set(held["en"]) & set(trainer.neutral[:8])
    assert held["de"] == corpora.sentences("de")[-3:]
    ce = metrics.cross_entropy(tiny_llama, held["en"])
    assert summary["rewrites"]["weaken masc"]["blast"]["ce_base"]["en"] == pytest.approx(ce, abs=1e-4)


def test_demo_report_renders_in_chromium(demo: pronouns.DemoResult) -> None:
    requests: list[str] = []
    with guarded_page(requests, viewport=(1200, 900)) as page:
        page.goto(demo.report.as_uri())
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
        tables = page.locator("table").count()
    assert len(images) >= 4 and all(ok and width > 0 for ok, width in images), images
    assert any("Blast radius" in h for h in headings) and any("Token heatmap" in h for h in headings)
    assert tables >= 3
    assert external(requests) == [], f"the report requested external resources: {external(requests)}"
