"""Rank-1 SVD components, activations, selectivity, write-vector edits and scalar tuning (tiny models)."""

from __future__ import annotations

import re

import pytest
import torch

import gradedit as ge
from gradedit.edits import EditError
from gradedit.edits.components.activations import component_activations, selectivity, top_selective
from gradedit.edits.components.scalar import default_modules, tune_scalar
from gradedit.edits.components.svd import ComponentSet, linear_modules, svd_components
from gradedit.edits.components.write_vector import (
    replace_write_vector,
    suppress_token,
    train_write_vector,
    unembedding_direction,
)
from gradedit.metrics import token_logprobs

GATE = "model.layers.1.mlp.gate_proj"      # Linear [128, 64]
C_FC = "transformer.h.0.mlp.c_fc"          # Conv1D stored [64, 256] = [in, out]
DE = ["Der Mann ist hier und die Frau ist dort.", "Ich habe das Buch gelesen.",
      "Die Kinder spielen im Garten.", "Wir gehen morgen in die Stadt."]
EN = ["The man is here and the woman is there.", "I have read the book.", "The children play outside."]
FR = ["Le chat noir dort sur la chaise.", "Nous allons en ville demain."]


def _lm(request: pytest.FixtureRequest, which: str) -> ge.LanguageModel:
    return request.getfixturevalue("tiny_llama" if which == "llama" else "tiny_gpt2")


MODULE = {"llama": GATE, "gpt2": C_FC}


def _logical(lm: ge.LanguageModel, name: str) -> torch.Tensor:
    """The weight as ``[out, in]`` (GPT-2 ``Conv1D`` stores its transpose)."""
    mod = dict(lm.model.named_modules())[name]
    w = mod.weight.detach()
    return w if isinstance(mod, torch.nn.Linear) else w.T


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_components_reconstruct_weight(request: pytest.FixtureRequest, which: str) -> None:
    lm = _lm(request, which)
    cs = svd_components(lm, MODULE[which])
    W = _logical(lm, MODULE[which])
    assert len(cs) == min(W.shape)
    assert cs[0].U.shape == (W.shape[0],) and cs[0].V.shape == (W.shape[1],)
    torch.testing.assert_close(sum(c.weight() for c in cs), W, atol=1e-4, rtol=0)
    assert all(a.sigma >= b.sigma for a, b in zip(cs, cs[1:]))
    assert len(svd_components(lm, MODULE[which], top=5)) == 5


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_edit_zero_removes_exactly_one_component(request: pytest.FixtureRequest, which: str) -> None:
    lm = _lm(request, which)
    cs = svd_components(lm, MODULE[which])
    before = _logical(lm, MODULE[which]).clone()
    sv = torch.linalg.svdvals(before.double())
    i = 3
    with cs.edit(i, 0.0).applied(lm.model):
        after = _logical(lm, MODULE[which]).clone()
        again = svd_components(lm, MODULE[which])  # cache must see the modified weight
    want = sv.clone()
    want[i] = 0.0
    got = torch.linalg.svdvals(after.double())
    torch.testing.assert_close(got, want.sort(descending=True).values, atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before - cs[i].weight(), atol=1e-6, rtol=0)
    assert min(c.sigma for c in again) < 1e-5
    assert torch.equal(_logical(lm, MODULE[which]), before)  # restored


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_edit_one_is_identity_and_s_scales_sigma(request: pytest.FixtureRequest, which: str) -> None:
    lm = _lm(request, which)
    cs = svd_components(lm, MODULE[which])
    before = _logical(lm, MODULE[which]).clone()
    with cs.edit(2, 1.0).applied(lm.model):
        assert torch.equal(_logical(lm, MODULE[which]), before)
    c = cs[2]
    with cs.edit(2, -2.0).applied(lm.model):
        W = _logical(lm, MODULE[which])
        torch.testing.assert_close(W @ c.V, -2.0 * c.sigma * c.U, atol=1e-5, rtol=0)
    two = cs.edit(torch.tensor([0, 2]), (0.5, 0.0))
    assert [d["s"] for d in two.metadata["components"]] == [0.5, 0.0]
    with pytest.raises(EditError, match="one scale per index"):
        cs.edit([0, 1], [1.0])


def test_module_patterns_and_errors(tiny_llama: ge.LanguageModel, tiny_gpt2: ge.LanguageModel) -> None:
    assert list(linear_modules(tiny_llama, "model.layers.*.mlp.*")) == [
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    assert list(linear_modules(tiny_llama, re.compile(r"model\.layers\.0\.mlp\.(gate|up)_proj"))) == [
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    with pytest.raises(EditError, match="matches no module.*linear modules look like"):
        svd_components(tiny_llama, "model.layers.*.mlp.gate")
    with pytest.raises(EditError, match="not a linear layer"):
        svd_components(tiny_llama, "model.layers.0.mlp")
    with pytest.raises(EditError, match="top must be"):
        svd_components(tiny_llama, GATE, top=0)
    assert default_modules(tiny_gpt2) == ("*.mlp.c_fc",)
    assert isinstance(svd_components(tiny_gpt2, default_modules(tiny_gpt2)), ComponentSet)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_activations_equal_manual_projection(request: pytest.FixtureRequest, which: str) -> None:
    lm = _lm(request, which)
    name = MODULE[which]
    cs = svd_components(lm, name)[[0, 5, 17]]
    texts = DE[:3]  # different lengths: padding must not leak into the statistics
    acts = component_activations(lm, cs, texts, per_token=True, batch_size=3)
    module = dict(lm.model.named_modules())[name]
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    try:
        for ti, text in enumerate(texts):  # one unpadded text at a time
            enc = lm.tokenize([text])
            seen.clear()
            with torch.no_grad():
                lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            keep = ~enc["special_tokens_mask"][0].bool()
            x = seen[0][0][keep]  # [n_i, in]
            V = torch.stack([c.V for c in cs])
            want = x @ V.T
            assert acts.per_token is not None and acts.positions is not None
            torch.testing.assert_close(acts.per_token[ti], want, atol=1e-5, rtol=1e-5)
            assert acts.positions[ti].tolist() == keep.nonzero().squeeze(-1).tolist()
            torch.testing.assert_close(acts.mean_abs[ti].float(), want.abs().mean(0), atol=1e-5, rtol=1e-5)
            assert int(acts.n_tokens[ti]) == x.shape[0]
    finally:
        handle.remove()


def _planted(seed_dim: int = 7) -> tuple[ge.LanguageModel, int]:
    """A fresh tiny Llama whose layer-0 q_proj has a component that reads an embedding dimension used
    only by tokens of the German texts; returns the model and that dimension."""
    lm = ge.load_model("tiny-llama")
    ids = lambda ts: {i for t in ts for i in lm.tokenizer(t)["input_ids"]}  # noqa: E731
    german_only = sorted(ids(DE) - ids(EN) - ids(FR) - set(lm.tokenizer.all_special_ids))
    assert len(german_only) >= 5
    k = seed_dim
    with torch.no_grad():
        emb = lm.model.get_input_embeddings().weight
        emb[:, k] = 0.0
        emb[german_only, k] = 0.5
        q = lm.model.model.layers[0].self_attn.q_proj.weight  # [64, 64]
        v = torch.zeros(q.shape[1])
        v[k] = 1.0
        A = q - torch.outer(q @ v, v)
        u = torch.linalg.svd(A)[0][:, -1]  # orthogonal to A's column space: v becomes a singular vector
        q.copy_(A + 1.5 * torch.linalg.svdvals(q)[0] * torch.outer(u, v))
    return lm, k


@pytest.mark.parametrize("score", ["d", "z", "ratio", "impact"])
def test_selectivity_ranks_planted_component_first(score: str) -> None:
    lm, k = _planted()
    # every competitor reads the same input (the normalised embeddings), so only the planted
    # component can be exactly silent off-target
    attn = [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    cs = svd_components(lm, attn)
    planted = [i for i, c in enumerate(cs) if abs(float(c.V[k])) > 0.999]
    assert len(planted) == 1 and cs[planted[0]].module_name == attn[0]
    sel = selectivity(lm, cs, DE, {"en": EN, "fr": FR}, score=score)
    assert int(sel.order()[0]) == planted[0] and sel.kind == score
    assert sel.rows(1)[0]["index"] == cs[planted[0]].index
    assert float(sel.other_mean["en"][planted[0]]) < 1e-6  # exactly silent off-target
    assert float(sel.target_mean[planted[0]]) > 1.0
    assert top_selective(lm, cs, DE, EN, k=2, score=score)[0] is cs[planted[0]]
    assert list(sel.to_frame(3)["position"])[0] == planted[0]


def test_selectivity_scores_agree_in_sign(tiny_llama: ge.LanguageModel) -> None:
    cs = svd_components(tiny_llama, GATE)
    for score in ("d", "z", "ratio", "impact"):
        sel = selectivity(tiny_llama, cs, DE, {"en": EN, "fr": FR}, score=score)
        gap = sel.target_mean - torch.stack(list(sel.other_mean.values())).max(0).values
        assert torch.equal(torch.sign(sel.score), torch.sign(gap)), score  # fires less on target: negative
        assert (gap < 0).any() and (gap > 0).any()


def test_selectivity_bad_input(tiny_llama: ge.LanguageModel) -> None:
    cs = svd_components(tiny_llama, GATE, top=4)
    with pytest.raises(EditError, match="score must be"):
        selectivity(tiny_llama, cs, DE, EN, score="auc")
    with pytest.raises(EditError, match="at least one text"):
        selectivity(tiny_llama, cs, DE, {"en": []})
    with pytest.raises(EditError, match="non-empty list"):
        component_activations(tiny_llama, cs, "one string")


def _target_rows_fed(lm: ge.LanguageModel, edit_fn) -> tuple[object, int]:
    """Run ``edit_fn`` recording every row fed to the model; count scored target tokens in them."""
    fed: list[list[int]] = []
    hook = lm.model.get_input_embeddings().register_forward_pre_hook(
        lambda m, a: fed.extend(r.tolist() for r in a[0]))
    try:
        out = edit_fn()
    finally:
        hook.remove()
    pad = lm.tokenizer.pad_token_id
    targets = [lm.tokenizer(t)["input_ids"] for t in DE]
    others = [lm.tokenizer(t)["input_ids"] for t in EN + FR]
    used = set()
    for row in fed:
        while row and row[-1] == pad:
            row = row[:-1]
        if any(o[: len(row)] == row for o in others):
            continue
        if any(t[: len(row)] == row for t in targets):
            used.add(tuple(row))
    return out, sum(len(r) - 1 for r in used)


def _ce_on_used(lm: ge.LanguageModel, records: list[dict]) -> float:
    lps = token_logprobs(lm, DE)
    vals = []
    for r in records:
        pos = lps.positions[r["text"]].tolist().index(r["position"])
        assert int(lps.token_ids[r["text"]][pos]) == r["token_id"]
        vals.append(-float(lps.values[r["text"]][pos]))
    return sum(vals) / len(vals)


@pytest.mark.parametrize("remove", [True, False])
def test_tune_scalar_direction_and_token_budget(remove: bool) -> None:
    lm, _ = _planted()
    cs = svd_components(lm, "model.layers.0.self_attn.q_proj")
    pool = selectivity(lm, cs, DE, {"en": EN}).top(1)
    edit, n_fed = _target_rows_fed(lm, lambda: tune_scalar(lm, DE, {"en": EN, "fr": FR}, components=pool,
                                                          max_target_tokens=7, remove=remove, grid=9,
                                                          golden_iters=4))
    meta = edit.metadata
    assert meta["n_target_tokens"] == 7 == len(meta["target_tokens"])
    assert 0 < n_fed <= 7  # counted in what the model actually saw
    first = lm.tokenizer(DE[0])["input_ids"]
    assert [r["token_id"] for r in meta["target_tokens"]] == first[1:8]  # the first scored tokens, in order
    base = _ce_on_used(lm, meta["target_tokens"])
    with edit.applied(lm.model):
        after = _ce_on_used(lm, meta["target_tokens"])
    assert (after > base + 1e-3) if remove else (after < base - 1e-3)
    assert after == pytest.approx(meta["losses"]["fitted"]["target_ce"], abs=1e-4)  # hooks == weight edit
    assert meta["losses"]["fitted"]["objective"] <= meta["losses"]["base"]["objective"]
    assert -8.0 <= meta["s"][0] <= 8.0 and meta["s"][0] != 1.0


def _target_tokens_by_phase(lm: ge.LanguageModel, monkeypatch: pytest.MonkeyPatch, edit_fn,
                            where: str = "scalar.selectivity") -> tuple[object, dict]:
    """Run ``edit_fn`` counting, per phase (selection = inside ``where``, else fit), the DE tokens
    the input embedding looked up: per text the longest non-special prefix read; ``total`` = union."""
    import importlib

    module, name = where.split(".")
    module = importlib.import_module(f"gradedit.edits.components.{module}")
    phase, real = ["fit"], getattr(module, name)

    def ranked(*a, **k):  # type: ignore[no-untyped-def]
        phase[0] = "selection"
        try:
            return real(*a, **k)
        finally:
            phase[0] = "fit"

    monkeypatch.setattr(module, name, ranked)
    special, pad = set(lm.tokenizer.all_special_ids) - {lm.tokenizer.unk_token_id}, lm.tokenizer.pad_token_id
    targets = [lm.tokenizer(t)["input_ids"] for t in DE]
    seen: dict[str, dict[int, int]] = {"selection": {}, "fit": {}}

    def look(_m, a) -> None:  # type: ignore[no-untyped-def]
        for row in a[0].tolist():
            while row and row[-1] == pad:
                row = row[:-1]
            for ti, t in enumerate(targets):
                if row and t[: len(row)] == row:
                    n = sum(i not in special for i in row)
                    seen[phase[0]][ti] = max(seen[phase[0]].get(ti, 0), n)
    hook = lm.model.get_input_embeddings().register_forward_pre_hook(look)
    try:
        out = edit_fn()
    finally:
        hook.remove()
    union = {ti: max(seen["selection"].get(ti, 0), seen["fit"].get(ti, 0)) for ti in range(len(DE))}
    return out, {"selection": sum(seen["selection"].values()), "fit": sum(seen["fit"].values()),
                 "total": sum(union.values())}


@pytest.mark.parametrize("selection_tokens", [None, 5, 11])
def test_tune_scalar_auto_counts_selection_tokens(tiny_llama: ge.LanguageModel, monkeypatch: pytest.MonkeyPatch,
                                                  selection_tokens: int | None) -> None:
    """components='auto' reads target text to rank components: those tokens count, and obey selection_tokens."""
    kw = {} if selection_tokens is None else {"selection_tokens": selection_tokens}
    edit, seen = _target_tokens_by_phase(tiny_llama, monkeypatch, lambda: tune_scalar(
        tiny_llama, DE, {"en": EN, "fr": FR}, components="auto", max_target_tokens=2, grid=3, golden_iters=0,
        modules=[GATE], **kw))
    meta = edit.metadata
    n_all = sum(len(e) - sum(e) for e in tiny_llama.tokenizer(DE, return_special_tokens_mask=True)["special_tokens_mask"])
    assert seen["fit"] == 2 and seen["selection"] == (n_all if selection_tokens is None else selection_tokens)
    assert meta.get("target_tokens_used") == seen, f"metadata {meta.get('target_tokens_used')} vs measured {seen}"
    assert meta["selection"]["n_tokens"] == seen["selection"]
    assert meta["selection"]["max_tokens"] == selection_tokens
    if selection_tokens is not None:
        assert seen["total"] <= selection_tokens + 2


def test_tune_scalar_auto_several_components_with_leak_constraint(tiny_llama: ge.LanguageModel) -> None:
    edit = tune_scalar(tiny_llama, DE, {"en": EN, "fr": FR}, n_components=2, max_target_tokens=5,
                       selection_texts=DE[2:], steps=4, lr=0.5, max_leak=0.0, s_range=(-3.0, 3.0))
    meta = edit.metadata
    assert len(meta["components"]) == 2 == len(meta["s"]) and len(edit.terms) == 2
    assert all(-3.0 <= s <= 3.0 for s in meta["s"])
    assert meta["selection"]["texts"] == "selection_texts" and meta["fit"]["method"] == "grid+adam"
    assert meta["losses"]["fitted"]["objective"] <= meta["losses"]["base"]["objective"]
    with pytest.raises(EditError, match="pass other_texts"):
        tune_scalar(tiny_llama, DE)
    with pytest.raises(EditError, match="max_target_tokens"):
        tune_scalar(tiny_llama, DE, EN, max_target_tokens=0)


def test_tune_scalar_on_conv1d_hooks_equal_the_weight_edit(tiny_gpt2: ge.LanguageModel) -> None:
    cs = svd_components(tiny_gpt2, C_FC, top=2)
    edit = tune_scalar(tiny_gpt2, DE, EN, components=cs, max_target_tokens=6, steps=3, lr=0.5,
                       s_init=[1.5, 0.5])
    meta = edit.metadata
    assert meta["n_target_tokens"] == 6 and edit.param_names == [C_FC + ".weight"]
    with edit.applied(tiny_gpt2.model):
        after = _ce_on_used(tiny_gpt2, meta["target_tokens"])
    assert after == pytest.approx(meta["losses"]["fitted"]["target_ce"], abs=1e-4)
    assert meta["fit"]["history"][0]["s"] == [1.5, 0.5]
    with pytest.raises(EditError, match="s_init"):
        tune_scalar(tiny_gpt2, DE, EN, components=cs, s_init=[1.0])


def test_replace_write_vector_is_rank_one_on_read_direction(tiny_llama: ge.LanguageModel,
                                                           tiny_gpt2: ge.LanguageModel) -> None:
    for lm, name in ((tiny_llama, "model.layers.1.mlp.down_proj"), (tiny_gpt2, "transformer.h.1.mlp.c_proj")):
        c = svd_components(lm, name)[4]
        W0 = _logical(lm, name).clone()
        new = torch.randn(c.U.shape, generator=torch.Generator().manual_seed(0))
        with replace_write_vector(c, new).applied(lm.model):
            W1 = _logical(lm, name)
            torch.testing.assert_close(W1 @ c.V, new, atol=1e-5, rtol=0)  # now writes new_U
            ortho = torch.linalg.qr(torch.eye(c.V.numel()) - torch.outer(c.V, c.V))[0][:, :3]
            ortho = ortho - torch.outer(c.V, c.V @ ortho)  # strictly orthogonal to the read direction
            torch.testing.assert_close(W1 @ ortho, W0 @ ortho, atol=1e-5, rtol=0)
        assert torch.equal(_logical(lm, name), W0)
    with pytest.raises(EditError, match="shape"):
        replace_write_vector(c, torch.zeros(3))


def test_suppress_token_lowers_that_token_where_the_component_fires(tiny_llama: ge.LanguageModel) -> None:
    lm = tiny_llama
    c = svd_components(lm, "model.layers.1.mlp.down_proj")[0]  # writes into the residual stream
    tid = 57
    u = unembedding_direction(lm, tid)
    assert u.shape == (64,) and float(u.norm()) == pytest.approx(1.0, abs=1e-5)
    edit = suppress_token(lm, c, tid, alpha=20.0 * c.sigma, sign=1.0)
    acts = component_activations(lm, [c], DE, per_token=True)
    enc = lm.tokenize(DE)
    with torch.no_grad():
        base = lm.forward_logits(enc["input_ids"], enc["attention_mask"]).log_softmax(-1)[..., tid]
        with edit.applied(lm.model):
            after = lm.forward_logits(enc["input_ids"], enc["attention_mask"]).log_softmax(-1)[..., tid]
    assert acts.per_token is not None and acts.positions is not None
    a = torch.cat([acts.per_token[i][:, 0] for i in range(len(DE))])
    d = torch.cat([(after - base)[i, acts.positions[i]] for i in range(len(DE))])
    # the new write is -alpha * (V.x) * u: the token drops where V.x > 0 and rises where V.x < 0
    assert float(d[a > 0].mean()) < -0.2 and float(d[a < 0].mean()) > 0.2
    assert float(torch.corrcoef(torch.stack([a, d]))[0, 1]) < -0.8
    with pytest.raises(EditError, match="residual stream"):
        suppress_token(lm, svd_components(lm, GATE)[0], tid, 1.0)


@pytest.mark.parametrize("remove", [False, True])
def test_train_write_vector_lowers_its_loss_and_touches_one_weight(tiny_llama: ge.LanguageModel, remove: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lm = tiny_llama
    c = svd_components(lm, "model.layers.1.mlp.down_proj")[1]
    (edit, hist), seen = _target_tokens_by_phase(lm, monkeypatch, lambda: train_write_vector(
        lm, c, DE, EN, steps=6, lr=0.05, quantile=0.5, remove=remove), where="write_vector.component_activations")
    assert edit.metadata["target_tokens_used"] == seen and seen["selection"] == seen["total"] >= seen["fit"] > 0
    assert len(hist) == 7 and hist[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert hist[-1]["fire_loss"] < hist[0]["fire_loss"]
    assert edit.param_names == ["model.layers.1.mlp.down_proj.weight"]
    assert edit.metadata["n_fire_tokens"] > 0 and edit.metadata["history"] == hist
    with pytest.raises(EditError, match="quantile"):
        train_write_vector(lm, c, DE, EN, quantile=1.0)


def test_train_write_vector_without_kl_positions_records_zero_kl(tiny_llama: ge.LanguageModel) -> None:
    """``max_kl_tokens=0`` leaves no KL position: the KL term is a zero tensor, not the float 0.0
    (which once broke the history with ``AttributeError: 'float' object has no attribute 'detach'``)."""
    lm = tiny_llama
    c = svd_components(lm, "model.layers.1.mlp.down_proj")[1]
    edit, hist = train_write_vector(lm, c, DE, EN, steps=2, lr=0.05, quantile=0.5, max_kl_tokens=0)
    assert edit.metadata["n_kl_tokens"] == 0
    assert len(hist) == 3 and all(h["kl"] == 0.0 for h in hist)
    assert hist[-1]["fire_loss"] < hist[0]["fire_loss"]


def test_tune_scalar_several_components_explore_the_whole_range(tiny_llama: ge.LanguageModel) -> None:
    """s_range=(-8, 1) (the README's removal range): s = 1 is its upper boundary, so a fit that starts
    there and steps by gradient never visits most of the range; every component's scale must be tried
    across it, and the fit must end somewhere better than no edit."""
    lo, hi = -8.0, 1.0
    edit = tune_scalar(tiny_llama, DE, {"en": EN, "fr": FR}, n_components=2, max_target_tokens=6,
                       modules=[GATE], s_range=(lo, hi), steps=3, lr=0.2, scan_grid=5)
    meta = edit.metadata
    tried = [h["s"] for h in meta["fit"]["history"]]
    for k in range(2):
        values = [s[k] for s in tried]
        assert min(values) <= lo + 0.1 * (hi - lo) and max(values) >= hi - 0.1 * (hi - lo), (k, sorted(set(values)))
        assert all(lo <= v <= hi for v in values)
    assert meta["status"] == "fitted"
    assert meta["losses"]["fitted"]["objective"] < meta["losses"]["base"]["objective"]
    assert any(abs(s - 1.0) > 1e-3 for s in meta["s"])


@pytest.mark.parametrize("n_components", [1, 2])
def test_tune_scalar_says_when_it_found_no_edit(tiny_llama: ge.LanguageModel, n_components: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A KL weight so large that any move costs more than it gains: the best scale is s = 1 (no edit);
    the edit says so in its metadata and a warning names why, instead of returning a silent no-op."""
    with caplog.at_level("WARNING", logger="gradedit.edits.components.scalar"):
        edit = tune_scalar(tiny_llama, DE, {"en": EN, "fr": FR}, n_components=n_components, max_target_tokens=4,
                           modules=[GATE], kl_weight=1e9, max_leak=0.0, leak_weight=1e9, s_range=(-8.0, 1.0),
                           steps=2, grid=5, golden_iters=2)
    meta = edit.metadata
    assert meta["status"] == "no-op", meta.get("status")
    assert meta["status_reason"] and all(abs(s - 1.0) <= 1e-3 for s in meta["s"])
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("no-op" in m and meta["status_reason"] in m for m in warned), warned
    fitted = tune_scalar(tiny_llama, DE, {"en": EN, "fr": FR}, n_components=1, max_target_tokens=4, modules=[GATE],
                         grid=5, golden_iters=2)
    assert fitted.metadata["status"] == "fitted" and "status_reason" not in fitted.metadata
