"""LoRA baseline: the merged edit IS the hooked adapter, base weights untouched, objective direction,
KL penalty, top-k KL estimate, target-token cap, config and module-pattern errors, save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit import metrics
from gradedit.edits import EditError, WeightEdit
from gradedit.edits.lora.data import TopKDist, full_kl
from gradedit.edits.lora.train import (
    LoraConfig,
    LoraResult,
    TargetData,
    attach_lora,
    lora_modules,
    train_lora,
)

TEXTS = ["He said that she would be late.", "The nurse thinks the city is quiet and the house is old."]
OTHER = ["Le chat noir dort sur la chaise.", "The teacher knows it."]
FAST = {"steps": 20, "lr": 3e-2, "batch_size": 8}


def _train(lm: ge.LanguageModel, data: TargetData | list[str] = TEXTS, **kw: object) -> LoraResult:
    remove = bool(kw.pop("remove", True))
    other = kw.pop("other_texts", OTHER)
    cfg = LoraConfig.from_dict({**FAST, **kw})
    return train_lora(lm, data, cfg, remove=remove, other_texts=other, progress=False)  # type: ignore[arg-type]


@torch.no_grad()
def _logits(lm: ge.LanguageModel, texts: list[str]) -> torch.Tensor:
    enc = lm.tokenize(texts)
    return lm.forward_logits(enc["input_ids"], enc["attention_mask"])[enc["attention_mask"].bool()]


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def clm(request: pytest.FixtureRequest) -> ge.LanguageModel:
    return request.getfixturevalue(request.param)


def test_merged_edit_equals_hooked_model(clm: ge.LanguageModel, tmp_path: Path) -> None:
    res = _train(clm, rank=2, alpha=3.0, steps=8, remove=False)
    assert res.config.scale == 1.5 and res.edit.terms[0].scale == 1.5
    with attach_lora(clm.model, res.adapters, res.config.scale):
        hooked = _logits(clm, TEXTS + OTHER)
    base = _logits(clm, TEXTS + OTHER)
    with res.edit.applied(clm.model):
        merged = _logits(clm, TEXTS + OTHER)
    assert (hooked - base).abs().max() > 1e-2  # the adapters really changed the model
    torch.testing.assert_close(merged, hooked, atol=1e-5, rtol=0)
    # factors follow the weight as stored (Conv1D: [in, out]) and export exactly as a peft adapter
    named = dict(clm.model.named_parameters())
    for term in res.edit.terms:
        assert tuple(term.shape_of(term.param)) == tuple(named[term.param].shape)
    export = res.edit.export_lora(tmp_path / "peft", clm.model)
    assert set(export.ranks.values()) == {2} and export.max_rel_error == 0.0


def test_base_weights_flags_and_global_rng_untouched(clm: ge.LanguageModel) -> None:
    before = {n: p.detach().clone() for n, p in clm.model.named_parameters()}
    flags = {n: p.requires_grad for n, p in clm.model.named_parameters()}
    rng = torch.get_rng_state()
    res = _train(clm, steps=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, before[n]) for n, p in clm.model.named_parameters())
    assert {n: p.requires_grad for n, p in clm.model.named_parameters()} == flags
    assert all(p.grad is None for p in clm.model.parameters())
    assert not clm.model.training
    clm.model.train()
    try:
        again = _train(clm, steps=5)  # same seed: same factors (dropout is off while training)
        assert clm.model.training  # mode restored
    finally:
        clm.model.eval()
    for name, (B, A) in res.adapters.items():
        assert torch.equal(B, again.adapters[name][0]) and torch.equal(A, again.adapters[name][1])


@pytest.mark.parametrize("remove", [True, False])
def test_target_ce_moves_in_the_asked_direction(clm: ge.LanguageModel, remove: bool) -> None:
    base = metrics.cross_entropy(clm, TEXTS)
    res = _train(clm, remove=remove, lr=5e-2)
    with res.edit.applied(clm.model):
        edited = metrics.cross_entropy(clm, TEXTS)
    if remove:
        assert edited > base + 0.2
    else:
        assert edited < base - 0.2
    assert res.n_target_tokens == sum(len(clm.tokenizer(t)["input_ids"]) - 1 for t in TEXTS)


def test_history_recorded_and_loss_goes_down(tiny_llama: ge.LanguageModel) -> None:
    for remove in (True, False):
        res = _train(tiny_llama, remove=remove, steps=15)
        h = res.history
        assert [r["step"] for r in h] == list(range(15))
        assert {"loss", "target_loss", "target_ce", "kl", "n_target", "n_kl"} <= set(h[0])
        assert h[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # B starts at zero: the edit starts as the identity
        assert h[-1]["loss"] < h[0]["loss"]
        assert h[-1]["target_ce"] > h[0]["target_ce"] if remove else h[-1]["target_ce"] < h[0]["target_ce"]


def test_kl_weight_keeps_other_text_close(clm: ge.LanguageModel) -> None:
    ref = metrics.full_logprobs(clm, OTHER)
    kls = {}
    for w in (0.0, 100.0):
        res = _train(clm, remove=False, kl_weight=w, seed=3)
        with res.edit.applied(clm.model):
            kls[w] = metrics.kl_divergence(ref, clm, OTHER).mean()
        if w == 0.0:
            assert all(r["kl"] != r["kl"] for r in res.history)  # nan: not computed
    assert kls[0.0] > 1e-3
    assert kls[100.0] < 0.2 * kls[0.0]


def test_topk_kl_estimate(tiny_llama: ge.LanguageModel) -> None:
    # peaked distributions (as a trained LM's): the top-32 of 1000 hold most of the mass
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, 1000, generator=g) * 4.0
    edit = base + 0.3 * torch.randn(50, 1000, generator=g)
    full, est = full_kl(base, edit), TopKDist.from_logits(base, 32).kl_to(edit)
    assert float(TopKDist.from_logits(base, 32).log_rest.exp().mean()) < 0.1
    assert abs(float(est.mean()) - float(full.mean())) < 0.1 * float(full.mean())
    assert bool((est <= full + 1e-6).all())  # a coarsened KL never exceeds the full one
    # k = V is exact, on a real (tiny) model and a trained edit
    res = _train(tiny_llama, remove=False, steps=10)
    b = _logits(tiny_llama, OTHER)
    with res.edit.applied(tiny_llama.model):
        e = _logits(tiny_llama, OTHER)
    torch.testing.assert_close(TopKDist.from_logits(b, tiny_llama.vocab_size).kl_to(e), full_kl(b, e),
                               atol=1e-6, rtol=1e-4)
    # training on top-k = V references follows the on-the-fly full-KL trajectory
    exact = _train(tiny_llama, remove=False, steps=10, kl_topk=tiny_llama.vocab_size)
    assert [r["kl"] for r in exact.history] == pytest.approx([r["kl"] for r in res.history], rel=1e-3, abs=1e-7)


def test_max_target_tokens_honoured(tiny_llama: ge.LanguageModel) -> None:
    first = tiny_llama.tokenizer(TEXTS[0])["input_ids"]
    n0 = len(first) - 1
    res = _train(tiny_llama, max_target_tokens=n0 + 3, steps=3)
    assert res.n_target_tokens == n0 + 3 == len(res.target_tokens)
    assert all(r["n_target"] == n0 + 3 for r in res.history)
    assert [(t.text_index, t.position) for t in res.target_tokens[:n0]] == [(0, p) for p in range(1, n0 + 1)]
    assert [t.token_id for t in res.target_tokens[:n0]] == first[1:]
    assert [(t.text_index, t.position) for t in res.target_tokens[n0:]] == [(1, 1), (1, 2), (1, 3)]
    assert res.edit.metadata["n_target_tokens"] == n0 + 3


def test_target_words(tiny_llama: ge.LanguageModel) -> None:
    the = tiny_llama.token_id(" the")
    n_the = sum(tiny_llama.tokenizer(t)["input_ids"][1:].count(the) for t in TEXTS)
    assert n_the >= 2
    res = _train(tiny_llama, TargetData(TEXTS, target_words=[" the"]), steps=3)
    assert res.n_target_tokens == n_the and {t.token_id for t in res.target_tokens} == {the}
    capped = _train(tiny_llama, TargetData(TEXTS, target_words=[" the"]), steps=3, max_target_tokens=1)
    assert capped.n_target_tokens == 1
    with pytest.raises(EditError, match="single tokens"):
        _train(tiny_llama, TargetData(TEXTS, target_words=["zebrafish"]), steps=1)
    with pytest.raises(EditError, match="none of the target words"):
        _train(tiny_llama, TargetData(["Rain fell."], target_words=[" she"]), steps=1)


def test_config_errors() -> None:
    cfg = LoraConfig(rank=4, modules=["*.mlp.up_proj"], kl_topk=8)
    assert LoraConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(EditError, match="did you mean 'rank'"):
        LoraConfig.from_dict({"rnak": 2})
    with pytest.raises(EditError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(EditError, match="glob patterns"):
        LoraConfig(modules="*.mlp.*")  # type: ignore[arg-type]
    with pytest.raises(EditError, match="lr"):
        LoraConfig(lr=-1.0)


def test_bad_module_pattern_names_close_matches(tiny_llama: ge.LanguageModel, tiny_bert: ge.LanguageModel) -> None:
    with pytest.raises(EditError, match=r"close matches: model\.layers\.0\.mlp\.gate_proj"):
        _train(tiny_llama, modules=["model.layers.0.mlp.gate_prj"], steps=1)
    with pytest.raises(EditError, match="cannot carry an adapter"):
        lora_modules(tiny_llama.model, ["*.act_fn"])
    assert list(lora_modules(tiny_llama.model, ["*.mlp.*"])) == [
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    assert "lm_head" in lora_modules(tiny_llama.model, ["*"])  # untied: the head is an ordinary Linear
    with pytest.raises(EditError, match="causal LMs"):
        train_lora(tiny_bert, TEXTS, LoraConfig(steps=1), progress=False)


def _tied_llama(tiny_llama: ge.LanguageModel) -> ge.LanguageModel:
    """tiny-llama's architecture with the output head tied to the input embedding (one shared weight)."""
    from transformers import LlamaForCausalLM

    cfg = tiny_llama.model.config.__class__.from_dict({**tiny_llama.model.config.to_dict(), "tie_word_embeddings": True})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return ge.LanguageModel(model=model, tokenizer=tiny_llama.tokenizer, kind="clm", name="tiny-llama-tied")


def test_tied_output_head_gets_no_adapter(tiny_llama: ge.LanguageModel) -> None:
    """An adapter on a tied head would also move the input embedding; ``lora_modules`` leaves it out."""
    tied = _tied_llama(tiny_llama)
    assert "lm_head" not in lora_modules(tied.model, ["*"])
    assert "model.layers.0.mlp.up_proj" in lora_modules(tied.model, ["*"])
    with pytest.raises(EditError, match="cannot carry an adapter"):
        lora_modules(tied.model, ["lm_head"])
    res = _train(tied, modules=["*"], steps=2)
    assert not any(t.param.startswith(("lm_head", "model.embed_tokens")) for t in res.edit.terms)


def test_target_tokens_used_counts_what_the_model_read(tiny_llama: ge.LanguageModel) -> None:
    """``target_tokens_used`` equals the target-text tokens the input embedding looked up (hook count)."""
    special = set(tiny_llama.tokenizer.all_special_ids) - {tiny_llama.tokenizer.unk_token_id}
    targets = [tiny_llama.tokenizer(t)["input_ids"] for t in TEXTS]
    longest = [0] * len(TEXTS)

    def look(_m, a) -> None:  # type: ignore[no-untyped-def]
        for row in a[0].tolist():
            while row and row[-1] == tiny_llama.tokenizer.pad_token_id:
                row = row[:-1]
            for ti, t in enumerate(targets):
                if row and t[: len(row)] == row:
                    longest[ti] = max(longest[ti], sum(i not in special for i in row))
    for cap, kw in ((5, {}), (None, {"kl_topk": 8})):
        longest[:] = [0] * len(TEXTS)
        hook = tiny_llama.model.get_input_embeddings().register_forward_pre_hook(look)
        try:
            res = _train(tiny_llama, steps=2, max_target_tokens=cap, **kw)
        finally:
            hook.remove()
        assert res.edit.metadata["target_tokens_used"] == {"fit": sum(longest), "total": sum(longest)}
        assert sum(longest) == (5 if cap else sum(len(t) - 1 for t in targets))


def test_save(tiny_gpt2: ge.LanguageModel, tmp_path: Path) -> None:
    res = _train(tiny_gpt2, steps=3, max_target_tokens=4)
    out = res.save(tmp_path / "run")
    loaded = WeightEdit.load(out)
    for name in res.edit.param_names:
        torch.testing.assert_close(loaded.delta(name), res.edit.delta(name), atol=0, rtol=0)
    assert json.loads((out / "history.json").read_text()) == res.history
    info = json.loads((out / "lora_config.json").read_text())
    assert LoraConfig.from_dict(info["config"]) == res.config and len(info["target_tokens"]) == 4
    no_kl = _train(tiny_gpt2, steps=2, kl_weight=0.0)  # nan KL is written as null (strict JSON)
    no_kl.save(out)  # into an existing folder: files replaced
    assert [r["kl"] for r in json.loads((out / "history.json").read_text())] == [None, None]
    assert sorted(p.name for p in out.iterdir()) == ["edit.json", "edit.safetensors", "history.json",
                                                     "lora_config.json"]
