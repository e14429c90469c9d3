"""``LanguageModel.prediction_logits`` applies the LM head only at the prediction points.

Oracle: the full ``[B, T, V]`` logits of ``forward_logits`` indexed at each row's prediction point.
"""

from __future__ import annotations

import torch

import gradedit as ge

TEXTS = ["The doctor said that", "A", "When the rain came down on the old town the farmer said that",
         "She told me"]


def _mask_texts(lm: ge.LanguageModel) -> list[str]:
    m = lm.tokenizer.mask_token
    return [f"The doctor said that {m} was late.", f"{m} ran.", f"When the rain came {m} left the town early."]


def _oracle(lm: ge.LanguageModel, texts: list[str]) -> torch.Tensor:
    if lm.kind == "clm":
        texts = [t.rstrip(" ") for t in texts]
    enc = lm.tokenize(texts, padding_side="right")
    full = lm.forward_logits(enc["input_ids"], enc["attention_mask"])  # [B, T, V]
    if lm.kind == "clm":
        where = enc["attention_mask"].sum(-1) - 1
    else:
        where = (enc["input_ids"] == lm.tokenizer.mask_token_id).long().argmax(-1)
    return full[torch.arange(len(texts)), where]


def test_prediction_logits_equal_the_full_logits_at_the_prediction_point(tiny_lm: ge.LanguageModel) -> None:
    texts = TEXTS if tiny_lm.kind == "clm" else _mask_texts(tiny_lm)
    with torch.no_grad():
        got = tiny_lm.prediction_logits(texts)
        want = _oracle(tiny_lm, texts)
    assert got.shape == (len(texts), want.shape[-1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_lm_head_sees_only_the_prediction_positions(tiny_llama: ge.LanguageModel) -> None:
    """The head runs on [B, K, d] with K = distinct prediction points (here 4 rows, 4 lengths), not [B, T, d]."""
    seen: list[tuple[int, ...]] = []
    head = tiny_llama.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            tiny_llama.prediction_logits(TEXTS)
    finally:
        handle.remove()
    enc = tiny_llama.tokenize(TEXTS, padding_side="right")
    distinct = len(torch.unique(enc["attention_mask"].sum(-1)))
    assert seen == [(len(TEXTS), distinct, tiny_llama.model.config.hidden_size)]
    assert distinct < enc["input_ids"].shape[1]


def test_gradients_through_the_kept_positions_equal_the_full_logits(tiny_gpt2: ge.LanguageModel) -> None:
    """The backward of a loss on the kept logits equals the one on the sliced full logits."""
    params = dict(tiny_gpt2.model.named_parameters())
    name = next(n for n in params if n.endswith("mlp.c_fc.weight"))

    def grad(fn: object) -> torch.Tensor:
        tiny_gpt2.model.zero_grad(set_to_none=True)
        logits = fn(TEXTS)  # type: ignore[operator]
        logits.log_softmax(-1)[:, 7].sum().backward()
        g = params[name].grad
        assert g is not None
        return g.clone()

    try:
        torch.testing.assert_close(grad(tiny_gpt2.prediction_logits), grad(lambda t: _oracle(tiny_gpt2, t)),
                                   rtol=1e-5, atol=1e-6)
    finally:  # the model is shared by the session: leave no .grad behind
        tiny_gpt2.model.zero_grad(set_to_none=True)
