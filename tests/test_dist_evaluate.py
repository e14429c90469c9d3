"""Decoder sweeps and encoder evaluation with 2 gloo processes (rows split over ranks) == 1 process:
the same grid (every number within float tolerance), the same selections, bias prompts and the
few-pass search's derivative passes included; the caches are read on rank 0 for every rank; the
encoder's values come back in row order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from gradedit import dist
from gradedit.data.schema import PairDataset
from gradedit.gradiend.evaluate.decoder import DecoderProbe, evaluate_decoder, lr_scale
from gradedit.gradiend.evaluate.encoder import evaluate_encoder
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.models import select_parameters
from gradedit.models.param_map import ParamMap
from json_close import assert_json_close
from pronoun_rows import pronoun_records

# 5 neutral texts and 7 bias prompts: odd counts, so the ranks' blocks differ in size
NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the lazy dog.",
           "Numbers like 1, 2, 3 and symbols appear too.", "The teacher knows the city is quiet.",
           "Le chat noir dort sur la chaise."]
BIAS = ["The doctor said that", "My friend thinks that", "The nurse knows that", "The man wrote that",
        "A woman believes that", "The child said that", "Our boss knows that"]
CLASSES = ("masc", "fem")


def _setup() -> tuple[ModelWithGradiend, PairDataset]:
    lm = ge.load_model("tiny-llama")
    pm = ParamMap.from_params(select_parameters(lm.model))
    return ModelWithGradiend(lm, FeatureModel(pm.size, param_map=pm, seed=0)), \
        PairDataset.from_records(pronoun_records(), target_classes=list(CLASSES))


def _no_scoring(self: DecoderProbe) -> dict[str, Any]:
    raise AssertionError("a cached sweep scored a point")


def _run(cache: Path) -> dict[str, Any]:
    mwg, data = _setup()
    scale = lr_scale(mwg)
    kw: dict[str, Any] = dict(max_rows_per_class=None, selector="perplexity:0.015")
    grid = evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="grid", refine_steps=3, bias_prompts=BIAS,
                            cache_dir=cache, **kw)
    score = DecoderProbe.score
    DecoderProbe.score = _no_scoring  # type: ignore[method-assign]  # the same sweep again: from the cache only
    try:
        again = evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="grid", refine_steps=3, bias_prompts=BIAS,
                                 cache_dir=cache, **kw)
    finally:
        DecoderProbe.score = score  # type: ignore[method-assign]
    # exact (jvp-of-jvp) derivatives: fd's differences at ±h amplify the ranks' summation-order rounding
    fast = evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="fast", target_class="masc", derivatives="jvp2",
                            learning_rates=[1e-2 * scale, scale], tolerance=0.05, **kw)
    enc = evaluate_encoder(mwg, data, CLASSES, neutral=NEUTRAL, split="train", batch_size=3)
    return {"grid": grid.to_dict(), "again": again.to_dict() == grid.to_dict(), "fast": fast.to_dict(),
            "encoder": {**enc.to_dict(), "encoded": enc.rows["encoded"].tolist(), "text": enc.rows["text"].tolist()}}


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    res = _run(Path(out, "cache"))
    Path(out, f"rank{dist.rank()}.json").write_text(json.dumps(res))


def test_two_process_decoder_and_encoder_evaluation_equal_one_process(tmp_path: Path) -> None:
    dist.launch_local(_worker, 2, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0 == r1  # every rank holds the same results, bit for bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = json.loads(json.dumps(_run(tmp_path / "cache1")))
    finally:
        torch.set_num_threads(threads)
    # the same selection, and every grid number within float tolerance of one process
    for which in ("grid", "fast"):
        for key, sel in ref[which]["selections"].items():
            got = r0[which]["selections"][key]
            assert got["admissible"] == sel["admissible"] and got["feature_factor"] == sel["feature_factor"], key
            # grid and bisection: the same lr; fast: lrs computed from the Taylor coefficients (float tolerance)
            assert got["learning_rate"] == pytest.approx(sel["learning_rate"], rel=1e-12 if which == "grid" else 1e-5)
        assert_json_close({k: v for k, v in ref[which].items() if k != "fingerprint"},
               {k: v for k, v in r0[which].items() if k != "fingerprint"}, which)
    assert any(s["admissible"] for s in ref["grid"]["selections"].values())  # a selection that can differ
    assert ref["fast"]["info"]["jvp_passes"] >= 1 and "bias" in r0["grid"]["base"]
    # the cache was written once (rank 0) and read for both ranks: the second sweep scored nothing
    assert r0["again"] and len(list((tmp_path / "cache").glob("decoder_*.json"))) == 1
    assert_json_close(ref["encoder"], r0["encoder"], "encoder")
    assert len(set(r0["encoder"]["encoded"])) > 10  # real, varied values in row order
    with pytest.raises(AssertionError):  # the comparison sees a change of 1e-3
        assert_json_close(ref["encoder"]["encoded"], [v * 1.001 + 1e-3 for v in ref["encoder"]["encoded"]])
