"""Blast radius: zero-edit invariants, oracles against metrics.py, restore, control, TargetSpec, sweeps."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import gradedit as ge
from gradedit import metrics
from gradedit.blast import (
    TARGET_KEY,
    BlastReport,
    TargetSpec,
    blast_radius,
    pareto_front,
    pareto_sweep,
    random_like,
)
from gradedit.edits import EditError, WeightEdit

EN = ["he said he was here and he left", "The nurse thinks the city is quiet.", "ok then"]
DE = ["Der Mann ist hier.", "Die Frau ist dort und sie schläft."]
CORPORA = {"en": EN, "de": DE}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weights(lm: ge.LanguageModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def _matrix(lm: ge.LanguageModel, i: int = 3) -> tuple[str, torch.Tensor]:
    """The i-th 2-D parameter inside the transformer blocks (name, tensor)."""
    named = [(n, p) for n, p in ge.select_parameters(lm.model).items() if p.ndim == 2]
    return named[i]


def _dense_edit(lm: ge.LanguageModel, scale: float = 0.3, seed: int = 1) -> WeightEdit:
    name, p = _matrix(lm)
    return WeightEdit.dense({name: torch.randn(p.shape, generator=_gen(seed)) * scale})


# -- invariants and oracles ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zeros", "scale0"])
def test_zero_edit_changes_nothing(tiny_lm: ge.LanguageModel, kind: str) -> None:
    name, p = _matrix(tiny_lm)
    edit = (WeightEdit.dense({name: torch.zeros(p.shape)}) if kind == "zeros"
            else WeightEdit.dense({name: torch.randn(p.shape, generator=_gen(0))}, scale=0.0))
    target = TargetSpec(EN[:1], ["he" if tiny_lm.kind == "mlm" else " he"])
    rep = blast_radius(tiny_lm, edit, CORPORA, target, control=True)
    for lang in CORPORA:
        assert rep.ce_delta[lang] == pytest.approx(0.0, abs=1e-6)
        assert rep.kl[lang] == pytest.approx(0.0, abs=1e-6)
        assert rep.control_ce_delta[lang] == pytest.approx(0.0, abs=1e-6)  # type: ignore[index]
        assert all(abs(v) <= 1e-6 for rec in rep.tokens[lang] for v in rec["kl"] + rec["dlogprob"])  # type: ignore[index]
    assert rep.on_target["delta"] == pytest.approx(0.0, abs=1e-6)  # type: ignore[index]
    assert rep.global_kl == pytest.approx(0.0, abs=1e-6)
    assert rep.surrounding_kl == pytest.approx(0.0, abs=1e-6)


def test_nonzero_edit_matches_metrics_and_restores_weights(tiny_lm: ge.LanguageModel) -> None:
    edit = _dense_edit(tiny_lm, scale=0.5)
    before = _weights(tiny_lm)
    rep = blast_radius(tiny_lm, edit, CORPORA, "de", control=True)
    after = _weights(tiny_lm)
    assert all(torch.equal(before[n], after[n]) for n in before), "weights not restored bit-exactly"
    for lang, texts in CORPORA.items():
        ref = metrics.full_logprobs(tiny_lm, texts)
        ce0 = metrics.cross_entropy(tiny_lm, texts)
        with edit.applied(tiny_lm.model):
            ce1 = metrics.cross_entropy(tiny_lm, texts)
            kl = metrics.kl_divergence(ref, tiny_lm, texts)
        assert rep.ce_base[lang] == pytest.approx(ce0, abs=1e-5)
        assert rep.ce_delta[lang] == pytest.approx(ce1 - ce0, abs=1e-5)
        assert rep.kl[lang] > 1e-6
        assert rep.kl[lang] == pytest.approx(kl.mean(), rel=1e-4, abs=1e-8)
        assert rep.n_tokens[lang] == kl.n_tokens
        # per-token records add up to the corpus mean and cover every scored position
        recs = rep.tokens[lang]  # type: ignore[index]
        assert sum(len(r["kl"]) for r in recs) == kl.n_tokens
        assert [r["positions"] for r in recs] == [p.tolist() for p in kl.positions]
        assert sum(sum(r["kl"]) for r in recs) / kl.n_tokens == pytest.approx(rep.kl[lang], rel=1e-4)
    assert rep.on_target == {"metric": "cross-entropy on de (nats)", "before": rep.ce_base["de"],
                             "after": rep.ce_edit["de"], "delta": rep.ce_delta["de"]}
    assert rep.global_kl == pytest.approx(rep.kl["en"], rel=1e-9)  # the only non-target corpus
    assert rep.surrounding_kl is None


def test_token_records_topk_and_shifts(tiny_gpt2: ge.LanguageModel) -> None:
    edit = _dense_edit(tiny_gpt2, scale=0.5)
    rep = blast_radius(tiny_gpt2, edit, {"en": EN[:1]}, control=False, topk=3)
    rec = rep.tokens["en"][0]  # type: ignore[index]
    ids = tiny_gpt2.tokenizer(EN[0])["input_ids"]
    assert len(rec["tokens"]) == len(ids) and rec["positions"] == list(range(1, len(ids)))
    enc = tiny_gpt2.tokenize(EN[:1])
    with torch.no_grad():
        pb = tiny_gpt2.forward_logits(enc["input_ids"], enc["attention_mask"])[0].float().softmax(-1)
        with edit.applied(tiny_gpt2.model):
            pe = tiny_gpt2.forward_logits(enc["input_ids"], enc["attention_mask"])[0].float().softmax(-1)
    j = 2  # scored position 3, predicted from position 2
    top = pb[j].topk(3)
    assert [p for _, p in rec["top_before"][j]] == pytest.approx(top.values.tolist(), rel=1e-4)
    assert [t for t, _ in rec["top_before"][j]] == [tiny_gpt2.tokenizer.decode([i]) for i in top.indices.tolist()]
    big = (pe[j] - pb[j]).abs().topk(3).indices
    assert [d for _, d in rec["shifts"][j]] == pytest.approx((pe[j] - pb[j])[big].tolist(), rel=1e-3, abs=1e-9)
    lp = torch.log(pe[j, ids[3]]) - torch.log(pb[j, ids[3]])
    assert rec["dlogprob"][j] == pytest.approx(float(lp), rel=1e-3, abs=1e-6)


def test_batch_size_does_not_change_results(tiny_llama: ge.LanguageModel) -> None:
    edit = _dense_edit(tiny_llama)
    a = blast_radius(tiny_llama, edit, CORPORA, control=False, keep_tokens=False)
    b = blast_radius(tiny_llama, edit, CORPORA, control=False, keep_tokens=False, batch_size=1)
    for lang in CORPORA:
        assert a.ce_delta[lang] == pytest.approx(b.ce_delta[lang], abs=1e-5)
        assert a.kl[lang] == pytest.approx(b.kl[lang], rel=1e-3)
    assert a.tokens is None and a.global_kl == pytest.approx(
        (a.kl["en"] * a.n_tokens["en"] + a.kl["de"] * a.n_tokens["de"]) / (a.n_tokens["en"] + a.n_tokens["de"]))


# -- TargetSpec -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, positions", [("tiny-gpt2", [2, 7]), ("tiny-llama", [1, 3, 8])])
def test_target_positions_oracle(model: str, positions: list[int]) -> None:
    lm = ge.load_model(model)
    texts = [EN[0], "she said it"]  # ' he' is the scored token at `positions` of text 0 and nowhere in text 1
    edit = _dense_edit(lm, scale=0.5)
    rep = blast_radius(lm, edit, {"de": DE}, TargetSpec(texts, [" he"]), control=False)
    he = lm.token_id(" he")
    ids = lm.tokenizer(texts[0])["input_ids"]
    assert [p for p, t in enumerate(ids) if t == he and p > 0] == positions  # the hand-made oracle
    ot = rep.on_target
    assert ot is not None and ot["n_positions"] == len(positions)
    lp0 = metrics.token_logprobs(lm, texts)
    with edit.applied(lm.model):
        lp1 = metrics.token_logprobs(lm, texts)
    sel = [int((lp0.positions[0] == p).nonzero()) for p in positions]
    b, a = lp0.values[0][sel].double(), lp1.values[0][sel].double()
    assert ot["before"] == pytest.approx(float(b.mean()), abs=1e-5)
    assert ot["after"] == pytest.approx(float(a.mean()), abs=1e-5)
    assert ot["delta"] == pytest.approx(float((a - b).mean()), abs=1e-5)
    assert ot["p_before"] == pytest.approx(float(b.exp().mean()), rel=1e-4)
    assert ot["p_after"] == pytest.approx(float(a.exp().mean()), rel=1e-4)
    # surrounding KL: every other scored position of the target texts
    recs = rep.tokens[TARGET_KEY]  # type: ignore[index]
    others = [k for r_i, r in enumerate(recs) for p, k in zip(r["positions"], r["kl"])
              if not (r_i == 0 and p in positions)]
    assert rep.surrounding_kl == pytest.approx(sum(others) / len(others), rel=1e-4)
    assert rep.global_kl == pytest.approx(rep.kl["de"], rel=1e-9)
    assert rep.target == "spec"


def test_target_spec_with_token_ids_equals_words(tiny_gpt2: ge.LanguageModel) -> None:
    edit = _dense_edit(tiny_gpt2)
    a = blast_radius(tiny_gpt2, edit, {"en": EN}, TargetSpec(EN, [" he"]), control=False, keep_tokens=False)
    b = blast_radius(tiny_gpt2, edit, {"en": EN}, TargetSpec(EN, [tiny_gpt2.token_id(" he")]), control=False,
                     keep_tokens=False)
    assert a.on_target == b.on_target


# -- control --------------------------------------------------------------------------------------------


def _mixed_edit(lm: ge.LanguageModel) -> WeightEdit:
    """Dense, low-rank (rank 3), indexed (2 params) and a second term on an already-touched parameter."""
    (n0, p0), (n1, p1), (n2, p2) = (_matrix(lm, i) for i in (0, 2, 4))
    pm = ge.ParamMap([n0, n2], [tuple(p0.shape), tuple(p2.shape)], [torch.tensor([0, 5, 9]), None])
    g = _gen(7)
    return (WeightEdit.dense({n0: torch.randn(p0.shape, generator=g)})
            + WeightEdit.low_rank({n1: (torch.randn(p1.shape[0], 3, generator=g), torch.randn(3, p1.shape[1], generator=g))},
                                  scale=0.5)
            + WeightEdit.indexed(pm, torch.randn(pm.size, generator=g), scale=-2.0)
            + WeightEdit.rank_one(n1.removesuffix(".weight"), torch.randn(p1.shape[0], generator=g),
                                  torch.randn(p1.shape[1], generator=g)))


def test_random_control_structure_and_norms(tiny_llama: ge.LanguageModel) -> None:
    edit = _mixed_edit(tiny_llama)
    rng = torch.get_rng_state()
    ctl = random_like(edit, tiny_llama.model, seed=3)
    assert torch.equal(rng, torch.get_rng_state()), "random_like must not touch the global RNG"
    assert [type(t) for t in ctl.terms] == [type(t) for t in edit.terms]
    assert [t.param_names for t in ctl.terms] == [t.param_names for t in edit.terms]
    assert [t.scale for t in ctl.terms] == [t.scale for t in edit.terms]
    assert [getattr(t, "rank", None) for t in ctl.terms] == [getattr(t, "rank", None) for t in edit.terms]
    for name in edit.param_names:
        d_e, d_c = edit.delta(name).double(), ctl.delta(name).double()
        assert float(d_c.norm()) == pytest.approx(float(d_e.norm()), rel=1e-5), name
        cos = float((d_e.flatten() @ d_c.flatten()) / (d_e.norm() * d_c.norm()))
        assert abs(cos) < 0.5, f"{name}: control is not a random direction (cos {cos:.3f})"
    assert ctl.norm() == pytest.approx(edit.norm(), rel=1e-5)
    again, other = random_like(edit, tiny_llama.model, seed=3), random_like(edit, tiny_llama.model, seed=4)
    n = edit.param_names[0]
    assert torch.equal(again.delta(n), ctl.delta(n)) and not torch.equal(other.delta(n), ctl.delta(n))


def test_control_in_report_is_measured(tiny_llama: ge.LanguageModel) -> None:
    edit = _dense_edit(tiny_llama, scale=0.5)
    rep = blast_radius(tiny_llama, edit, CORPORA, "de", control=True, seed=5)
    ctl = random_like(edit, tiny_llama.model, seed=5)
    ce0 = metrics.cross_entropy(tiny_llama, EN)
    with ctl.applied(tiny_llama.model):
        ce1 = metrics.cross_entropy(tiny_llama, EN)
    assert rep.control_ce_delta["en"] == pytest.approx(ce1 - ce0, abs=1e-5)  # type: ignore[index]
    assert rep.control_kl["en"] > 0 and rep.control_on_target["delta"] == rep.control_ce_delta["de"]  # type: ignore[index]


# -- input validation -----------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors(tiny_gpt2: ge.LanguageModel) -> None:
    edit = _dense_edit(tiny_gpt2)
    with pytest.raises(ValueError, match="not a corpus key.*known keys"):
        blast_radius(tiny_gpt2, edit, CORPORA, "fr")
    with pytest.raises(ValueError, match="corpus 'de' is empty"):
        blast_radius(tiny_gpt2, edit, {"en": EN, "de": []})
    with pytest.raises(ValueError, match="non-empty mapping"):
        blast_radius(tiny_gpt2, edit, {})
    with pytest.raises(TypeError, match="single string"):
        blast_radius(tiny_gpt2, edit, {"en": "one text"})  # type: ignore[dict-item]
    with pytest.raises(ge.TokenError, match="not a single token"):
        blast_radius(tiny_gpt2, edit, CORPORA, TargetSpec(EN, [" xylophone"]))
    with pytest.raises(ValueError, match="no scored token of the TargetSpec texts"):
        blast_radius(tiny_gpt2, edit, CORPORA, TargetSpec(["she said it"], [" he"]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        blast_radius(tiny_gpt2, edit, CORPORA, TargetSpec(EN, [10**7]))
    with pytest.raises(ValueError, match="TargetSpec.tokens is empty"):
        TargetSpec(EN, [])
    with pytest.raises(EditError):
        blast_radius(tiny_gpt2, WeightEdit.dense({"no.such.weight": torch.zeros(2, 2)}), CORPORA)
    with pytest.raises(ValueError, match="no token could be scored"):
        blast_radius(tiny_gpt2, edit, {"en": ["a"]})
    with pytest.raises(ValueError, match="topk"):
        blast_radius(tiny_gpt2, edit, CORPORA, topk=0)


# -- report I/O -----------------------------------------------------------------------------------------


def test_report_frame_summary_save_load(tiny_gpt2: ge.LanguageModel, tmp_path: Path) -> None:
    rep = blast_radius(tiny_gpt2, _dense_edit(tiny_gpt2), CORPORA, TargetSpec(EN, [" he"]), topk=2)
    frame = rep.to_frame()
    assert list(frame.index) == ["en", "de"]
    assert list(frame.columns[:6]) == ["ce_base", "ce_edit", "ce_delta", "kl", "control_ce_delta", "control_kl"]
    assert frame.loc["de", "ce_delta"] == rep.ce_delta["de"]
    text = rep.summary()
    assert "on target" in text and "  de: CE" in text and "surrounding KL" in text
    path = rep.save(tmp_path / "sub" / "report.json")
    back = BlastReport.load(path)
    assert back.ce_delta == rep.ce_delta and back.on_target == rep.on_target
    assert back.tokens == rep.tokens
    assert not list(path.parent.glob(".*")), "temp files left behind"


# -- Pareto sweeps --------------------------------------------------------------------------------------


def test_pareto_sweep_rows_are_sane(tiny_llama: ge.LanguageModel) -> None:
    edit = _dense_edit(tiny_llama, scale=0.5)
    values = [0.0, 0.5, 1.0, 2.0]
    frame = pareto_sweep(tiny_llama, lambda v: edit * v, values, CORPORA, "de", method="dense", control=True)
    assert list(frame["value"]) == values and set(frame["method"]) == {"dense"}
    for col in ("on_target", "off_target", "off_target_kl", "ce_delta_en", "ce_delta_de", "kl_en",
                "control_on_target", "control_off_target_kl"):
        assert col in frame.columns, col
    zero = frame.iloc[0]
    assert zero["on_target"] == pytest.approx(0, abs=1e-6) and zero["off_target_kl"] == pytest.approx(0, abs=1e-6)
    kl = frame["off_target_kl"].to_numpy()
    assert (kl[1:] > kl[:-1]).all(), f"KL should grow with the edit's scale: {kl}"
    assert frame["on_target_before"].nunique() == 1
    assert (frame["off_target"] == frame["ce_delta_en"].abs()).all()  # the only non-target corpus
    one = blast_radius(tiny_llama, edit, CORPORA, "de", control=False, keep_tokens=False)
    row = frame[frame["value"] == 1.0].iloc[0]
    assert row["on_target"] == pytest.approx(one.on_target["delta"], abs=1e-6)  # type: ignore[index]
    assert row["off_target_kl"] == pytest.approx(one.global_kl, rel=1e-6)


def test_pareto_front_oracle() -> None:
    frame = pd.DataFrame({"value": [1, 2, 3, 4, 5], "on_target": [0.1, 0.3, 0.2, 0.5, 0.5],
                          "off_target": [0.0, 0.1, 0.2, 0.3, 0.4]})
    front = pareto_front(frame, "on_target", "off_target")
    assert list(front["value"]) == [1, 2, 4]  # 3 is dominated by 2, 5 by 4
    low = pareto_front(frame, "on_target", "off_target", maximize_x=False)
    assert list(low["value"]) == [1]
    with pytest.raises(KeyError, match="not in the frame"):
        pareto_front(frame, "nope", "off_target")


def test_plot_pareto_returns_figure(tiny_llama: ge.LanguageModel) -> None:
    from gradedit.viz.pareto import plot_pareto

    edit = _dense_edit(tiny_llama)
    frames = {"dense": pareto_sweep(tiny_llama, lambda v: edit * v, [0.0, 1.0, 2.0], {"en": EN[:1], "de": DE[:1]}, "de"),
              "random": pareto_sweep(tiny_llama, lambda v: random_like(edit, tiny_llama.model, 1) * v, [0.0, 1.0],
                                     {"en": EN[:1], "de": DE[:1]}, "de")}
    fig = plot_pareto(frames)
    ax = fig.axes[0]
    assert "nats" in ax.get_xlabel() and "nats" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["dense", "random"] and "Pareto front (all)" in labels
    assert len(ax.lines[0].get_xdata()) == 3
    assert not math.isnan(float(ax.lines[0].get_ydata()[-1]))
    with pytest.raises(ValueError, match="frames is empty"):
        plot_pareto({})
