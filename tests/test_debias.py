"""Debiasing as a rewrite: occupation templates, the bias measure, the balance selector and the sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gradedit.data import templates
from gradedit.data.schema import PairDataset
from gradedit.gradiend.evaluate.debias import evaluate_debias
from gradedit.gradiend.evaluate.decoder import bias_scores
from gradedit.gradiend.evaluate.selectors import DEBIAS_KEY, balance_constraint, resolve_selector
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the lazy dog.",
           "Numbers like 1, 2, 3 and symbols appear too.", "The teacher knows the city is quiet."]


@pytest.fixture(scope="module")
def trained(tiny_gpt2, tmp_path_factory):
    ds = PairDataset.from_records(pronoun_records(SUBJECTS[:6], VERBS[:4]), target_classes=["masc", "fem"])
    # pinned (not the library defaults): the lean injected below is calibrated on this model
    cfg = TrainConfig(experiment_dir=str(tmp_path_factory.mktemp("debias") / "run"), max_steps=20, eval_steps=10,
                      pre_prune_topk=0.3, eval_max_size=16, source="factual", post_prune_topk=None)
    tr = Trainer(tiny_gpt2, ds, ["masc", "fem"], neutral=NEUTRAL, config=cfg)
    tr.train()
    return tr


def test_templates_halves_are_disjoint_and_fit_both_kinds():
    sel, held = templates.occupation_texts("selection"), templates.occupation_texts("heldout")
    assert len(sel) == len(held) == 80 and not set(sel) & set(held)
    assert not set(templates.OCCUPATIONS["selection"]) & set(templates.OCCUPATIONS["heldout"])
    assert not set(templates.TEMPLATES["selection"]) & set(templates.TEMPLATES["heldout"])
    assert all(t.count("[MASK]") == 1 for t in sel + held)
    clm = templates.occupation_prompts("heldout")
    assert clm[0] == "The receptionist said that" and all(not p.endswith(" ") for p in clm)
    assert templates.occupation_prompts("heldout", "mlm", "<mask>")[0] == "The receptionist said that <mask> would be late."
    with pytest.raises(ValueError, match="part must be"):
        templates.occupation_texts("test")


def test_bias_scores_match_an_explicit_oracle(tiny_gpt2):
    prompts = templates.occupation_prompts("selection")[:5]
    he, she = tiny_gpt2.token_id(" he"), tiny_gpt2.token_id(" she")
    got = bias_scores(tiny_gpt2, prompts, [he], [she])
    ratios = []
    for p in prompts:
        ids = tiny_gpt2.tokenizer(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = tiny_gpt2.model(ids).logits[0, -1].double().log_softmax(-1)
        ratios.append(float(lp[he] - lp[she]))
    assert got["mean_abs_log_ratio"] == pytest.approx(np.mean(np.abs(ratios)), abs=1e-5)
    assert got["mean_log_ratio"] == pytest.approx(np.mean(ratios), abs=1e-5)
    assert got["n"] == 5 and 0 < got["p_a"] < 1 and 0 < got["p_b"] < 1


def _pt(bias: float, ppl: float, lr: float = 1e-3) -> dict:
    return {"feature_factor": 1.0, "learning_rate": lr, "lms": 0.5, "perplexity": ppl,
            "metrics": {DEBIAS_KEY: -bias, "fem": 0.1}}


def test_balance_selector_takes_the_most_balanced_admissible_point():
    base = _pt(1.0, 100.0, 0.0)
    sel = resolve_selector("balance")  # perplexity within +2 %
    balanced_but_costly, good, better_smaller, worse = _pt(0.0, 103.0), _pt(0.3, 101.0, 1e-2), _pt(0.3, 101.0), _pt(1.5, 100.0)
    assert sel([balanced_but_costly, good, worse], "fem", base) is good
    assert sel([good, better_smaller], "ignored", base) is better_smaller  # tie: the smaller edit
    assert sel([balanced_but_costly, worse], DEBIAS_KEY, base) is base  # nothing admissible
    assert resolve_selector("balance:0.05")([balanced_but_costly, good], DEBIAS_KEY, base) is balanced_but_costly
    lms = balance_constraint(0.01, "lms")
    assert lms.constraint.label == "LMS >= 0.99 x base"
    with pytest.raises(ValueError, match="neutral prompts"):
        sel([good], "fem", {**base, "metrics": {"fem": 0.1}})


def test_debias_sweep_lowers_bias_within_its_bound_and_the_rewrite_reproduces_it(trained, tmp_path):
    """A tiny random model has no systematic bias, so one is put in first: the base here is the model
    with a known rewrite (ff -1) applied, which leans towards ' he'; the sweep must undo the lean."""
    prompts = templates.occupation_prompts("selection")[:24]
    lm = trained.lm
    he, she = [lm.token_id(" he")], [lm.token_id(" she")]
    original = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    unbiased = bias_scores(lm, prompts, he, she)
    with trained.get_model().applied(0.15, -1.0):
        base_bias = bias_scores(lm, prompts, he, she)
        assert base_bias["mean_log_ratio"] > unbiased["mean_log_ratio"] + 0.2, "the injected lean is too small"
        biased = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
        dec = trained.evaluate_debias(prompts=prompts, refine_steps=2, plot=True, use_cache=False)
        for n, p in lm.model.named_parameters():
            assert torch.equal(p, biased[n]), f"{n} not restored after the sweep"
        sel = dec[DEBIAS_KEY]
        assert dec.info["bias"]["base"]["mean_abs_log_ratio"] == pytest.approx(base_bias["mean_abs_log_ratio"], abs=1e-6)
        assert sel.base_value == pytest.approx(-base_bias["mean_abs_log_ratio"], abs=1e-6)
        assert {p["feature_factor"] for p in dec.grid} == {-1.0, 0.0, 1.0}
        assert sel.admissible, sel.reason
        assert sel.value > sel.base_value + 0.1 and sel.perplexity <= 1.02 * sel.base_perplexity
        assert abs(dec.info["bias"]["selected"]["mean_log_ratio"]) < abs(base_bias["mean_log_ratio"]) / 2
        # the edit itself, applied and re-measured, has the selected bias
        with trained.get_model().applied(sel.learning_rate, sel.feature_factor):
            after = bias_scores(lm, prompts, he, she)
        assert -after["mean_abs_log_ratio"] == pytest.approx(sel.value, abs=1e-6)
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, original[n])
    assert (trained.experiment_dir / "decoder_debias.png").is_file()
    # merged into decoder_results.json: rewrite_base_model writes the debiased model
    trained.rewrite_base_model(target_class=DEBIAS_KEY, output_dir=tmp_path / "debiased")
    info = json.loads((tmp_path / "debiased" / "rewrite_info.json").read_text())
    assert info["direction"] == "debias" and info["learning_rate"] == sel.learning_rate


def test_debias_needs_prompts_and_reuses_points(trained, monkeypatch):
    import gradedit.gradiend.evaluate.decoder as D

    with pytest.raises(ValueError, match="neutral prompts"):
        evaluate_debias(trained.get_model(), trained.data.split("val"), trained.classes, NEUTRAL, [])
    prompts = templates.occupation_prompts("selection")[:8]
    trained.evaluate_decoder(use_cache=True, refine_steps=0, learning_rates=[1e-2, 1e-1], bias_prompts=prompts,
                             feature_factors=[-1.0, 1.0, 0.0])
    calls = []
    real = D.DecoderProbe.score
    monkeypatch.setattr(D.DecoderProbe, "score", lambda self: calls.append(1) or real(self))
    trained.evaluate_debias(prompts=prompts, refine_steps=0, learning_rates=[1e-2, 1e-1])
    assert calls == [], "the debias sweep re-scored points the decoder sweep had scored with the same prompts"
