"""Oracle and invariant tests for gradedit.metrics on tiny random models."""

import contextlib
import math

import pytest
import torch

import gradedit as ge
from gradedit import metrics as M


def _manual_clm_logprobs(lm, text):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
    return lp[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1)


def _manual_pll(lm, text):
    enc = lm.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
    ids, special = enc["input_ids"][0], enc["special_tokens_mask"][0]
    out = []
    for p in range(len(ids)):
        if special[p]:
            continue
        masked = ids.clone()
        masked[p] = lm.tokenizer.mask_token_id
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=masked[None]).logits[0, p].float(), -1)
        out.append(lp[ids[p]])
    return torch.stack(out)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_clm_ce_equals_hf_loss(name, texts):
    lm = ge.load_model(name)
    usable = [t for t in texts if len(lm.tokenizer(t)["input_ids"]) > 1]
    enc = lm.tokenizer(usable, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        hf = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
    assert M.cross_entropy(lm, usable) == pytest.approx(float(hf), abs=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_one_by_one_oracle(tiny_lm, texts, side):
    batched = M.token_logprobs(tiny_lm, texts, padding_side=side)
    manual = _manual_clm_logprobs if tiny_lm.kind == "clm" else _manual_pll
    for text, got in zip(texts, batched.values):
        want = manual(tiny_lm, text)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_ce_is_token_weighted_mean(tiny_gpt2, texts):
    s = M.token_logprobs(tiny_gpt2, texts)
    total = sum(float(v.sum()) for v in s.values)
    n = sum(v.numel() for v in s.values)
    assert M.cross_entropy(tiny_gpt2, texts) == pytest.approx(-total / n, rel=1e-6)
    assert M.perplexity(tiny_gpt2, texts) == pytest.approx(math.exp(-total / n), rel=1e-6)


def test_clm_first_token_never_scored(tiny_llama):
    s = M.token_logprobs(tiny_llama, ["He said that she would be late."])
    n = len(tiny_llama.tokenizer("He said that she would be late.")["input_ids"])
    assert s.positions[0].tolist() == list(range(1, n))


def test_mlm_never_masks_special_tokens(tiny_bert, monkeypatch):
    text = "He said that she would be late."
    enc = tiny_bert.tokenizer(text, return_special_tokens_mask=True)
    special_pos = [i for i, s in enumerate(enc["special_tokens_mask"]) if s]
    assert special_pos == [0, len(enc["input_ids"]) - 1]  # [CLS] ... [SEP]
    seen = []
    forward = tiny_bert.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_bert.model, "forward", spy)
    scores = M.token_logprobs(tiny_bert, [text])
    assert not set(scores.positions[0].tolist()) & set(special_pos)
    assert len(scores.positions[0]) == len(enc["input_ids"]) - 2
    batch = torch.cat(seen)
    mask_id = tiny_bert.tokenizer.mask_token_id
    for p in special_pos:
        assert not (batch[:, p] == mask_id).any()
    assert (batch == mask_id).sum(-1).eq(1).all(), "each copy masks exactly one token"


def test_kl_self_is_zero_and_nonnegative(tiny_lm, texts):
    kl = M.kl_divergence(tiny_lm, tiny_lm, texts)
    assert kl.n_tokens > 0
    assert torch.equal(kl.flat(), torch.zeros_like(kl.flat()))
    other = ge.zoo.load(tiny_lm.name, seed=1)
    if other.tokenizer.get_vocab() == tiny_lm.tokenizer.get_vocab():
        kl2 = M.kl_divergence(tiny_lm, other, texts)
        assert (kl2.flat() >= 0).all() and kl2.mean() > 0


def _perturbed(lm, scale=0.5, seed=0):
    """A copy of lm with its output layer changed (tokenizer shared)."""
    import copy

    model = copy.deepcopy(lm.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w.add_(scale * torch.randn(w.shape, generator=g))
    return ge.LanguageModel(model=model, tokenizer=lm.tokenizer, kind=lm.kind, name=lm.name + "-edit")


def test_kl_matches_torch_oracle_and_direction(tiny_llama, texts):
    edit = _perturbed(tiny_llama)
    kl = M.kl_divergence(tiny_llama, edit, texts)
    ref_b, ref_e = M.full_logprobs(tiny_llama, texts), M.full_logprobs(edit, texts)
    for got, b, e in zip(kl.values, ref_b, ref_e):
        want = torch.nn.functional.kl_div(e, b, log_target=True, reduction="none").sum(-1)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    reverse = M.kl_divergence(edit, tiny_llama, texts)
    assert abs(reverse.mean() - kl.mean()) > 1e-6, "KL is asymmetric; base and edit must not be swapped"
    # precomputed references give the same numbers as live models, in either slot
    for a, b in [(ref_b, edit), (tiny_llama, ref_e), (ref_b, ref_e)]:
        other = M.kl_divergence(a, b, texts)
        torch.testing.assert_close(other.flat(), kl.flat(), atol=1e-6, rtol=1e-5)


def test_kl_positions_match_logprobs(tiny_gpt2, texts):
    kl = M.kl_divergence(tiny_gpt2, _perturbed(tiny_gpt2), texts)
    lp = M.token_logprobs(tiny_gpt2, texts)
    for a, b in zip(kl.positions, lp.positions):
        assert torch.equal(a, b)


def test_chunking_and_budget_do_not_change_numbers(tiny_lm, texts, monkeypatch):
    edit = _perturbed(tiny_lm)
    base_lp = M.token_logprobs(tiny_lm, texts).flat()
    base_kl = M.kl_divergence(tiny_lm, edit, texts).flat()
    monkeypatch.setattr(M, "CHUNK_POSITIONS", 3)
    monkeypatch.setattr(M, "LOGIT_BUDGET_BYTES", 4 * tiny_lm.vocab_size * 7)  # ~7 tokens per forward
    torch.testing.assert_close(M.token_logprobs(tiny_lm, texts).flat(), base_lp, atol=2e-5, rtol=0)
    torch.testing.assert_close(M.kl_divergence(tiny_lm, edit, texts).flat(), base_kl, atol=2e-6, rtol=1e-4)


def test_lms_is_top1_accuracy(tiny_lm, texts):
    refs = M.full_logprobs(tiny_lm, texts)
    tok = M.token_logprobs(tiny_lm, texts)
    hits = sum(int((r.argmax(-1) == t).sum()) for r, t in zip(refs, tok.token_ids))
    assert M.lms(tiny_lm, texts) == pytest.approx(hits / tok.n_tokens)


def test_lms_of_constant_predictor_is_fraction_of_that_token(tiny_gpt2):
    """A model that always predicts ' the' scores LMS = fraction of ' the' among scored targets."""
    the = tiny_gpt2.token_id(" the")

    def always_the(module, inputs, output):
        out = torch.zeros_like(output)
        out[..., the] = 10.0
        return out

    handle = tiny_gpt2.model.lm_head.register_forward_hook(always_the)
    try:
        for text in ["the the the the the", "He said that the city is old and the house is quiet."]:
            targets = M.token_logprobs(tiny_gpt2, [text]).token_ids[0]
            want = float((targets == the).float().mean())
            assert M.lms(tiny_gpt2, [text]) == pytest.approx(want)
        assert M.lms(tiny_gpt2, ["the the the the the"]) > 0.5
    finally:
        handle.remove()


def test_next_token_logprobs_matches_token_logprobs(tiny_gpt2):
    prompt, full = "He said that", "He said that she"
    she = tiny_gpt2.token_id(" she")
    nt = M.next_token_logprobs(tiny_gpt2, [prompt + " "], [she])  # trailing space stripped
    lp = M.token_logprobs(tiny_gpt2, [full]).values[0][-1]
    assert float(nt[0, 0]) == pytest.approx(float(lp), abs=1e-5)


def _manual_mask_logprobs(lm, prompt, ids):
    """Oracle: the unpadded prompt alone through HF; log-softmax at the [MASK] position."""
    enc = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    pos = (enc[0] == lm.tokenizer.mask_token_id).nonzero().flatten()
    assert pos.numel() == 1
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(input_ids=enc).logits[0, int(pos)].float(), -1)
    return lp[ids], int(pos)


def test_next_token_logprobs_mlm_reads_the_mask_position(tiny_bert):
    """Masks at the start, middle and end of prompts of different lengths (batched, so padded): each
    value must be the HF log-prob at that prompt's own [MASK] position, not another position's."""
    ids = [tiny_bert.token_id(w) for w in ("he", "she", "the")]
    prompts = ["[MASK] said that she would be late.", "The nurse said that [MASK] would be late.",
               "The teacher knows the city is quiet and [MASK]", "ok [MASK] ok"]
    got = M.next_token_logprobs(tiny_bert, prompts, ids, batch_size=3)
    positions = []
    for row, prompt in zip(got, prompts):
        want, pos = _manual_mask_logprobs(tiny_bert, prompt, ids)
        positions.append(pos)
        torch.testing.assert_close(row, want, atol=2e-5, rtol=0)
    assert len(set(positions)) == len(prompts), "the oracle must cover different mask positions"
    # a neighbouring position gives different numbers, so the check above can tell positions apart
    enc = tiny_bert.tokenizer(prompts[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        near = torch.log_softmax(tiny_bert.model(input_ids=enc).logits[0, positions[1] + 1].float(), -1)[ids]
    assert (near - got[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="exactly one"):
        M.next_token_logprobs(tiny_bert, ["he said that she would be late."], ids[:1])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_next_token_logprobs_clm_matches_hf_last_position(name):
    lm = ge.load_model(name)
    ids = [lm.token_id(w) for w in (" he", " she")]
    prompts = ["He said that", "The nurse thinks the city is quiet and", "ok"]
    got = M.next_token_logprobs(lm, prompts, ids)
    for row, prompt in zip(got, prompts):
        enc = lm.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want = torch.log_softmax(lm.model(input_ids=enc).logits[0, -1].float(), -1)[ids]
        torch.testing.assert_close(row, want, atol=2e-5, rtol=0)


def test_unscorable_texts_raise(tiny_gpt2):
    with pytest.raises(ValueError, match="no token could be scored"):
        M.cross_entropy(tiny_gpt2, ["a"])
    with pytest.raises(TypeError):
        M.cross_entropy(tiny_gpt2, [1, 2])


def test_metrics_never_leave_grad_mode_disabled(tiny_gpt2, texts):
    """Generators that suspend inside no_grad leak it to the caller; ours must not."""
    assert torch.is_grad_enabled()
    M.kl_divergence(tiny_gpt2, _perturbed(tiny_gpt2), texts)
    it = M.iter_scored(tiny_gpt2, texts)
    next(it)
    assert torch.is_grad_enabled()
    del it
    M.token_logprobs(tiny_gpt2, texts)
    assert torch.is_grad_enabled()


def _manual_lms_and_ce(lm, texts):
    """Oracle from plain HF forwards, one text at a time: (top-1 hits, scored tokens, summed NLL).
    CLM: logits[t] vs token t+1; MLM: each non-special token masked in turn."""
    hits, n, nll = 0, 0, 0.0
    for text in texts:
        if lm.kind == "clm":
            ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1].float(), -1)
            targets = ids[0, 1:]
        else:
            enc = lm.tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
            ids, special = enc["input_ids"][0], enc["special_tokens_mask"][0]
            rows, tg = [], []
            for p in range(len(ids)):
                if special[p]:
                    continue
                masked = ids.clone()
                masked[p] = lm.tokenizer.mask_token_id
                with torch.no_grad():
                    rows.append(torch.log_softmax(lm.model(input_ids=masked[None]).logits[0, p].float(), -1))
                tg.append(ids[p])
            if not rows:
                continue
            lp, targets = torch.stack(rows), torch.stack(tg)
        hits += int((lp.argmax(-1) == targets).sum())
        nll -= float(lp.gather(-1, targets[:, None]).double().sum())
        n += targets.numel()
    return hits, n, nll


@contextlib.contextmanager
def _bigram_steered(lm, texts):
    """Steer the model to a position-specific guess: at each scored position it predicts the token that
    followed the previous input token in ``texts`` (CLM: the token at t; MLM: at p-1, since p is
    masked). Many predictions are then right and which ones depends on the position, so an LMS that
    compares with the wrong position or target cannot agree with the oracle by luck."""
    follow = torch.arange(lm.vocab_size)
    for text in texts:
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        for u, v in zip(ids, ids[1:]):
            follow[u] = v
    seen = {}

    def grab(module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def steer(module, inputs, out):
        ids = seen["ids"]
        prev = ids if lm.kind == "clm" else torch.cat([ids[:, :1], ids[:, :-1]], 1)
        return out + 30.0 * torch.nn.functional.one_hot(follow[prev], out.shape[-1]).to(out.dtype)

    hooks = [lm.model.register_forward_pre_hook(grab, with_kwargs=True),
             lm.model.get_output_embeddings().register_forward_hook(steer)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def test_lm_scores_match_an_hf_oracle(tiny_lm, texts):
    """LMS, CE and perplexity from one pass equal top-1 accuracy / mean NLL computed by hand from HF
    logits, one text at a time (not from our own functions) — on the raw random model and on one
    steered so that many, position-specific top-1 predictions are right."""
    for steered in (False, True):
        with _bigram_steered(tiny_lm, texts) if steered else contextlib.nullcontext():
            sc = M.lm_scores(tiny_lm, texts)
            hits, n, nll = _manual_lms_and_ce(tiny_lm, texts)
        if steered:
            assert hits >= 0.3 * n, "the steering must make the LMS check non-trivial"
        assert sc["tokens"] == n
        assert sc["lms"] == pytest.approx(hits / n, abs=1e-12)
        assert sc["cross_entropy"] == pytest.approx(nll / n, rel=1e-5)
        assert sc["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
