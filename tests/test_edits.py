"""WeightEdit: apply/restore is bit-exact, kinds agree with each other, save/load, LoRA export oracles."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit.edits import EditError, WeightEdit
from gradedit.gradiend.feature_model import ArtifactError

Q = "model.layers.0.self_attn.q_proj"        # [64, 64]
UP = "model.layers.1.mlp.up_proj"            # [128, 64]
DOWN = "model.layers.0.mlp.down_proj"        # [64, 128]
IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed)) * scale


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, saved[n])]
    assert not changed, f"not restored: {changed}"


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


def _pm(lm: ge.LanguageModel) -> ge.ParamMap:
    named = dict(lm.model.named_parameters())
    return ge.ParamMap([Q + ".weight", DOWN + ".weight"], [tuple(named[Q + ".weight"].shape),
                       tuple(named[DOWN + ".weight"].shape)], [torch.tensor([0, 3, 70, 4095]), None])


def _edit(kind: str, lm: ge.LanguageModel) -> WeightEdit:
    if kind == "dense":
        return WeightEdit.dense({UP + ".weight": _randn(128, 64)})
    if kind == "low_rank":
        return WeightEdit.low_rank({UP: (_randn(128, 3, seed=1), _randn(3, 64, seed=2))}, scale=2.0)
    if kind == "rank_one":
        return WeightEdit.rank_one(Q, _randn(64, seed=3), _randn(64, seed=4))
    if kind == "component_scale":
        return WeightEdit.component_scale(DOWN, _randn(64, seed=5), _randn(128, seed=6), s=0.0)
    if kind == "indexed":
        pm = _pm(lm)
        return WeightEdit.indexed(pm, _randn(pm.size, seed=7))
    if kind == "combined":
        return sum((_edit(k, lm) for k in ("dense", "low_rank", "rank_one", "component_scale", "indexed")),
                   WeightEdit())
    raise AssertionError(kind)


KINDS = ["dense", "low_rank", "rank_one", "component_scale", "indexed", "combined"]


@pytest.mark.parametrize("kind", KINDS)
def test_apply_restore_is_bit_exact(tiny_llama: ge.LanguageModel, kind: str) -> None:
    model, saved = tiny_llama.model, _params(tiny_llama.model)
    edit = _edit(kind, tiny_llama)
    with edit.applied(model):
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, saved[n])}
        assert changed == set(edit.param_names)
    _assert_same(model, saved)
    with pytest.raises(KeyError, match="boom"), edit.applied(model):
        raise KeyError("boom")
    _assert_same(model, saved)


def test_scale_zero_and_empty_edit_change_nothing(tiny_llama: ge.LanguageModel) -> None:
    model, saved = tiny_llama.model, _params(tiny_llama.model)
    for edit in (_edit("combined", tiny_llama) * 0.0, WeightEdit(), 0 * _edit("indexed", tiny_llama)):
        with edit.applied(model) as handle:
            _assert_same(model, saved)
            assert handle.snapshot_size == 0
        edit.merge(model)
        _assert_same(model, saved)
    assert WeightEdit().norm() == 0.0


def test_low_rank_equals_dense(tiny_llama: ge.LanguageModel) -> None:
    B, A = _randn(128, 4, seed=1, scale=0.3), _randn(4, 64, seed=2, scale=0.3)
    low = WeightEdit.low_rank({UP: (B, A)}, scale=1.5)
    dense = WeightEdit.dense({UP + ".weight": 1.5 * B @ A})
    torch.testing.assert_close(low.delta(UP), dense.delta(UP + ".weight"))
    with low.applied(tiny_llama.model):
        a = _logits(tiny_llama.model)
    with dense.applied(tiny_llama.model):
        b = _logits(tiny_llama.model)
    base = _logits(tiny_llama.model)
    assert not torch.allclose(a, base)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_component_scale_oracle() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False))
    u, v = torch.randn(4), torch.randn(5)
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 5) * 0.1 + torch.outer(u, v))
    W = model[0].weight.detach().clone()
    with WeightEdit.component_scale("0", u, v, s=1.0).applied(model) as h:
        assert torch.equal(model[0].weight, W) and h.snapshot_size == 0
    with WeightEdit.component_scale("0", u, v, s=0.0).applied(model):
        assert torch.equal(model[0].weight, W - torch.outer(u, v))
    with WeightEdit.component_scale("0", u, v, s=3.0).applied(model):
        torch.testing.assert_close(model[0].weight, W + 2.0 * torch.outer(u, v))
    assert torch.equal(model[0].weight, W)


def test_indexed_equals_dense_scatter_and_snapshots_only_touched_entries(tiny_llama: ge.LanguageModel) -> None:
    model, saved = tiny_llama.model, _params(tiny_llama.model)
    pm = _pm(tiny_llama)
    vec = _randn(pm.size, seed=9)
    indexed = WeightEdit.indexed(pm, vec, scale=0.5)
    dense = WeightEdit.dense(pm.scatter(vec), scale=0.5)
    with indexed.applied(model) as handle:
        assert handle.snapshot_size == pm.size  # 4 entries of q_proj + all of down_proj
        after_indexed = _params(model)
    with dense.applied(model):
        for name in pm.names:
            assert torch.equal(dict(model.named_parameters())[name], after_indexed[name])
    _assert_same(model, saved)
    for name in pm.names:
        torch.testing.assert_close(indexed.delta(name, model), dense.delta(name))


def test_lifo_handles(tiny_llama: ge.LanguageModel) -> None:
    model, saved = tiny_llama.model, _params(tiny_llama.model)
    first, second = _edit("rank_one", tiny_llama), _edit("indexed", tiny_llama)  # both touch q_proj
    h1 = first.apply_(model)
    after_first = _params(model)
    h2 = second.apply_(model)
    with pytest.raises(RuntimeError, match="LIFO"):
        h1.remove()
    assert h1.active
    h2.remove()
    _assert_same(model, after_first)
    h1.remove()
    _assert_same(model, saved)
    h1.remove()  # second remove is a no-op
    h2.remove()
    assert not h1.active and not h2.active


def test_algebra_and_norm(tiny_llama: ge.LanguageModel) -> None:
    edit = _edit("combined", tiny_llama) + WeightEdit.rank_one(UP, _randn(128, seed=11), _randn(64, seed=12))
    names = edit.param_names
    deltas = {n: edit.delta(n) for n in names}
    dense_norm = torch.sqrt(sum(d.double().square().sum() for d in deltas.values()))
    assert edit.norm() == pytest.approx(float(dense_norm), rel=1e-6)
    low = WeightEdit.low_rank({UP: (_randn(128, 3, seed=1), _randn(3, 64, seed=2))})
    assert low.norm() == pytest.approx(float(torch.linalg.norm(low.delta(UP).double())), rel=1e-6)
    torch.testing.assert_close((edit * 2.0).delta(UP), 2.0 * deltas[UP + ".weight"])
    torch.testing.assert_close((-edit).scaled(0.5).delta(Q), -0.5 * deltas[Q + ".weight"])
    assert (edit * 3).norm() == pytest.approx(3 * edit.norm(), rel=1e-6)
    assert torch.equal(edit.delta("model.layers.1.mlp.gate_proj.weight", tiny_llama.model), torch.zeros(128, 64))


def test_validation_errors_touch_nothing(tiny_llama: ge.LanguageModel) -> None:
    model, saved = tiny_llama.model, _params(tiny_llama.model)
    typo = WeightEdit.rank_one(Q, _randn(64), _randn(64)) + WeightEdit.rank_one(
        "model.layers.0.self_attn.q_prj", _randn(64), _randn(64))
    with pytest.raises(EditError, match=r"no parameter 'model\.layers\.0\.self_attn\.q_prj\.weight'.*did you mean"):
        typo.apply_(model)
    wrong = _edit("dense", tiny_llama) + WeightEdit.low_rank({DOWN: (_randn(128, 2), _randn(2, 64))})
    with pytest.raises(EditError, match=r"\(128, 64\).*expected the parameter's shape \(64, 128\).*transposed"):
        wrong.apply_(model)
    _assert_same(model, saved)
    with pytest.raises(EditError, match="same r"):
        WeightEdit.low_rank({UP: (_randn(128, 2), _randn(3, 64))})
    with pytest.raises(EditError, match="1-D"):
        WeightEdit.rank_one(UP, _randn(128, 1), _randn(64))


def test_factors_are_cast_to_the_parameter_dtype() -> None:
    model = torch.nn.Linear(6, 3, bias=False).to(torch.bfloat16)
    W = model.weight.detach().clone()
    edit = WeightEdit.rank_one("weight", torch.ones(3, dtype=torch.float64), torch.ones(6), scale=0.25)
    with edit.applied(model):
        assert model.weight.dtype == torch.bfloat16
        torch.testing.assert_close(model.weight, (W.float() + 0.25).to(torch.bfloat16))
    assert torch.equal(model.weight, W)


def test_save_load_round_trip(tiny_llama: ge.LanguageModel, tmp_path: Path) -> None:
    edit = _edit("combined", tiny_llama) * 0.7
    edit = WeightEdit(edit.terms, {"base_model": "tiny-llama", "method": "test"})
    out = edit.save(tmp_path / "edit")
    doc = json.loads((out / "edit.json").read_text())
    assert doc["kind"] == "mixed" and doc["base_model"] == "tiny-llama" and doc["library_version"] == ge.__version__
    loaded = WeightEdit.load(out)
    assert loaded.param_names == edit.param_names and loaded.metadata == edit.metadata
    assert [type(t) for t in loaded.terms] == [type(t) for t in edit.terms]
    for name in edit.param_names:
        assert torch.equal(loaded.delta(name), edit.delta(name))
    with edit.applied(tiny_llama.model):
        a = _params(tiny_llama.model)
    with loaded.applied(tiny_llama.model):
        _assert_same(tiny_llama.model, a)
    (edit * 2).save(out)  # into an existing folder
    assert WeightEdit.load(out).norm() == pytest.approx(2 * edit.norm(), rel=1e-6)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WeightEdit.load(tmp_path / "nope")
    out = WeightEdit.rank_one("a", torch.ones(3), torch.ones(2)).save(tmp_path / "e")
    data = (out / "edit.safetensors").read_bytes()
    (out / "edit.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        WeightEdit.load(out)
    (out / "edit.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="edit.safetensors is missing"):
        WeightEdit.load(out)
    (out / "edit.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="edit.json is corrupt"):
        WeightEdit.load(out)


def _peft_logits(model: torch.nn.Module, folder: Path) -> torch.Tensor:
    peft = pytest.importorskip("peft")
    wrapped = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(folder))
    return _logits(wrapped)


def test_export_lora_exact_for_low_rank_terms(tiny_llama: ge.LanguageModel, tmp_path: Path) -> None:
    edit = (WeightEdit.rank_one(Q, _randn(64, seed=1, scale=0.5), _randn(64, seed=2, scale=0.5), scale=3.0)
            + WeightEdit.low_rank({UP: (_randn(128, 3, seed=3, scale=0.3), _randn(3, 64, seed=4, scale=0.3))})
            + WeightEdit.component_scale(UP, _randn(128, seed=5, scale=0.5), _randn(64, seed=6), s=-1.0))
    report = edit.export_lora(tmp_path / "lora", tiny_llama.model)
    assert report.ranks == {Q: 1, UP: 4} and report.max_rel_error == 0.0
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4 and sorted(config["target_modules"]) == sorted([Q, UP])
    with edit.applied(tiny_llama.model):
        merged = _logits(tiny_llama.model)
    assert not torch.allclose(merged, _logits(tiny_llama.model), atol=1e-4)
    torch.testing.assert_close(_peft_logits(tiny_llama.model, tmp_path / "lora"), merged, atol=1e-5, rtol=1e-5)


def test_export_lora_dense_full_rank(tiny_llama: ge.LanguageModel, tmp_path: Path) -> None:
    edit = WeightEdit.dense({DOWN + ".weight": _randn(64, 128, seed=8, scale=0.1)}) + _edit("indexed", tiny_llama)
    report = edit.export_lora(tmp_path / "lora", tiny_llama.model)
    assert report.ranks[DOWN] == 64 and report.max_rel_error < 1e-6
    with edit.applied(tiny_llama.model):
        merged = _logits(tiny_llama.model)
    torch.testing.assert_close(_peft_logits(tiny_llama.model, tmp_path / "lora"), merged, atol=1e-5, rtol=1e-5)


def test_export_lora_truncation(tiny_llama: ge.LanguageModel, tmp_path: Path) -> None:
    U, _ = torch.linalg.qr(torch.randn(64, 8, generator=_gen(1)))
    V, _ = torch.linalg.qr(torch.randn(128, 8, generator=_gen(2)))
    S = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625])
    edit = WeightEdit.dense({DOWN + ".weight": (U * S) @ V.T})
    energy = float((S[:2].square().sum() + 0.5 * S[2].square()) / S.square().sum())  # between k=2 and k=3
    report = edit.export_lora(tmp_path / "e", tiny_llama.model, energy=energy)
    assert report.svd_ranks[DOWN] == 3 and report.energy_kept[DOWN] >= energy
    assert edit.export_lora(tmp_path / "full", tiny_llama.model).ranks[DOWN] == 8  # numerical rank
    errors = [edit.export_lora(tmp_path / f"r{r}", tiny_llama.model, rank=r).rel_errors[DOWN] for r in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-6
    expected = float(torch.sqrt(S[1:].square().sum() / S.square().sum()))
    assert errors[0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(EditError, match="energy"):
        edit.export_lora(tmp_path / "bad", tiny_llama.model, energy=1.5)


def test_export_lora_gpt2_conv1d_and_unsupported(tiny_gpt2: ge.LanguageModel, tmp_path: Path) -> None:
    model = tiny_gpt2.model
    name = "transformer.h.0.attn.c_attn"  # Conv1D, weight stored [in=64, out=192]
    edit = WeightEdit.rank_one(name, _randn(64, seed=1, scale=0.5), _randn(192, seed=2, scale=0.5), scale=2.0)
    edit = edit + WeightEdit.dense({"transformer.h.1.mlp.c_fc.weight": _randn(64, 256, seed=3)})
    report = edit.export_lora(tmp_path / "lora", model, rank=64)
    assert report.ranks == {name: 1, "transformer.h.1.mlp.c_fc": 64}
    with edit.applied(model):
        merged = _logits(model)
    torch.testing.assert_close(_peft_logits(model, tmp_path / "lora"), merged, atol=1e-5, rtol=1e-5)
    tied = WeightEdit.dense({"lm_head.weight": torch.zeros_like(model.lm_head.weight).fill_(0.01)})
    with pytest.raises(EditError, match="tied weight"):
        tied.export_lora(tmp_path / "tied", model)
    norm = WeightEdit.dense({"transformer.ln_f.weight": torch.ones(64)})
    with pytest.raises(EditError, match=r"transformer\.ln_f\.weight \(LayerNorm\) is not supported"):
        norm.export_lora(tmp_path / "ln", model)
    assert not (tmp_path / "ln").exists()


@pytest.mark.parametrize("writer", ["rewrite_inplace", "data_scatter", "weight_edit"])
def test_svd_cache_sees_every_inplace_write(writer: str) -> None:
    """``svd_components`` after an in-place write (``rewrite_base_model(inplace=True)`` writes through
    ``.data``, which does not bump ``param._version``) must decompose the weight as it is now."""
    from gradedit.edits import svd_components
    from gradedit.gradiend.model import ModelWithGradiend

    lm = ge.load_model("tiny-llama")  # a fresh instance: this test changes its weights
    weight = dict(lm.model.named_parameters())[DOWN + ".weight"]
    before = svd_components(lm, DOWN)  # fills the cache
    pm = ge.ParamMap([DOWN + ".weight"], [tuple(weight.shape)], [None])
    update = _randn(pm.size, seed=11, scale=1.0)
    if writer == "rewrite_inplace":
        fm = ge.FeatureModel(pm.size, 1, param_map=pm, seed=0)
        with torch.no_grad():
            fm.decoder_weight.copy_(update[:, None])
            fm.decoder_bias.zero_()
        ModelWithGradiend(lm, fm).rewrite_base_model(learning_rate=1.0, feature_factor=1.0, inplace=True)
    elif writer == "data_scatter":
        pm.scatter_add_({DOWN + ".weight": weight.data}, update)
    else:
        WeightEdit.dense({DOWN + ".weight": update.reshape(weight.shape)}).apply_(lm.model)
    truth = torch.linalg.svdvals(weight.detach().double())
    assert abs(truth[0].item() - before[0].sigma) > 0.5, "the write must change the spectrum for this test to bite"
    after = svd_components(lm, DOWN)
    got = torch.tensor([c.sigma for c in after], dtype=torch.float64)
    torch.testing.assert_close(got, truth, rtol=1e-5, atol=1e-6)
    U, _, Vh = torch.linalg.svd(weight.detach().double())
    assert abs(float(after[0].U.double() @ U[:, 0])) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(after[0].V.double() @ Vh[0])) == pytest.approx(1.0, abs=1e-5)
