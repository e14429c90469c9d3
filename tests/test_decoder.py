"""Decoder evaluation and rewrite on a tiny model trained once per module."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradedit.data.schema import PairDataset
from gradedit.gradiend.evaluate.results import DecoderResults, lms_constraint
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the lazy dog.",
           "Numbers like 1, 2, 3 and symbols appear too.", "The teacher knows the city is quiet."]


@pytest.fixture(scope="module")
def trained(tiny_gpt2, tmp_path_factory):
    recs = pronoun_records(SUBJECTS[:6], VERBS[:4])
    ds = PairDataset.from_records(recs, target_classes=["masc", "fem"])
    d = tmp_path_factory.mktemp("dec")
    cfg = TrainConfig(experiment_dir=str(d / "run"), max_steps=20, eval_steps=10, pre_prune_topk=0.3, eval_max_size=16)
    tr = Trainer(tiny_gpt2, ds, ["masc", "fem"], neutral=NEUTRAL, config=cfg)
    tr.train()
    return tr


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_default_selector_spends_the_perplexity_budget(trained):
    # the default (issue 13 item 5): the strongest point within +1.5 % selection-text perplexity
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=2, learning_rates=[1e-4, 1e-2, 1.0, 100.0, 1e4])
    for key, sel in dec.items():
        base_value = dec.base["metrics"][key]
        admissible = [p["metrics"][key] for p in dec.grid
                      if p["perplexity"] <= 1.015 * dec.base["perplexity"] and p["metrics"][key] > base_value]
        if admissible:
            assert sel.admissible and sel.value == max(admissible)
            assert sel.perplexity <= 1.015 * sel.base_perplexity
        else:
            assert not sel.admissible and sel.value == base_value


def test_sweep_restores_weights_bit_exactly_and_selects(trained):
    before = _snapshot(trained.lm.model)
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=2, learning_rates=[1e-4, 1e-2, 1.0, 100.0, 1e4],
                                   selector="lms")
    for n, p in trained.lm.model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed after the sweep"
    assert set(dec) == {"masc", "fem"}
    for key, sel in dec.items():
        base_value = dec.base["metrics"][key]
        # admissible: keeps LMS >= 0.99 x base AND moves the metric the requested way (above the base)
        admissible = [p["metrics"][key] for p in dec.grid
                      if p["lms"] >= 0.99 * dec.base["lms"] and p["metrics"][key] > base_value]
        if admissible:
            assert sel.admissible and sel.value == max(admissible) and sel.value > sel.base_value
            assert sel.lms >= 0.99 * sel.base_lms
        else:
            assert not sel.admissible and sel.learning_rate == 0.0 and sel.value == base_value
    assert any(p.get("refined") for p in dec.grid)
    assert len(dec.to_frame()) == len(dec.grid) + 1


def test_strengthen_moves_probability_the_right_way(trained):
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=0, selector="product")
    fem = dec["fem"]
    assert fem.value >= fem.base_value
    # the opposite feature factor at the same lr should not strengthen fem more
    pts = {(p["feature_factor"], p["learning_rate"]): p for p in dec.grid}
    opp = pts.get((-fem.feature_factor, fem.learning_rate))
    if opp is not None and fem.learning_rate > 0:
        assert opp["metrics"]["fem"] <= fem.value


def test_cache_hit_and_invalidation(trained, monkeypatch):
    import gradedit.gradiend.evaluate.decoder as D

    a = trained.evaluate_decoder(learning_rates=[1e-3, 1e-2], refine_steps=0)
    calls = []
    monkeypatch.setattr(D.DecoderProbe, "score", lambda self: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    b = trained.evaluate_decoder(learning_rates=[1e-3, 1e-2], refine_steps=0)
    assert not calls and b.fingerprint == a.fingerprint and b["fem"] == a["fem"]
    with pytest.raises(AssertionError):  # a different grid must not reuse the cache
        trained.evaluate_decoder(learning_rates=[1e-3, 2e-2], refine_steps=0)


def test_rewrite_from_cache_and_missing_direction(trained, tmp_path):
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=0)
    with pytest.raises(KeyError, match="fem_weaken"):
        trained.rewrite_base_model(dec, target_class="fem", increase_target_probabilities=False)
    out = tmp_path / "fem"
    model = trained.rewrite_base_model(target_class="fem", output_dir=out)  # from experiment_dir cache
    info = json.loads((out / "rewrite_info.json").read_text())
    assert info["target_class"] == "fem" and info["direction"] == "strengthen"
    assert info["learning_rate"] == dec["fem"].learning_rate
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(["The doctor said that"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reloaded(**ids).logits)
    both = trained.rewrite_base_model(dec, target_class=["masc", "fem"])
    assert isinstance(both, list) and len(both) == 2


def test_weaken_and_selector_validation(trained):
    dec = trained.evaluate_decoder(increase_target_probabilities=False, target_class="masc", use_cache=False,
                                   refine_steps=0, selector=lms_constraint(0.5))
    assert list(dec) == ["masc_weaken"] and 0.0 <= dec["masc_weaken"].value <= 1.0
    with pytest.raises(ValueError, match="not one of the trained classes"):
        trained.evaluate_decoder(target_class="neutral")
    with pytest.raises(ValueError, match="unknown selector"):
        trained.evaluate_decoder(selector="best")
    with pytest.raises(ValueError, match="positive"):
        trained.evaluate_decoder(learning_rates=[-1.0])


def test_results_round_trip_and_plot(trained, tmp_path):
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=0)
    again = DecoderResults.load(dec.save(tmp_path / "d.json"))
    assert again["fem"] == dec["fem"] and again.grid == dec.grid
    fig = dec.plot(tmp_path / "dec.png")
    assert (tmp_path / "dec.png").read_bytes()[:4] == b"\x89PNG" and fig is not None


def test_decoder_needs_neutral(trained):
    saved = trained.neutral
    trained.neutral = None
    try:
        with pytest.raises(ValueError, match="neutral"):
            trained.evaluate_decoder()
    finally:
        trained.neutral = saved


def test_trainer_evaluate_encoder(trained, tmp_path):
    enc = trained.evaluate_encoder(split="test", plot=True)
    assert abs(enc.correlation) > 0.5 and 0.0 <= enc.accuracy <= 1.0
    assert (trained.experiment_dir / "encoder_results_test.json").is_file()
    assert (trained.experiment_dir / "encoder_test.png").read_bytes()[:4] == b"\x89PNG"
    assert set(enc.rows["data_type"]) >= {"training", "neutral_masked", "neutral"}


def test_perplexity_selector_respects_its_bound(trained):
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=1, selector="perplexity")
    for sel in dec.values():
        assert sel.perplexity <= 1.02 * sel.base_perplexity
        assert (sel.value > sel.base_value) == sel.admissible, "a selection must raise the metric or be inadmissible"


def test_as_edit_equals_applied_rewrite(trained):
    m = trained.get_model()
    lm = trained.lm
    ids = lm.tokenizer(["The doctor said that"], return_tensors="pt")
    with torch.no_grad():
        with m.applied(1e-2, 1.0):
            want = lm.model(**ids).logits
        edit = m.as_edit(1e-2, 1.0)
        with edit.applied(lm.model):
            got = lm.model(**ids).logits
        base = lm.model(**ids).logits
    assert torch.equal(got, want) and not torch.equal(got, base)
    assert edit.metadata["method"] == "gradiend" and edit.metadata["learning_rate"] == 1e-2


def test_weaken_sweep_reuses_strengthen_points(trained, monkeypatch):
    import gradedit.gradiend.evaluate.decoder as D

    trained.evaluate_decoder(learning_rates=[2e-3, 2e-2], refine_steps=0)
    scored = []
    real = D.DecoderProbe.score
    monkeypatch.setattr(D.DecoderProbe, "score", lambda self: scored.append(1) or real(self))
    trained.evaluate_decoder(learning_rates=[2e-3, 2e-2], refine_steps=0, increase_target_probabilities=False)
    assert scored == [], "the weaken sweep re-scored grid points the strengthen sweep had already scored"


def test_parameterised_selector_names():
    from gradedit.gradiend.evaluate.results import resolve_selector

    base = {"perplexity": 100.0, "lms": 0.5, "metrics": {"fem": 0.1}}
    points = [{"perplexity": 100.5, "lms": 0.5, "metrics": {"fem": 0.2}},
              {"perplexity": 101.5, "lms": 0.5, "metrics": {"fem": 0.3}}]
    assert resolve_selector("perplexity:0.01")(points, "fem", base) is points[0]
    assert resolve_selector("perplexity:0.02")(points, "fem", base) is points[1]
    with pytest.raises(ValueError, match="not a number"):
        resolve_selector("perplexity:abc")


def _sweep(trained, **kw):
    """A sweep that leaves the run's decoder_results.json alone (synthetic scores must not leak)."""
    from gradedit.gradiend.evaluate.decoder import evaluate_decoder

    return evaluate_decoder(trained.get_model(), trained.data.split("val"), trained.classes, NEUTRAL, **kw)


def _wrong_way_scores(monkeypatch, lms_of_points: float = 0.5):
    """Base scores 0.30 for every metric; every edited point scores 0.10 (the target went DOWN)."""
    import gradedit.gradiend.evaluate.decoder as D

    calls = []

    def score(self):
        calls.append(1)
        value = 0.30 if len(calls) == 1 else 0.10
        return {"lms": 0.5 if len(calls) == 1 else lms_of_points, "perplexity": 10.0,
                "metrics": {k: value for c in self.classes for k in (c, f"{c}_weaken")}, "probs": {}}

    monkeypatch.setattr(D.DecoderProbe, "score", score)


@pytest.mark.parametrize("selector", ["lms", "perplexity", "product"])
def test_selector_never_picks_a_point_that_moves_the_target_the_wrong_way(selector):
    from gradedit.gradiend.evaluate.results import resolve_selector

    base = {"feature_factor": 0.0, "learning_rate": 0.0, "lms": 0.5, "perplexity": 10.0, "metrics": {"fem": 0.30}}
    wrong = {"feature_factor": 1.0, "learning_rate": 1e-3, "lms": 0.6, "perplexity": 9.0, "metrics": {"fem": 0.10}}
    chosen = resolve_selector(selector)([wrong], "fem", base)
    assert chosen is base, f"{selector} picked a 'strengthen' point that lowers the target (0.30 -> 0.10)"


def test_no_admissible_point_is_reported_and_rewrite_refuses(trained, monkeypatch, caplog, tmp_path):
    _wrong_way_scores(monkeypatch)
    with caplog.at_level("WARNING", logger="gradedit.gradiend.evaluate"):
        dec = _sweep(trained, refine_steps=2, learning_rates=[1e-3, 1e-2], target_class="fem")
    sel = dec["fem"]
    assert not sel.admissible and sel.value == sel.base_value == 0.30 and sel.learning_rate == 0.0
    assert "no admissible" in sel.reason and "raise" in sel.reason
    assert any("no admissible" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="no admissible.*fem"):
        trained.rewrite_base_model(dec, target_class="fem", output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_refusal_names_the_lms_constraint_when_it_binds(trained, monkeypatch):
    import gradedit.gradiend.evaluate.decoder as D
    from gradedit.gradiend.evaluate.results import lms_constraint

    calls = []

    def score(self):  # every edited point raises the target but loses half the LMS
        calls.append(1)
        first = len(calls) == 1
        return {"lms": 0.5 if first else 0.25, "perplexity": 10.0, "probs": {},
                "metrics": {k: 0.30 if first else 0.60 for c in self.classes for k in (c, f"{c}_weaken")}}

    monkeypatch.setattr(D.DecoderProbe, "score", score)
    dec = _sweep(trained, refine_steps=0, learning_rates=[1e-3], target_class="fem", selector=lms_constraint(0.99))
    assert not dec["fem"].admissible
    with pytest.raises(ValueError, match=r"LMS >= 0\.99"):
        trained.rewrite_base_model(dec, target_class="fem")


def _figure_lines(fig):
    return [(line.get_label(), list(line.get_ydata())) for ax in fig.axes for line in ax.get_lines()]


@pytest.mark.parametrize("selector, measure, bound, label", [
    ("lms", "lms", 0.99, "LMS >= 0.99 x base"),
    ("perplexity", "perplexity", 1.02, "perplexity <= 1.02 x base"),
    ("lms:0.9", "lms", 0.9, "LMS >= 0.9 x base"),
])
def test_decoder_plot_draws_the_constraint_that_was_used(trained, selector, measure, bound, label):
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=0, learning_rates=[1e-3, 1e-1], selector=selector)
    assert dec.info["constraint"]["label"] == label
    lines = _figure_lines(dec.plot())
    drawn = [y for lab, y in lines if label in lab]
    assert drawn and drawn[0][0] == pytest.approx(bound * dec.base[measure])
    others = {"LMS >= 0.99 x base", "perplexity <= 1.02 x base", "LMS >= 0.9 x base"} - {label}
    assert not [lab for lab, _ in lines if any(o in lab for o in others)], "a constraint that was not used is drawn"


def test_decoder_plot_without_bound_draws_no_bound_line(trained):
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=0, learning_rates=[1e-3], selector="product")
    assert dec.info["constraint"]["label"] == "metric x LMS > base"
    fig = dec.plot()
    horizontal = [line.get_label() for ax in fig.axes for line in ax.get_lines()
                  if line.get_transform() == ax.get_yaxis_transform()]  # axhline()s
    assert horizontal and set(horizontal) == {"base model"}, f"the product selector has no bound, yet {horizontal} drawn"


def test_decoder_selects_on_validation_rows_and_records_the_split(trained, monkeypatch, tmp_path):
    """selected_value must not be measured on the test rows a report shows as held out."""
    import gradedit.gradiend.evaluate.decoder as D

    scored = []
    real = D.DecoderProbe.__init__

    def spy(self, mwg, data, *a, **k):
        scored.append(data.fingerprint())
        real(self, mwg, data, *a, **k)

    monkeypatch.setattr(D.DecoderProbe, "__init__", spy)
    dec = trained.evaluate_decoder(use_cache=False, refine_steps=0, learning_rates=[1e-3, 1e-1])
    assert scored == [trained.data.split("val").fingerprint()] != [trained.data.split("test").fingerprint()]
    assert dec.info["split"] == "val" and all(s.split == "val" for s in dec.values())
    sel = dec["fem"]
    if sel.admissible:
        trained.rewrite_base_model(dec, target_class="fem", output_dir=tmp_path / "fem")
        info = json.loads((tmp_path / "fem" / "rewrite_info.json").read_text())
        assert info["selection_split"] == "val" and info["selected_value"] == sel.value


def test_a_non_main_rank_writes_nothing_into_the_run(trained, monkeypatch):
    """Under torchrun every rank runs Trainer.evaluate_*; only rank 0 may write (they raced on the
    read-merge-write of decoder_results.json)."""
    from gradedit import dist

    def files() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in trained.experiment_dir.rglob("*") if p.is_file()}

    before = files()
    monkeypatch.setattr(dist, "is_main", lambda: False)
    dec = trained.evaluate_decoder(learning_rates=[1e-3, 3e-2], refine_steps=0, use_cache=False, plot=True)
    enc = trained.evaluate_encoder(max_size=4, plot=True)
    assert set(dec) == {"masc", "fem"} and enc.correlation == enc.correlation
    assert files() == before
