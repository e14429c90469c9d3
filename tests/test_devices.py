"""bf16/fp16 autocast of forward-only scoring (issue 17 item 2): numbers within a stated tolerance of
fp32, fp32 metrics, gradient paths untouched, the option's path from load_model and the CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch

import gradedit as ge
from gradedit import metrics
from gradedit.blast import blast_radius
from gradedit.cli.app import main
from gradedit.edits import WeightEdit
from gradedit.errors import ConfigError
from gradedit.models.dispatch import AUTOCAST_ENV

EN = ["he said he was here and he left", "The nurse thinks the city is quiet.", "ok then"]
DE = ["Der Mann ist hier.", "Die Frau ist dort und sie schläft."]
CORPORA = {"en": EN, "de": DE}

# Stated tolerances of autocast against fp32 on the tiny models (measured worst cases in brackets):
# bf16 (8-bit mantissa): |dCE| <= 2e-3 nats [2.7e-4], |dKL| <= 1e-4 nats [1.0e-5];
# fp16 (11-bit mantissa): |dCE| <= 5e-4 nats [4.4e-5], |dKL| <= 2e-5 nats [2.0e-6].
TOL = {"bf16": (2e-3, 1e-4), "fp16": (5e-4, 2e-5)}


def _edit(lm: ge.LanguageModel) -> WeightEdit:
    name, p = [(n, p) for n, p in ge.select_parameters(lm.model).items() if p.ndim == 2][3]
    return WeightEdit.dense({name: torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5})


@pytest.fixture
def fresh_lm(tiny_lm: ge.LanguageModel):
    """The session's tiny model with autocast reset afterwards (the fixture is shared)."""
    yield tiny_lm
    tiny_lm.autocast = None


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_autocast_blast_and_scores_within_tolerance_of_fp32(fresh_lm: ge.LanguageModel, autocast: str) -> None:
    lm = fresh_lm
    edit = _edit(lm)
    ref = blast_radius(lm, edit, CORPORA, "de", control=True)
    ref_scores = metrics.lm_scores(lm, EN + DE)
    lm.autocast = autocast
    got = blast_radius(lm, edit, CORPORA, "de", control=True)
    scores = metrics.lm_scores(lm, EN + DE)
    ce_tol, kl_tol = TOL[autocast]
    for lang in CORPORA:
        assert got.ce_delta[lang] == pytest.approx(ref.ce_delta[lang], abs=ce_tol)
        assert got.kl[lang] == pytest.approx(ref.kl[lang], abs=kl_tol)
        assert got.control_kl[lang] == pytest.approx(ref.control_kl[lang], abs=kl_tol)  # type: ignore[index]
    assert got.surrounding_kl == pytest.approx(ref.surrounding_kl, abs=kl_tol)
    assert scores["cross_entropy"] == pytest.approx(ref_scores["cross_entropy"], abs=ce_tol)
    # autocast really ran: the lower precision moves the base cross-entropy (fp32 would repeat it exactly)
    assert scores["cross_entropy"] != ref_scores["cross_entropy"]


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_inference_runs_linears_in_low_precision_and_returns_fp32(tiny_llama: ge.LanguageModel,
                                                                   autocast: str) -> None:
    lm = ge.load_model("tiny-llama", autocast=autocast)
    want = torch.bfloat16 if autocast == "bf16" else torch.float16
    seen: list[torch.dtype] = []
    proj = lm.model.model.layers[0].self_attn.q_proj
    handle = proj.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        enc = lm.tokenize(EN)
        with lm.inference():
            logits = lm.forward_logits(enc["input_ids"], enc["attention_mask"])
        assert logits.dtype == torch.float32 and not logits.requires_grad
        assert seen == [want]
        lp = metrics.full_logprobs(lm, EN)
        assert all(t.dtype == torch.float32 for t in lp)
        assert metrics.token_logprobs(lm, EN).flat().dtype == torch.float32
        assert metrics.next_token_logprobs(lm, ["He said"], [lm.token_id(" he")]).dtype == torch.float32
        assert metrics.kl_divergence(lp, lm, EN).flat().dtype == torch.float32
        assert set(seen) == {want}
        # outside inference(): fp32, even with autocast set (gradient and training forwards)
        seen.clear()
        logits = lm.forward_logits(enc["input_ids"], enc["attention_mask"])
        assert seen == [torch.float32] and logits.requires_grad
    finally:
        handle.remove()
    # the numbers in fp32 are the plain model's, bit for bit
    with torch.no_grad():
        plain = tiny_llama.forward_logits(enc["input_ids"], enc["attention_mask"])
    assert torch.equal(logits.detach(), plain)


def test_gradients_ignore_autocast(tiny_gpt2: ge.LanguageModel) -> None:
    """GRADIEND's gradient path (prediction logits with gradients) is fp32 whatever autocast says."""
    params = dict(tiny_gpt2.model.named_parameters())
    w = params["transformer.h.0.mlp.c_fc.weight"]

    def grad() -> torch.Tensor:
        tiny_gpt2.model.zero_grad(set_to_none=True)
        logits = tiny_gpt2.prediction_logits(["The doctor said that"])
        (logits[0, tiny_gpt2.token_id(" he")] - logits[0, tiny_gpt2.token_id(" she")]).backward()
        g = w.grad.detach().clone()  # type: ignore[union-attr]
        tiny_gpt2.model.zero_grad(set_to_none=True)
        return g

    base = grad()
    try:
        tiny_gpt2.autocast = "bf16"
        assert torch.equal(grad(), base)
    finally:
        tiny_gpt2.autocast = None


def test_autocast_option_env_and_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ge.load_model("tiny-gpt2").autocast is None
    assert ge.load_model("tiny-gpt2", autocast="bfloat16").autocast == "bf16"
    monkeypatch.setenv(AUTOCAST_ENV, "fp16")
    assert ge.load_model("tiny-gpt2").autocast == "fp16"
    assert ge.load_model("tiny-gpt2", autocast="none").autocast is None  # an explicit value beats the environment
    with pytest.raises(ConfigError, match="unknown autocast 'int8'") as err:
        ge.load_model("tiny-gpt2", autocast="int8")
    assert "\n" not in str(err.value)
    monkeypatch.setenv(AUTOCAST_ENV, "fp8")
    with pytest.raises(ConfigError, match="unknown autocast"):
        ge.load_model("tiny-gpt2")


def test_fp16_overflow_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    lm = ge.load_model("tiny-llama", autocast="fp16")
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(1e7)  # beyond fp16's 65504 (fp32 is fine)
    with caplog.at_level("WARNING", logger="gradedit.models.language_model"):
        metrics.full_logprobs(lm, EN)
        metrics.full_logprobs(lm, EN)
    hits = [r for r in caplog.records if "non-finite logits" in r.getMessage()]
    assert len(hits) == 1 and "bf16" in hits[0].getMessage()


def _score(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert main(["score", "--model", "tiny-llama", "--device", "cpu", "--text", EN[0], "--text", DE[1], *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_score_autocast(capsys: pytest.CaptureFixture[str]) -> None:
    before = os.environ.get(AUTOCAST_ENV)
    plain = _score(capsys)
    bf16 = _score(capsys, "--autocast", "bf16")
    assert os.environ.get(AUTOCAST_ENV) == before  # the scope restored the environment
    assert bf16["cross_entropy"] == pytest.approx(plain["cross_entropy"], abs=TOL["bf16"][0])
    assert bf16["cross_entropy"] != plain["cross_entropy"]  # the flag reached the model
    assert bf16["tokens"] == plain["tokens"]
    assert main(["score", "--model", "tiny-llama", "--text", "x y", "--autocast", "int8"]) == 2
