"""The write-vector redirect study (issue 14.5b) on tiny random models: fire positions, the analytic
rewrite (oracle and sign), token accounting by purpose, the run end to end with its files, and a
selection that finds nothing saying so."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from gradedit.decompose import decompose
from gradedit.demo import redirect
from gradedit.demo.redirect_data import (
    StudyTexts,
    display_tokens,
    fire_positions,
    fit_examples,
    passages,
    split_texts,
    text_tokens,
)
from gradedit.demo.redirect_eval import fire_logp
from gradedit.demo.redirect_fit import fit_lora, fit_write_vector
from gradedit.demo.redirect_select import (
    choose_component,
    fire_selectivity,
    orientation,
    redirect_write,
    unit_alpha,
)
from gradedit.demo.strength import TokenReads
from gradedit.edits import Component, ComponentSet, component_activations, svd_components
from gradedit.edits.components.write_vector import unembedding_direction
from gradedit.errors import EditError
from gradedit.models.zoo.tiny import tiny_corpus

DOWN = "model.layers.1.mlp.down_proj"
NURSE = r"\bnurse\b"


def _weight(lm: ge.LanguageModel, name: str) -> torch.Tensor:
    return dict(lm.model.named_modules())[name].weight.detach().clone()


@pytest.fixture(scope="module")
def study_texts(tiny_llama: ge.LanguageModel) -> StudyTexts:
    pool = passages("tiny", window=3)
    return split_texts(tiny_llama, pool, NURSE, n_eval=6, n_selection=8, n_fit=4, n_unrelated=(6, 6, 4), seed=0)


@pytest.fixture(scope="module")
def tiny_down_dec(tiny_llama: ge.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("down")
    torch.set_num_threads(1)
    decompose(tiny_llama, "model.layers.*.mlp.down_proj", 32, tiny_corpus(0)[:60], steps=20, batch_size=64,
              seq_len=32, seed=0, lr=0.01, importance_coeff=1e-3, out=out)
    return out


def test_fire_positions_on_hand_made_text(tiny_llama: ge.LanguageModel, tiny_gpt2: ge.LanguageModel) -> None:
    text = "The nurse said that the nurse is late, my friend saw the nurse"
    for lm in (tiny_llama, tiny_gpt2):
        ids = lm.tokenizer(text)["input_ids"]
        pieces = lm.tokenizer.convert_ids_to_tokens(ids)
        nurse = [p for p, t in enumerate(pieces) if t.lstrip("▁Ġ") == "nurse"]
        assert len(nurse) == 3
        # the last "nurse" ends the text: nothing follows it, so it cannot be a fire position
        assert fire_positions(lm, text, NURSE) == nurse[:2]
        # a two-word class fires on the token that holds its last character
        assert fire_positions(lm, text, r"nurse said") == [nurse[0] + 1]
        assert fire_positions(lm, text, r"doctor") == []
        shown = display_tokens(lm, text)
        assert len(shown) == len(ids)
        assert "".join(s for s, sp in zip(shown, lm.tokenizer(text, return_special_tokens_mask=True)
                                           ["special_tokens_mask"]) if not sp) == text
    # a character split over two byte-level tokens fires on the token that completes it
    g = tiny_gpt2
    t = "a nurse said ö ok"
    pieces = g.tokenizer.convert_ids_to_tokens(g.tokenizer(t)["input_ids"])
    p = fire_positions(g, t, "ö")
    assert len(p) == 1 and pieces[p[0] - 1] != "Ġ" and "".join(display_tokens(g, t)) == t


def test_text_sets_are_disjoint_and_examples_end_in_the_target(tiny_llama: ge.LanguageModel,
                                                              study_texts: StudyTexts) -> None:
    t = study_texts
    sets = [t.selection, t.fit, t.evaluation, t.unrelated_selection, t.unrelated_fit, t.unrelated_eval]
    flat = [x for s in sets for x in s]
    assert len(flat) == len(set(flat))
    assert all("nurse" in x for x in t.selection + t.fit + t.evaluation)
    assert not any("nurse" in x for x in t.unrelated_selection + t.unrelated_fit + t.unrelated_eval)
    exs = fit_examples(tiny_llama, t.fit, t.fires_of(t.fit), " o", 3)
    tid = tiny_llama.token_id(" o")
    for e in exs:
        ids = tiny_llama.tokenizer(e.text)["input_ids"]
        assert ids[e.fire + 1] == tid and len(ids) == e.fire + 2 and t.fit[e.passage].startswith(e.text[:-2])
        assert fire_positions(tiny_llama, t.fit[e.passage], NURSE).count(e.fire) == 1


def test_analytic_rewrite_is_exactly_the_rank_one_write_change_with_the_sign_handled(
        tiny_llama: ge.LanguageModel, study_texts: StudyTexts) -> None:
    lm, t = tiny_llama, study_texts
    c = svd_components(lm, DOWN)[3]
    flipped = Component(c.module_name, c.index, -c.U, -c.V, c.sigma)
    stats = fire_selectivity(lm, ComponentSet([c, flipped]), t.selection, t.fires_of(t.selection),
                             t.unrelated_selection)
    torch.testing.assert_close(stats.signed_mean[0], -stats.signed_mean[1])
    s, s_flip = orientation(float(stats.signed_mean[0])), orientation(float(stats.signed_mean[1]))
    assert s == -s_flip
    tid, alpha = lm.token_id(" o"), 3.0 * c.sigma
    u = unembedding_direction(lm, tid)
    W0 = _weight(lm, DOWN)
    deltas = []
    for comp, sign in ((c, s), (flipped, s_flip)):
        edit = redirect_write(lm, comp, tid, alpha, sign)
        assert edit.param_names == [f"{DOWN}.weight"]
        with edit.applied(lm.model):
            W1 = _weight(lm, DOWN)
        deltas.append(W1 - W0)
        # oracle: the weight changes by exactly (s·α·û − σU) Vᵀ and now writes s·α·û along V
        torch.testing.assert_close(W1 - W0, torch.outer(sign * alpha * u - c.sigma * comp.U, comp.V), atol=1e-5, rtol=0)
        torch.testing.assert_close(W1 @ comp.V, sign * alpha * u, atol=1e-5, rtol=0)
        assert int(torch.linalg.matrix_rank(W1 - W0, atol=1e-5)) == 1
        assert torch.equal(_weight(lm, DOWN), W0)  # restored bit-exactly
    torch.testing.assert_close(deltas[0], deltas[1], atol=1e-6, rtol=0)  # (−U)(−V)ᵀ: same edit
    with pytest.raises(EditError, match="residual stream"):
        redirect_write(lm, svd_components(lm, "model.layers.1.mlp.up_proj")[0], tid, 1.0, 1.0)


def test_analytic_rewrite_raises_the_target_where_the_oriented_activation_is_positive(
        tiny_llama: ge.LanguageModel) -> None:
    lm = tiny_llama
    c = svd_components(lm, DOWN)[0]  # the last layer: its write reaches the head directly
    tid = lm.token_id(" o")
    texts = ["The nurse said that she would be late.", "My friend knows the house is old."]
    enc = lm.tokenize(texts)
    acts = component_activations(lm, [c], texts, per_token=True)
    assert acts.per_token is not None and acts.positions is not None
    for sign in (1.0, -1.0):
        with torch.no_grad():
            base = lm.forward_logits(enc["input_ids"], enc["attention_mask"]).log_softmax(-1)[..., tid]
            with redirect_write(lm, c, tid, 20.0 * c.sigma, sign).applied(lm.model):
                after = lm.forward_logits(enc["input_ids"], enc["attention_mask"]).log_softmax(-1)[..., tid]
        a = torch.cat([sign * acts.per_token[i][:, 0] for i in range(len(texts))])
        d = torch.cat([(after - base)[i, acts.positions[i]] for i in range(len(texts))])
        # the new write is +α·(s·V·x)·û: the target rises where the oriented activation is positive
        assert float(d[a > 0].mean()) > 0.1 and float(d[a < 0].mean()) < -0.1
        assert float(torch.corrcoef(torch.stack([a, d]))[0, 1]) > 0.8


def test_unit_strength_raises_the_target_by_one_nat_on_the_calibration_text(
        tiny_llama: ge.LanguageModel, study_texts: StudyTexts) -> None:
    lm, t = tiny_llama, study_texts
    fires = t.fires_of(t.selection)
    ch = choose_component(lm, svd_components(lm, "model.layers.*.mlp.down_proj"), "svd", t.selection, fires,
                          t.unrelated_selection, min_score=-math.inf)
    tid = lm.token_id(" o")
    unit = unit_alpha(lm, ch, tid, t.selection, fires)
    assert unit.reached and unit.gain == pytest.approx(1.0, abs=0.1) and len(unit.probes) >= 2
    base = fire_logp(lm, t.selection, fires, tid)
    assert base.numel() == sum(len(f) for f in fires)
    for k, lo, hi in ((1.0, 0.9, 1.1), (0.25, 0.0, 0.9)):
        with redirect_write(lm, ch.component, tid, k * unit.alpha, ch.sign).applied(lm.model):
            gain = float((fire_logp(lm, t.selection, fires, tid) - base).mean())
        assert lo < gain < hi
    with redirect_write(lm, ch.component, tid, unit.alpha, -ch.sign).applied(lm.model):  # the wrong sign lowers it
        assert float((fire_logp(lm, t.selection, fires, tid) - base).mean()) < 0


def test_token_accounting_by_purpose(tiny_llama: ge.LanguageModel, study_texts: StudyTexts) -> None:
    lm, t = tiny_llama, study_texts
    exs = fit_examples(lm, t.fit, t.fires_of(t.fit), " o", 3)
    expect = sum(text_tokens(lm, e.text) for e in exs)
    reads = TokenReads(lm, t.fit + [e.text for e in exs], exclude=t.unrelated_fit)
    c = svd_components(lm, DOWN)[2]
    with reads.record("fit"):
        edit, hist = fit_write_vector(lm, c, exs, t.unrelated_fit, lm.token_id(" o"), steps=3, lr=0.05)
    assert edit.metadata["target_tokens_used"] == {"fit": expect, "total": expect} == reads.counts()
    assert hist[-1]["ce"] < hist[0]["ce"] and hist[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    # oracle: the loop's CE before training is −mean log P(target) at the examples' fire positions
    base = fire_logp(lm, [e.text for e in exs], [[e.fire] for e in exs], lm.token_id(" o"))
    assert base.numel() == len(exs) and hist[0]["ce"] == pytest.approx(-float(base.mean()), abs=1e-4)
    reads = reads.fresh()
    with reads.record("fit"):
        ledit, _ = fit_lora(lm, exs, t.unrelated_fit, " o", [DOWN], steps=2)
    assert ledit.metadata["target_tokens_used"] == {"fit": expect, "total": expect} == reads.counts()
    assert ledit.param_names == [f"{DOWN}.weight"]


def _cfg(tmp: Path, dec: Path | None, **kw: object) -> redirect.RedirectConfig:
    base = dict(model="tiny-llama", out_dir=str(tmp), decomposition=str(dec) if dec else None,
                modules=None if dec else ("model.layers.*.mlp.down_proj",), source="tiny", context=NURSE,
                target=" o", text_start=0, text_stop=None, eval_texts=6, selection_texts=8, fit_texts=4,
                unrelated_eval=6, unrelated_selection=6, unrelated_fit=4, min_score=-math.inf, alphas=(1.0, 8.0),
                fit_sizes=(1, 2), kl_weights=(0.1, 10.0), train_steps=3, lora_steps=2, heatmap_texts=2)
    base.update(kw)
    return redirect.RedirectConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def study_run(tiny_llama: ge.LanguageModel, tiny_down_dec: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    tmp_path = tmp_path_factory.mktemp("study")
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    res = redirect.run(_cfg(tmp_path, tiny_down_dec), tiny_llama)
    for k, v in tiny_llama.model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    return res, tmp_path


def test_study_runs_end_to_end(study_run: tuple[Any, Path]) -> None:
    res, tmp_path = study_run
    for name in ("points.json", "summary.json", "heatmaps.json", "pareto.png", "report.html"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pts = json.loads((tmp_path / "points.json").read_text())["points"]
    fams = [p["family"] for p in pts]
    assert fams.count("analytic-decomposed") == fams.count("analytic-svd") == 2
    assert fams.count("trained-decomposed") == fams.count("trained-svd") == fams.count("lora") == 4
    summ = res.summary
    assert summ["held_out_tokens_read_while_building"] == 0 and set(summ["choices"]) == {"decomposed", "svd"}
    sel = summ["texts"]["selection"]["tokens"]
    for p in pts:
        used, hook, m = p["tokens_used"], p["tokens_hook"], p["measured"]
        # selection and calibration read the same passages: the distinct total counts them once
        assert used["total"] == used["selection"] + used["fit"] == hook["total"]
        assert used["selection"] == used["calibration"] == (0 if p["family"] == "lora" else sel)
        assert all(hook.get(k, 0) == used[k] for k in ("selection", "calibration", "fit"))
        assert (used["fit"] == 0) == p["family"].startswith("analytic")
        assert p["fire_positions_used"]["fit"] == p["params"].get("n", 0)
        assert m["n_fire"] == summ["texts"]["evaluation"]["fire_positions"] > 0
        assert m["surrounding_kl"] >= 0 and m["global_kl"] >= 0 and 0 < m["p_target"] < 1
    # the two sizes of analytic rewrite: the larger α moves the held-out fire positions more
    a = {p["params"]["alpha"]: p["measured"] for p in pts if p["family"] == "analytic-svd"}
    assert a[8.0]["surrounding_kl"] > a[1.0]["surrounding_kl"]
    heat = json.loads((tmp_path / "heatmaps.json").read_text())
    assert set(heat["edits"]) and heat["target"] == " o"
    for h in heat["edits"].values():
        for rec in h["records"]:
            n = len(rec["tokens"])
            assert len(rec["fire"]) == len(rec["kl"]) == len(rec["dlogp_target"]) == n and any(rec["fire"])
            assert rec["kl"][-1] is None and all(v is not None for v in rec["kl"][:-1])
    page = (tmp_path / "report.html").read_text()
    assert 'data-fire="1"' in page and "FIRE position" in page and "data:image/png;base64" in page
    assert res.headline and res.report == tmp_path / "report.html"


def test_report_hover_in_chromium(study_run: tuple[Any, Path]) -> None:
    from chromium import external, guarded_page

    _, folder = study_run
    requests: list[str] = []
    with guarded_page(requests) as page:
        page.goto((folder / "report.html").as_uri())
        fire = page.locator('.gx-tok[data-fire="1"]').first
        tip = fire.locator(".gx-tip")
        assert not tip.is_visible()
        fire.scroll_into_view_if_needed()
        fire.hover()
        page.wait_for_timeout(100)
        assert tip.is_visible() and "FIRE position" in tip.inner_text() and "P(' o')" in tip.inner_text()
        assert page.locator("img.gx-img").count() == 1  # the Pareto figure, embedded
    assert external(requests) == [], f"the report requested external resources: {external(requests)}"


def test_a_family_without_a_selective_component_is_reported(tiny_llama: ge.LanguageModel, tiny_down_dec: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradedit.demo import redirect_build

    real = redirect_build.choose_component

    def picky(lm: ge.LanguageModel, cs: ComponentSet, family: str, *a: Any, **kw: Any) -> Any:
        if family == "decomposed":
            raise EditError("no decomposed component fires selectively (test)")
        return real(lm, cs, family, *a, **kw)

    monkeypatch.setattr(redirect_build, "choose_component", picky)
    res = redirect.run(_cfg(tmp_path, tiny_down_dec, fit_sizes=(1,), kl_weights=(1.0,), alphas=(1.0,)), tiny_llama)
    assert res.summary["failed_families"] == {"decomposed": "no decomposed component fires selectively (test)"}
    fams = {p["family"] for p in json.loads((tmp_path / "points.json").read_text())["points"]}
    assert fams == {"analytic-svd", "trained-svd", "lora"}
    page = (tmp_path / "report.html").read_text()
    assert "decomposed: no selective component." in page and "none: no decomposed component fires" in page


def test_a_selection_without_a_selective_component_says_so(tiny_llama: ge.LanguageModel, tmp_path: Path,
                                                           study_texts: StudyTexts) -> None:
    t = study_texts
    cs = svd_components(tiny_llama, DOWN)
    with pytest.raises(EditError, match=r"no svd component fires selectively.*min_score"):
        choose_component(tiny_llama, cs, "svd", t.selection, t.fires_of(t.selection), t.unrelated_selection,
                         min_score=1e9)
    with pytest.raises(EditError, match="no component family has a selective component"):
        redirect.run(_cfg(tmp_path, None, min_score=1e9), tiny_llama)
    assert not (tmp_path / "points.json").exists()


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="modules"):
        redirect.RedirectConfig(decomposition=None)
    with pytest.raises(ValueError, match="score"):
        redirect.RedirectConfig(score="z")
    with pytest.raises(ValueError, match="alphas"):
        replace(redirect.RedirectConfig(), alphas=(0.0,))


def test_the_preset_decomposes_text_the_study_never_reads() -> None:
    """smollm2-135m-down reads sentences 100-399 of each language; the study's passages come from
    sentences[text_start:text_stop] (English here, so only the English Bible is loaded)."""
    from gradedit.data import corpora
    from gradedit.decompose.presets import PRESETS, preset_texts

    p = PRESETS["smollm2-135m-down"]
    assert p.model == "smollm2-135m" and all(m.endswith("mlp.down_proj") for m in p.modules)
    cfg = redirect.RedirectConfig()
    decomposed = set(preset_texts(replace(p, languages=("en",))))
    study = corpora.sentences("en")[cfg.text_start:cfg.text_stop]
    assert len(decomposed) == p.per_language and study and not decomposed & set(study)
    assert cfg.text_start >= p.start + p.per_language


def test_cli_demo_redirect_reaches_the_config(tmp_path: Path, tiny_down_dec: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``gradedit demo redirect --decomposition DIR``: the folder and --out reach RedirectConfig; a folder
    without a decomposition and a German-only flag are one-line errors (exit 2) before any model loads."""
    from gradedit.cli.app import main
    from gradedit.demo.common import DemoResult

    seen: list[redirect.RedirectConfig] = []

    def fake_run(cfg: redirect.RedirectConfig) -> DemoResult:
        seen.append(cfg)
        return DemoResult(out_dir=tmp_path, report=tmp_path / "report.html", headline=["done"])

    monkeypatch.setattr(redirect, "run", fake_run)
    assert main(["demo", "redirect", "--decomposition", str(tiny_down_dec), "--out", str(tmp_path / "r")]) == 0
    (cfg,) = seen
    assert cfg.decomposition == str(tiny_down_dec) and cfg.out_dir == str(tmp_path / "r")
    capsys.readouterr()
    for argv, why in ((["demo", "redirect", "--decomposition", str(tmp_path)], "no decomposition.json"),
                      (["demo", "redirect", "--decomposition", str(tiny_down_dec), "--target-ce", "2"], "German study"),
                      (["demo", "--decomposition", str(tiny_down_dec)], "redirect studies")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
    assert len(seen) == 1
