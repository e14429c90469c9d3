"""The causal-LM MLM head on tiny-llama: pooling length chosen by validation loss and better than the
no-context baseline, gradients through the head only into the selected base-model parameters
(finite differences and forward-mode AD as oracles), evidence after [MASK] reaching the gradients,
save/load as safetensors + JSON, and a GRADIEND run trained through the head."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from gradedit.data.schema import PairDataset
from gradedit.errors import ArtifactError, ConfigError, DataError
from gradedit.gradiend.gradients import GradientEngine
from gradedit.gradiend.mlm_head import MLMHead, placeholder_of, train_mlm_head
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer

SUBJECTS = ["The doctor", "My friend", "The teacher", "The nurse", "Our boss", "The child", "A guest", "The cook",
            "The pilot", "Her aunt"]
VERBS = ["said that", "thinks that", "knows that", "wrote that", "believes that", "heard that"]
#: the word after [MASK] decides the class; the words before it never do (every context has both)
AFTER = {"masc": "his", "fem": "her"}
TOKENS = {"masc": " he", "fem": " she"}


def after_mask_data() -> PairDataset:
    recs = []
    for s, v in itertools.product(SUBJECTS, VERBS):
        for fc, ac in (("masc", "fem"), ("fem", "masc")):
            recs.append({"text": f"{s} {v} [MASK] lost {AFTER[fc]} keys.", "factual": TOKENS[fc],
                         "alternative": TOKENS[ac], "factual_class": fc, "alternative_class": ac})
    return PairDataset.from_records(recs, target_classes=["masc", "fem"])


@pytest.fixture(scope="module")
def fitted(tiny_llama):
    return train_mlm_head(tiny_llama, after_mask_data(), pooling_lengths=(1, 2, 3, 4), steps=200)


def test_head_beats_no_context_baseline_and_picks_a_length_past_the_mask(fitted, tiny_llama) -> None:
    head, fit = fitted
    assert head.placeholder == "</s>" == placeholder_of(tiny_llama)  # the eos token: tiny-llama has no mask token
    assert set(fit.val_loss) == {1, 2, 3, 4} and fit.pooling_length == min(fit.val_loss, key=fit.val_loss.get)
    # L = 1 reads the placeholder's state, which has seen only the (uninformative) left context
    assert fit.val_loss[1] > 0.8 * fit.baseline_loss
    # the chosen length pools a state after [MASK], which has read "his"/"her": far below the prior
    assert fit.pooling_length >= 2
    assert fit.val_loss[fit.pooling_length] < 0.5 * fit.baseline_loss, fit
    assert head.info["base_model"] == "tiny-llama" and head.tokens == [" he", " she"]


def test_training_a_head_needs_a_causal_lm(tiny_bert) -> None:
    with pytest.raises(ConfigError, match="causal LMs"):
        train_mlm_head(tiny_bert, after_mask_data())
    with pytest.raises(ConfigError, match="causal LMs"):
        Trainer(tiny_bert, after_mask_data(), ["masc", "fem"], config=TrainConfig(mlm_head=True))


def test_head_runs_refuse_the_gradient_store(tiny_llama) -> None:
    with pytest.raises(ConfigError, match="gradient_store='off'"):
        Trainer(tiny_llama, after_mask_data(), ["masc", "fem"], config=TrainConfig(mlm_head=True, gradient_store="fp32"))


def _texts_ids(head: MLMHead, lm, n: int = 4):
    ds = after_mask_data().head(n)
    f = torch.tensor(lm.token_ids(ds.to_frame()["factual"].tolist()))
    a = torch.tensor(lm.token_ids(ds.to_frame()["alternative"].tolist()))
    return head.texts(ds), f, a


def test_gradients_reach_only_the_selected_parameters(fitted, tiny_llama) -> None:
    head, _ = fitted
    lm = tiny_llama
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    engine = GradientEngine(lm, ["model.layers.0.mlp.*", "model.layers.1.self_attn.v_proj.weight"], head=head)
    texts, f, a = _texts_ids(head, lm)
    grads = engine.multi_gradients(texts, f, a, ["diff", "factual"])
    assert set(grads["diff"]) == set(engine.names) and all(g.abs().sum() > 0 for g in grads["diff"].values())
    # nothing else received a gradient: no base-model .grad, the head frozen and unchanged
    assert all(p.grad is None for p in lm.model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in head.parameters())
    assert all(torch.equal(p, before[n]) for n, p in head.named_parameters())
    # oracle 1: central finite difference of the head's mean diff loss along a random direction
    gen = torch.Generator().manual_seed(0)
    v = {n: torch.randn(p.shape, generator=gen) for n, p in engine.params.items()}
    named = dict(lm.model.named_parameters())

    def loss(eps: float) -> float:
        with torch.no_grad():
            for n in v:
                named[n].add_(v[n], alpha=eps)
            logits = head.logits(lm, texts).double()
            value = float((logits[:, head.index(a)].diagonal() - logits[:, head.index(f)].diagonal()).mean())
            for n in v:
                named[n].sub_(v[n], alpha=eps)
        return value

    eps = 1e-3
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    dot = sum(float((grads["diff"][n].double() * v[n]).sum()) for n in v)
    assert dot == pytest.approx(fd, rel=2e-2, abs=1e-5)
    # oracle 2: forward-mode AD per row (jvp) equals the reverse-mode gradient's dot product
    rows = engine.jvp_dot(texts, f, a, v, "diff")
    per_row = [engine.gradients([t], f[i:i + 1], a[i:i + 1], "diff") for i, t in enumerate(texts)]
    expect = torch.tensor([sum(float((g[n] * v[n]).sum()) for n in v) for g in per_row])
    torch.testing.assert_close(rows.double(), expect.double(), rtol=1e-3, atol=1e-5)


def test_the_words_after_the_mask_reach_the_gradient_only_through_the_head(fitted, tiny_llama) -> None:
    head, _ = fitted
    lm = tiny_llama
    f, a = torch.tensor([lm.token_id(" he")]), torch.tensor([lm.token_id(" she")])
    his, her = "The doctor said that [MASK] lost his keys.", "The doctor said that [MASK] lost her keys."
    plain = GradientEngine(lm, ["model.layers.1.mlp.down_proj.weight"])
    clm = [t.split("[MASK]")[0].rstrip() for t in (his, her)]  # the causal LM reads up to [MASK]: the same prompt
    g_plain = [plain.gradients([t], f, a)["model.layers.1.mlp.down_proj.weight"] for t in clm]
    assert torch.equal(g_plain[0], g_plain[1])
    headed = GradientEngine(lm, ["model.layers.1.mlp.down_proj.weight"], head=head)
    full = [t.replace("[MASK]", head.placeholder) for t in (his, her)]
    g_head = [headed.gradients([t], f, a)["model.layers.1.mlp.down_proj.weight"] for t in full]
    assert not torch.allclose(g_head[0], g_head[1], atol=1e-6)
    with pytest.raises(DataError, match="placeholder"):
        headed.gradients(clm[:1], f, a)
    with pytest.raises(DataError, match="not one of the head's targets"):
        headed.gradients(full[:1], torch.tensor([lm.token_id(" they")]), a)


def test_save_and_load_round_trip_without_pickles(fitted, tiny_llama, tmp_path) -> None:
    head, _ = fitted
    head.save_pretrained(tmp_path / "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["mlm_head.json", "mlm_head.safetensors"]
    again = MLMHead.from_pretrained(tmp_path / "h", tiny_llama)
    assert again.pooling_length == head.pooling_length and again.tokens == head.tokens
    texts, _, _ = _texts_ids(head, tiny_llama)
    with torch.no_grad():
        assert torch.equal(again.logits(tiny_llama, texts), head.logits(tiny_llama, texts))
    (tmp_path / "h" / "mlm_head.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError, match="unreadable"):
        MLMHead.from_pretrained(tmp_path / "h")
    head.save_pretrained(tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "mlm_head.json").read_text())
    cfg["info"]["base_model"] = "other-model"
    (tmp_path / "g" / "mlm_head.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="not tiny-llama"):
        MLMHead.from_pretrained(tmp_path / "g", tiny_llama)


def test_gradiend_trains_through_the_head(tiny_llama, tmp_path) -> None:
    cfg = TrainConfig(experiment_dir=str(tmp_path / "run"), max_steps=20, eval_steps=10, pre_prune_topk=400,
                      pre_prune_samples=8, eval_max_size=16, post_prune_topk=None, mlm_head=True,
                      mlm_head_pooling=[1, 3])
    tr = Trainer(tiny_llama, after_mask_data(), ["masc", "fem"], config=cfg)
    fm = tr.train()
    assert (tmp_path / "run" / "mlm_head" / "mlm_head.json").is_file()
    assert fm.metadata["mlm_head"]["pooling_length"] in (1, 3)
    summary = tr.encoder_summary("test")
    assert summary["mlm_head"] and summary["n"] > 0 and summary["correlation"] > 0.5
    with pytest.raises(ConfigError, match="encoder_summary"):
        tr.evaluate_encoder()
    mwg = ModelWithGradiend.from_pretrained(tmp_path / "run", lm=tiny_llama)  # finds the head beside model/
    assert mwg.mlm_head is not None and mwg.mlm_head.pooling_length == fm.metadata["mlm_head"]["pooling_length"]
    with pytest.raises(ValueError, match="MLM head"):
        ModelWithGradiend(tiny_llama, fm)
    # a second trainer on the finished run reuses the saved head (no refit: same weights)
    again = Trainer(tiny_llama, after_mask_data(), ["masc", "fem"], config=cfg).get_model()
    assert again.mlm_head is not None
    assert torch.equal(again.mlm_head.proj.weight, mwg.mlm_head.proj.weight)
