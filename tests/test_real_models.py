"""Real embedded models (prepared from their PyPI packages on first use). Marked slow; `make test` runs them."""

import pytest
import torch

import gradedit as ge
from gradedit import metrics as M

pytestmark = pytest.mark.slow

SENTENCES = [
    "The capital of France is Paris.",
    "She walked to the market early in the morning to buy fresh bread.",
    "He said that the meeting would be moved to Thursday.",
    "Rain fell all night.",
]
MULTILINGUAL = [
    "Der Mann ging nach Hause und aß sein Brot.",
    "The man went home and ate his bread.",
    "L'homme est rentré chez lui et a mangé son pain.",
    "El hombre volvió a casa y comió su pan.",
    "L'uomo tornò a casa e mangiò il suo pane.",
]


@pytest.fixture(scope="module")
def smollm():
    return ge.load_model("smollm2-135m")


@pytest.fixture(scope="module")
def gemma():
    return ge.load_model("gemma3-270m")


def _hf_loss(lm, texts):
    """HF's own token-weighted loss on a right-padded batch (pads labelled -100)."""
    tok = lm.tokenizer
    old, tok.padding_side = tok.padding_side, "right"
    try:
        enc = tok(texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        return float(lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss)


def _one_by_one(lm, texts):
    return [M.token_logprobs(lm, [t]).values[0] for t in texts]


def test_smollm_token_conventions(smollm):
    assert smollm.kind == "clm"
    assert smollm.token_id(" he") == 384 and smollm.token_id(" she") == 1041 and smollm.token_id("he") == 255
    assert smollm.tokenizer.pad_token == "<|im_end|>"


@pytest.mark.parametrize("which", ["smollm", "gemma"])
def test_ce_equals_hf_loss_and_one_by_one(which, request):
    lm = request.getfixturevalue(which)
    texts = SENTENCES if which == "smollm" else MULTILINGUAL
    ce = M.cross_entropy(lm, texts)
    assert ce == pytest.approx(_hf_loss(lm, texts), abs=1e-4)
    single = _one_by_one(lm, texts)
    for side in ("left", "right"):
        batched = M.token_logprobs(lm, texts, padding_side=side)
        for a, b in zip(batched.values, single):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    manual = -torch.cat(single).double().mean()
    assert ce == pytest.approx(float(manual), abs=1e-4)


def test_smollm_knows_things(smollm):
    he, she = smollm.token_id(" he"), smollm.token_id(" she")
    p = M.next_token_logprobs(smollm, ["The nurse said that", "The capital of France is"], [she, he]).exp()
    assert p[0, 0] > p[0, 1] > 0.005  # nurse -> she more likely than he
    paris = M.next_token_logprobs(smollm, ["The capital of France is"], [smollm.token_id(" Paris")]).exp()
    assert paris[0, 0] > 0.3
    assert 1.5 < M.cross_entropy(smollm, SENTENCES) < 5.0


def test_gemma_kl_full_vocab(gemma):
    assert gemma.vocab_size == 262144
    kl = M.kl_divergence(gemma, gemma, MULTILINGUAL[:2])
    assert kl.n_tokens > 10 and float(kl.flat().abs().max()) == 0.0
    ref = M.full_logprobs(gemma, MULTILINGUAL[:1])
    assert ref[0].shape[1] == 262144
    torch.testing.assert_close(ref[0].exp().sum(-1), torch.ones(ref[0].shape[0]), atol=1e-4, rtol=0)
    assert gemma.token_id(" der") != gemma.token_id("der")
