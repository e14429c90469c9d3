"""Oracle tests for the gradient engine: one-forward diff, JVP dots, selection isolation."""

import pytest
import torch

import gradedit as ge
from gradedit.gradiend.gradients import GradientEngine, row_losses


def _rows(lm):
    if lm.kind == "mlm":
        m = lm.tokenizer.mask_token
        texts = [f"the doctor said that {m} would be late.", f"my friend thinks that {m} left early.",
                 f"the teacher knows that {m} wrote it."]
        f, a = [" he", " she", " they"], [" she", " he", " he"]
    else:
        texts = ["The doctor said that", "My friend thinks that", "The teacher knows that the house is old and"]
        f, a = [" he", " she", " they"], [" she", " he", " he"]
    return texts, torch.tensor(lm.token_ids(f)), torch.tensor(lm.token_ids(a))


def _two_backward(lm, engine, texts, f, a, source):
    """Independent oracle: a fresh forward + autograd per source, on all parameters."""
    lm.model.zero_grad(set_to_none=True)
    loss = row_losses(lm, texts, f, a, source).mean()
    loss.backward()
    out = {n: p.grad.detach().clone() for n, p in engine.params.items()}
    lm.model.zero_grad(set_to_none=True)
    return out


def test_one_forward_diff_equals_two_backward_passes(tiny_lm):
    texts, f, a = _rows(tiny_lm)
    eng = GradientEngine(tiny_lm)
    diff = eng.gradients(texts, f, a, "diff")
    gf = _two_backward(tiny_lm, eng, texts, f, a, "factual")
    ga = _two_backward(tiny_lm, eng, texts, f, a, "alternative")
    for n in eng.names:
        torch.testing.assert_close(diff[n], gf[n] - ga[n], atol=1e-6, rtol=0)
    multi = eng.multi_gradients(texts, f, a, ["factual", "alternative", "diff"])
    for n in eng.names:
        torch.testing.assert_close(multi["factual"][n], gf[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(multi["alternative"][n], ga[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(multi["diff"][n], diff[n], atol=1e-7, rtol=0)


def test_unselected_parameters_get_no_gradient_and_flags_restored(tiny_llama):
    texts, f, a = _rows(tiny_llama)
    before = {n: p.requires_grad for n, p in tiny_llama.model.named_parameters()}
    eng = GradientEngine(tiny_llama, ["*.layers.1.mlp.*"])
    seen = []
    hooks = [p.register_hook(lambda g, n=n: seen.append(n)) for n, p in tiny_llama.model.named_parameters()]
    try:
        grads = eng.gradients(texts, f, a, "diff")
    finally:
        for h in hooks:
            h.remove()
    assert set(grads) == set(eng.names) and all(".layers.1.mlp." in n for n in eng.names)
    assert set(seen) == set(eng.names), "autograd computed gradients for unselected parameters"
    assert all(p.grad is None for p in tiny_llama.model.parameters())
    assert {n: p.requires_grad for n, p in tiny_llama.model.named_parameters()} == before
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_batch_gradient_is_mean_of_row_gradients(tiny_gpt2):
    texts, f, a = _rows(tiny_gpt2)
    eng = GradientEngine(tiny_gpt2, ["*.h.0.*"])
    batch = eng.gradients(texts, f, a, "factual")
    rows = list(eng.per_row_gradients(texts, f, a, ["factual"]))
    for n in eng.names:
        mean = torch.stack([r["factual"][n] for r in rows]).mean(0)
        torch.testing.assert_close(batch[n], mean, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("source", ["diff", "factual", "alternative"])
def test_jvp_equals_explicit_dot_product(tiny_lm, source):
    texts, f, a = _rows(tiny_lm)
    eng = GradientEngine(tiny_lm)
    gen = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(p.shape, generator=gen) for n, p in eng.params.items()}
    dots = eng.jvp_dot(texts, f, a, direction, source)
    for i in range(len(texts)):
        g = eng.gradients([texts[i]], f[i : i + 1], a[i : i + 1], source)
        explicit = sum(float((direction[n].double() * g[n].double()).sum()) for n in eng.names)
        assert float(dots[i]) == pytest.approx(explicit, rel=1e-4, abs=1e-4)
    assert all(p.grad is None for p in tiny_lm.model.parameters())


def test_jvp_with_partial_direction_and_bad_names(tiny_llama):
    texts, f, a = _rows(tiny_llama)
    eng = GradientEngine(tiny_llama)
    first = eng.names[0]
    v = torch.ones_like(eng.params[first])
    dots = eng.jvp_dot(texts[:1], f[:1], a[:1], {first: v})
    g = eng.gradients(texts[:1], f[:1], a[:1], "diff")[first]
    assert float(dots[0]) == pytest.approx(float(g.sum()), rel=1e-4, abs=1e-5)
    with pytest.raises(KeyError, match="unselected"):
        eng.jvp_dot(texts[:1], f[:1], a[:1], {"model.embed_tokens.weight": torch.zeros(1)})


def test_bad_source_and_bad_params(tiny_llama):
    texts, f, a = _rows(tiny_llama)
    with pytest.raises(ValueError, match="source must be one of"):
        GradientEngine(tiny_llama).gradients(texts, f, a, "nope")
    with pytest.raises(KeyError, match="not parameters"):
        GradientEngine(tiny_llama, {"no.such.param": None})


def test_mlm_text_needs_mask(tiny_bert):
    eng = GradientEngine(tiny_bert)
    ids = torch.tensor([tiny_bert.token_id("he")])
    with pytest.raises(ValueError, match="exactly one"):
        eng.gradients(["no mask here"], ids, ids)


def test_model_weights_untouched(tiny_gpt2):
    texts, f, a = _rows(tiny_gpt2)
    before = {n: p.detach().clone() for n, p in tiny_gpt2.model.named_parameters()}
    eng = GradientEngine(tiny_gpt2)
    eng.gradients(texts, f, a)
    eng.jvp_dot(texts, f, a, {n: torch.ones_like(p) for n, p in eng.params.items()})
    for n, p in tiny_gpt2.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert isinstance(ge.LanguageModel, type)


def test_gradient_vectors_equal_gathered_gradients(tiny_lm):
    from gradedit.models.param_map import ParamMap

    texts, f, a = _rows(tiny_lm)
    eng = GradientEngine(tiny_lm)
    full = ParamMap.from_params(eng.params)
    g = torch.Generator().manual_seed(0)
    pm = full.select(torch.randperm(full.size, generator=g)[: full.size // 7].sort().values)
    dense = eng.multi_gradients(texts, f, a, ["factual", "diff"])
    vecs = eng.gradient_vectors(texts, f, a, ["factual", "diff"], pm)
    for src in ("factual", "diff"):
        torch.testing.assert_close(vecs[src], pm.gather(dense[src]), atol=1e-7, rtol=0)
    assert all(p.grad is None for p in tiny_lm.model.parameters())


def test_each_gradient_visits_every_selected_parameter_once(tiny_gpt2):
    texts, f, a = _rows(tiny_gpt2)
    eng = GradientEngine(tiny_gpt2, ["*.h.1.*"])
    seen = {}
    eng.each_gradient(texts, f, a, "diff", lambda n, g: seen.__setitem__(n, g.clone()))
    dense = eng.gradients(texts, f, a, "diff")
    assert set(seen) == set(dense)
    for n in dense:
        torch.testing.assert_close(seen[n], dense[n], atol=1e-7, rtol=0)
    assert all(p.grad is None for p in tiny_gpt2.model.parameters())
