"""The pure helpers of benchmarks/bench_decoder.py and benchmarks/_measure.py: edit files (changed
entries, save/load, in-place application restored bit-exactly), the one held-out scorer's metrics,
our translation of gradiend's LMS bound, the selection/held-out row split, and the shared table,
JSON and torchrun-configuration helpers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _decoder_heldout import (  # noqa: E402
    HeldoutScorer,
    changed_entries,
    class_metrics,
    edit_applied,
    heldout_row,
    load_edit,
    save_edit,
)
from _gradedit_decoder_side import perplexity_bound  # noqa: E402
from _measure import dist_configs, md_table, write_json_atomic  # noqa: E402
from bench_decoder import cost_table, eval_rows, quality_table, same_point  # noqa: E402

import gradedit as ge  # noqa: E402
from gradedit import metrics  # noqa: E402


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def test_changed_entries_apply_and_restore_bit_exactly(tmp_path: Path) -> None:
    m = _module()
    base = {n: p.detach().clone() for n, p in m.named_parameters()}
    new = {n: t.clone() for n, t in base.items()}
    new["0.weight"].view(-1)[[1, 7]] += torch.tensor([0.5, -2.0])
    new["1.bias"][1] = 3.25
    entries = changed_entries(base, new)
    assert set(entries) == {"0.weight", "1.bias"}
    assert entries["0.weight"][0].tolist() == [1, 7] and entries["1.bias"][0].tolist() == [1]

    meta = save_edit(tmp_path / "e.safetensors", entries, {"key": "fem", "learning_rate": 0.1})
    assert meta["entries_changed"] == 3 and meta["tensors_changed"] == 2
    assert json.loads((tmp_path / "e.json").read_text())["key"] == "fem"
    loaded = load_edit(tmp_path / "e.safetensors")
    with edit_applied(m, loaded):
        for n, p in m.named_parameters():
            assert torch.equal(p, new[n]), n
    for n, p in m.named_parameters():
        assert torch.equal(p, base[n]), n  # restored bit-exactly


def test_changed_entries_maps_gathered_positions_to_flat_indices() -> None:
    full = torch.arange(12.0)
    idx = torch.tensor([2, 5, 9])
    new_sub = full[idx].clone()
    new_sub[1] = -1.0
    entries = changed_entries({"w": full[idx]}, {"w": new_sub}, {"w": idx})
    assert entries["w"][0].tolist() == [5] and entries["w"][1].tolist() == [-1.0]
    assert changed_entries({"w": full}, {"w": full.clone()}) == {}


def test_edit_applied_restores_after_an_error_and_rejects_unknown_names() -> None:
    m = _module()
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(RuntimeError, match="boom"), edit_applied(m, {"1.bias": (torch.tensor([0]), torch.tensor([9.0]))}):
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    with pytest.raises(ValueError, match="no parameters"), edit_applied(m, {"x.weight": (torch.tensor([0]), torch.tensor([1.0]))}):
        pass
    with pytest.raises(ValueError, match="outside"), edit_applied(m, {"1.bias": (torch.tensor([5]), torch.tensor([1.0]))}):
        pass
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_class_metrics_by_hand() -> None:
    # columns: masc tokens 0, 1; fem token 2
    probs = torch.tensor([[0.5, 0.1, 0.2],   # masc row
                          [0.3, 0.1, 0.4],   # masc row
                          [0.1, 0.0, 0.7]])  # fem row
    m = class_metrics(probs, ["masc", "masc", "fem"], {"masc": [0, 1], "fem": [2]})
    assert m["masc"] == pytest.approx(0.1)               # P(masc) on fem rows
    assert m["fem"] == pytest.approx((0.2 + 0.4) / 2)     # P(fem) on masc rows
    assert m["masc_weaken"] == pytest.approx(1 - (0.6 + 0.4) / 2)
    assert m["fem_weaken"] == pytest.approx(1 - 0.7)
    with pytest.raises(ValueError, match="both classes"):
        class_metrics(probs[:2], ["masc", "masc"], {"masc": [0, 1], "fem": [2]})


def test_perplexity_bound_equals_gradiends_lms_threshold() -> None:
    for base_ppl, r in ((20.0, 0.99), (3.0, 0.95), (150.0, 0.999)):
        x = perplexity_bound(base_ppl, r)
        ce_b, ce = math.log(base_ppl), math.log(base_ppl * (1 + x))
        assert 1 / (1 + ce) == pytest.approx(r / (1 + ce_b), rel=1e-12)  # gradiend's LMS at the bound
    assert perplexity_bound(20.0, 1.0) == 0.0


def test_heldout_row_ratios() -> None:
    base = {"metrics": {"fem": 0.02}, "perplexity": 10.0, "lms": 0.4}
    edit = {"metrics": {"fem": 0.05}, "perplexity": 10.5, "lms": 0.38}
    row = heldout_row(base, edit, "fem")
    assert row["metric_ratio"] == row["p_ratio"] == pytest.approx(2.5)
    assert row["perplexity_ratio"] == pytest.approx(1.05) and row["lms_ratio"] == pytest.approx(0.95)
    weak = heldout_row({**base, "metrics": {"fem_weaken": 0.9}}, {**edit, "metrics": {"fem_weaken": 0.95}}, "fem_weaken")
    assert weak["p_ratio"] == pytest.approx(0.05 / 0.1) and weak["metric_ratio"] == pytest.approx(0.95 / 0.9)


def _pairs(n: int) -> ge.PairDataset:
    recs = []
    for i in range(n):
        for f, a, fc, ac in ((" he", " she", "masc", "fem"), (" she", " he", "fem", "masc")):
            recs.append({"text": f"Row {i} said that [MASK] was here.", "factual": f, "alternative": a,
                         "factual_class": fc, "alternative_class": ac, "split": "test" if i < 6 else "train"})
    recs.append({"text": "[MASK] went home.", "factual": " he", "alternative": " she", "factual_class": "masc",
                 "alternative_class": "fem", "split": "test"})
    return ge.PairDataset.from_records(recs, target_classes=["masc", "fem"])


def test_eval_rows_splits_test_rows_into_selection_and_heldout() -> None:
    ds = _pairs(10)
    sel, held = eval_rows(ds, 4, seed=0)
    test = sel.split("test").to_frame()
    assert test["factual_class"].value_counts().to_dict() == {"masc": 4, "fem": 4}
    assert held["factual_class"].value_counts().to_dict() == {"masc": 2, "fem": 2}  # the empty-prefix row is dropped
    assert not set(test["text"] + test["factual"]) & set(held["text"] + held["factual"])
    assert len(sel.split("train")) == len(ds.split("train"))
    with pytest.raises(SystemExit):
        eval_rows(ds, 6, seed=0)  # no held-out rows would be left


def test_heldout_scorer_matches_plain_next_token_probabilities(tiny_gpt2: ge.LanguageModel) -> None:
    lm = tiny_gpt2
    prompts, classes = ["The man said that", "The woman said that", "Then"], ["masc", "fem", "fem"]
    scorer = HeldoutScorer(lm, prompts, classes, {"masc": [" he"], "fem": [" she", " her"]}, ["A quiet day."])
    got = scorer.score()
    he, she, her = (lm.token_id(w) for w in (" he", " she", " her"))
    p = []
    with torch.no_grad():
        for text in prompts:  # oracle: the HF model's own softmax after the prompt's last token
            ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
            p.append(lm.model(input_ids=ids).logits[0, -1].double().softmax(-1))
    assert got["metrics"]["masc"] == pytest.approx(float((p[1][he] + p[2][he]) / 2), rel=1e-4)
    assert got["metrics"]["fem"] == pytest.approx(float(p[0][she] + p[0][her]), rel=1e-4)
    assert got["perplexity"] == pytest.approx(metrics.perplexity(lm, ["A quiet day."]), rel=1e-6)
    assert scorer.score_edit({}) == got
    name, param = next((n, q) for n, q in lm.model.named_parameters() if n.endswith("h.0.mlp.c_fc.weight"))
    before = param.detach().clone()
    edited = scorer.score_edit({name: (torch.arange(50), torch.full((50,), 0.5))})
    assert edited["perplexity"] != got["perplexity"]
    assert torch.equal(param, before)


def test_md_table_dist_configs_and_atomic_json(tmp_path: Path) -> None:
    assert md_table(["a", "b"], [[1, "x"], [2.5, ""]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |"
    assert dist_configs("2x1,1x2") == [(1, 1), (2, 1), (1, 2)]
    assert dist_configs("1x1, 2x1") == [(1, 1), (2, 1)]
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_same_point_compares_the_edits_of_equal_selections() -> None:
    i, v = torch.tensor([1, 4, 6]), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    loaded = {("gradiend", "fem"): {"w": (i, v)}, ("gradedit-fast", "fem"): {"w": (i[:2], v[:2] + 1e-7)},
              ("gradedit-grid", "fem"): {"w": (i, v)}}
    rows = [{"side": s, "key": "fem", "feature_factor": 1.0, "learning_rate": lr}
            for s, lr in (("gradiend", 0.1), ("gradedit-fast", 0.1), ("gradedit-grid", 0.2))]
    (c,) = same_point(rows, loaded)  # the grid chose another lr: not compared
    assert c["sides"] == "gradiend and gradedit-fast" and c["entries_in_one_only"] == 1
    assert c["max_abs_value_diff"] == pytest.approx(1e-7, rel=1e-3)


def test_tables_ratio_gradiend_over_each_side() -> None:
    def res(side: str, wall: float, cpu: float, peak: float) -> dict:
        return {"side": side, "call": "c", "eval_wall_s": wall, "eval_cpu_s": cpu, "scoring_calls": 3,
                "jvp_passes": 1, "rows_scored": 8, "neutral_scored": 8, "rss_before_eval_mib": 100.0,
                "eval_peak_rss_mib": peak}
    results = [res("gradedit-fast", 2.0, 1.0, 512.0), res("gradedit-fast", 4.0, 1.0, 512.0),
               res("gradiend", 10.0, 5.0, 1024.0), {"side": "gradedit-grid", "failed": True}]
    lines = cost_table(results, ["gradedit-fast", "gradedit-grid", "gradiend"]).splitlines()
    assert lines[2].split(" | ")[-3:] == ["5.00", "5.00", "2.00 |"]  # best repeat (2 s), gradiend ÷ it
    assert "failed" in lines[3] and lines[4].split(" | ")[-3:] == ["1.00", "1.00", "1.00 |"]
    q = quality_table([{"side": "gradiend", "key": "fem", "feature_factor": -1.0, "learning_rate": 0.01,
                        "entries_changed": 1234, "selection": {"value": 0.2, "lms_ratio": 0.995},
                        "metric_ratio": 1.5, "p_ratio": 1.5, "perplexity_ratio": 1.01, "lms_ratio": 0.99}])
    assert "| fem | gradiend | -1 | 0.01 | 1,234 | metric 0.2, LMS ×0.9950 | 1.500 | 1.0100 | 0.9900 |" in q
