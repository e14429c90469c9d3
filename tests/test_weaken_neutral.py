"""Weakening against a neutral class (issue 15.5): the masc-vs-neutral pair data, training on it, and the
weaken report that measures P(masc tokens) and P(fem tokens) on held-out prompts."""

import math

import numpy as np
import pytest
import torch

from gradedit import metrics
from gradedit.data.columns import MASK, fill_masked
from gradedit.data.neutral_pairs import against_neutral, mask_neutral_word
from gradedit.data.schema import PairDataset
from gradedit.errors import ConfigError, DataError
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from gradedit.gradiend.weaken import measure_groups, weaken_report
from pronoun_rows import pronoun_records

PRONOUNS = ["he", "she", "him", "her", "his", "they"]


def _two_rows() -> PairDataset:
    recs = [{"text": "The man said [MASK] ran.", "factual": " he", "alternative": " she", "factual_class": "masc",
             "alternative_class": "fem", "split": "train"},
            {"text": "The girl said [MASK] ran.", "factual": " she", "alternative": " he", "factual_class": "fem",
             "alternative_class": "masc", "split": "train"},
            {"text": "My old friend thinks [MASK] sang today.", "factual": " he", "alternative": " she",
             "factual_class": "masc", "alternative_class": "fem", "split": "test"}]
    return PairDataset.from_records(recs, target_classes=["masc", "fem"])


def test_mask_neutral_word_oracle():
    # words: The (first), man (1 before), said (2 before), he (excluded), ran: the only candidate
    assert mask_neutral_word("The man said he ran.", {"he"}) == ("The man said he [MASK].", " ran")
    assert mask_neutral_word("The man said he ran.", {"he", "ran"}) is None
    assert mask_neutral_word("The man said he ran.", {"he"}, token_ok=lambda w: w != " ran") is None
    assert mask_neutral_word("a b c don't stop", set()) == ("a b c don't [MASK]", " stop")  # "don" is before "'"
    with pytest.raises(DataError, match="already masked"):
        mask_neutral_word("The man said [MASK] ran.", set())


def test_against_neutral_builds_twins_with_intended_rows_and_labels():
    ds = against_neutral(_two_rows(), "masc", exclude=PRONOUNS)
    f = ds.to_frame()
    assert ds.target_classes == ("masc", "neutral") and ds.classes == ["masc", "neutral"]
    assert len(f) == 4 and list(f["kind"]) == ["class", "neutral", "class", "neutral"]
    assert list(f["pair"]) == [0, 0, 1, 1]
    # pair 0: the only qualifying word of "The man said he ran." is "ran"
    row = f.iloc[0].to_dict()
    assert {k: row[k] for k in ("text", "factual", "alternative", "factual_class", "alternative_class", "label",
                                "split")} == {"text": "The man said [MASK] ran.", "factual": " he", "alternative": " ran",
                                              "factual_class": "masc", "alternative_class": "neutral", "label": 1,
                                              "split": "train"}
    assert (f.iloc[1]["text"], f.iloc[1]["factual"], f.iloc[1]["alternative"]) == ("The man said he [MASK].", " ran", " he")
    assert (f.iloc[1]["factual_class"], f.iloc[1]["alternative_class"], f.iloc[1]["label"]) == ("neutral", "masc", -1)
    # every pair: twin = the class sentence with another word masked; the alternative of one is the factual of the other
    for p in range(2):
        c, n = f[(f["pair"] == p) & (f["kind"] == "class")].iloc[0], f[(f["pair"] == p) & (f["kind"] == "neutral")].iloc[0]
        assert fill_masked(n["text"], n["factual"]) == fill_masked(c["text"], c["factual"])
        assert c["alternative"] == n["factual"] and n["alternative"] == c["factual"] and c["split"] == n["split"]
        assert n["factual"].strip().lower() not in PRONOUNS and n["text"].count(MASK) == 1
        assert len(n["text"].split(MASK)[0].split()) >= 3
    assert "fem" not in set(f["factual_class"]) | set(f["alternative_class"])  # fem rows are not used


def test_against_neutral_with_neutral_texts_and_identity_rows():
    texts = ["Too short.", "The river ran past the old mill.", "Then the rain came down hard."]
    ds = against_neutral(_two_rows(), "masc", neutral_texts=texts, exclude=PRONOUNS, identity=True)
    f = ds.to_frame()
    assert list(f["kind"]) == ["class", "neutral", "identity"] * 2
    neutral = f[f["kind"] == "neutral"]
    assert [fill_masked(t, w) for t, w in zip(neutral["text"], neutral["factual"])] == [t.rstrip() for t in texts[1:]]
    ident = f[f["kind"] == "identity"]
    assert (ident["factual"] == ident["alternative"]).all() and (ident["label"] == 0).all()
    assert list(ident["text"]) == list(neutral["text"]) and list(ident["split"]) == ["train", "test"]
    assert list(f.loc[f["kind"] == "class", "alternative"]) == list(neutral["factual"])
    # one usable neutral sentence for two class rows: the second class row is dropped
    one = against_neutral(_two_rows(), "masc", neutral_texts=texts[:2], exclude=PRONOUNS)
    assert len(one) == 2 and one.to_frame()["split"].tolist() == ["train", "train"]


def test_against_neutral_errors(tiny_gpt2):
    with pytest.raises(DataError, match="no rows"):
        against_neutral(_two_rows(), "plur")
    with pytest.raises(DataError, match="already has a class"):
        against_neutral(_two_rows(), "masc", neutral_class="fem")
    with pytest.raises(DataError, match="no 'masc' row got a neutral twin"):
        against_neutral(_two_rows(), "masc", exclude=["ran", "sang", "today", "thinks", *PRONOUNS])
    ds = against_neutral(_two_rows(), "masc", tiny_gpt2, exclude=PRONOUNS)  # every masked word is one token
    assert all(tiny_gpt2.is_single_token(w) for w in ds.to_frame()["factual"])


@pytest.fixture(scope="module")
def pronouns() -> PairDataset:
    return PairDataset.from_records(pronoun_records(), target_classes=["masc", "fem"])


def _cfg(path, **kw):
    base = dict(experiment_dir=str(path), max_steps=60, eval_steps=10, pre_prune_topk=0.2, pre_prune_samples=8,
                eval_max_size=16)
    return TrainConfig(**{**base, **kw})


NEUTRAL = ["The river ran past the old mill and the water was cold.", "Then the rain came down hard on the roofs.",
           "A small boat drifted along the quiet bay at dawn.", "The market was full of fruit and bread today."]


@pytest.fixture(scope="module")
def trained(tiny_gpt2, pronouns, tmp_path_factory) -> Trainer:
    data = against_neutral(pronouns, "masc", tiny_gpt2, exclude=PRONOUNS)
    tr = Trainer(tiny_gpt2, data, ["masc", "neutral"], neutral=NEUTRAL,
                 config=_cfg(tmp_path_factory.mktemp("wn") / "run"))
    tr.train()
    return tr


def test_training_against_neutral_runs_and_separates(trained):
    res = trained.seed_results[0]
    assert res.class_means["masc"] > 0 > res.class_means["neutral"], "masc must encode positive"
    assert res.correlation > 0.7  # validation r (kept step); measured 0.80
    test = trained.data.split("test")
    enc = np.asarray(trained.get_model().encode(test)).ravel()
    labels = test.to_frame()["label"].to_numpy()
    assert np.corrcoef(enc, labels)[0, 1] > 0.6  # held-out rows; measured 0.79 (random encoder: about 0)


def test_weaken_report_measures_both_classes(trained, tiny_gpt2, pronouns):
    prompts = [p for p, c in zip(pronouns.split("test").prompts("clm"), pronouns.split("test").to_frame()["factual_class"])
               if c == "masc"]
    watch = {"masc": [" he"], "fem": [" she"]}
    before = {n: p.detach().clone() for n, p in tiny_gpt2.model.named_parameters()}
    rep = weaken_report(trained, "masc", prompts, watch, NEUTRAL[:2], selector="lms:0.5", use_cache=False,
                        learning_rates=[1e-3, 1e-2, 1e-1, 1.0, 10.0], refine_steps=0, max_neutral=2)
    assert set(rep.base) == set(rep.edited) == {"masc", "fem"} and rep.n_prompts == len(prompts)
    # oracle: the base figures are plain next-token probabilities and perplexity of the unedited model
    p = metrics.next_token_logprobs(tiny_gpt2, prompts, [tiny_gpt2.token_id(" he"), tiny_gpt2.token_id(" she")]).exp()
    assert rep.base["masc"] == pytest.approx(float(p[:, 0].double().mean()), rel=1e-5)
    assert rep.base["fem"] == pytest.approx(float(p[:, 1].double().mean()), rel=1e-5)
    assert rep.perplexity_base == pytest.approx(metrics.perplexity(tiny_gpt2, NEUTRAL[:2]), rel=1e-6)
    sel = rep.selection
    assert sel["selector"] == "lms_constraint(0.5)" and sel["split"] == "val"
    assert sel["admissible"], sel["reason"]  # the edited figures are the selected rewrite's
    again = measure_groups(trained.get_model(), prompts, watch, NEUTRAL[:2], sel["learning_rate"], sel["feature_factor"])
    assert rep.edited == pytest.approx(again["probs"]) and rep.edited["masc"] < rep.base["masc"]
    assert rep.edited != pytest.approx(rep.base) and rep.perplexity_edited == pytest.approx(again["perplexity"])
    assert rep.ratio == pytest.approx(rep.base["masc"] / rep.edited["masc"])
    assert all(torch.equal(before[n], p) for n, p in tiny_gpt2.model.named_parameters()), "base model restored"
    d = rep.to_dict()
    assert set(d["changes"]) == {"masc", "fem"} and math.isfinite(d["perplexity_change"])
    assert rep.met(factor=1.0) and not rep.met(factor=math.inf) and not rep.met(1.0, max_perplexity_increase=-1.0)


def test_weaken_report_refuses_bad_arguments(trained):
    with pytest.raises(ConfigError, match="not a class of this run"):
        weaken_report(trained, "fem", ["x y z"], {"fem": [" she"]}, NEUTRAL)
    with pytest.raises(ConfigError, match="watch has no group"):
        weaken_report(trained, "masc", ["x y z"], {"fem": [" she"]}, NEUTRAL)
    with pytest.raises(ConfigError, match="held-out prompts"):
        weaken_report(trained, "masc", [], {"masc": [" he"]}, NEUTRAL)
