"""gradedit.decompose on tiny HF language models (texts packed into blocks, Conv1D orientation) and
decomposed components as first-class :class:`Component` objects in the component edits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit.decompose import Decomposition, decompose
from gradedit.decompose.presets import PRESETS, preset_texts, run_preset
from gradedit.edits.components.decomposed import component_weight, decomposed_components
from gradedit.errors import DecompositionError
from gradedit.models.zoo.tiny import tiny_corpus

MLP = ["model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj"]


@pytest.fixture(scope="module")
def llama_dec(tiny_llama: ge.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Decomposition:
    torch.set_num_threads(1)
    return decompose(tiny_llama, MLP, 96, tiny_corpus(0)[:120], steps=60, batch_size=128, seq_len=32, seed=0,
                     lr=0.01, importance_coeff=1e-3, faithfulness_coeff=100.0, out=tmp_path_factory.mktemp("llama"))


def _logits(lm: ge.LanguageModel, texts: list[str]) -> torch.Tensor:
    enc = lm.tokenize(texts)
    with torch.no_grad():
        return lm.forward_logits(enc["input_ids"], enc["attention_mask"])


def test_texts_are_packed_and_decomposition_is_faithful(tiny_llama: ge.LanguageModel, llama_dec: Decomposition,
                                                        texts: list[str]) -> None:
    assert llama_dec.modules == [f"model.layers.{i}.mlp.{p}_proj" for i in (0, 1) for p in ("gate", "up")]
    assert llama_dec.meta["pool_rows"] > 10  # packed blocks of 32 tokens
    assert llama_dec.faithfulness(relative=True) < 1e-2
    assert llama_dec.metrics["faithfulness_relative"] == pytest.approx(llama_dec.faithfulness(relative=True))
    for name in llama_dec.modules:
        r = llama_dec.metrics["layers"][name]
        assert r["rel_mse_components"] < 1e-2
        s = llama_dec.stats[name]
        assert 0 < s["alive"] <= 96 and 0 < s["mean_l0"] < 96
    hist = llama_dec.meta["history"]
    assert hist[-1]["stoch"] < hist[0]["stoch"]
    assert llama_dec.metrics["output"]["kl_importance"] >= 0
    base = _logits(tiny_llama, texts)
    with llama_dec.masked(tiny_llama, {n: torch.ones(96) for n in llama_dec.modules}):
        same = _logits(tiny_llama, texts)
    assert torch.equal(base, same)


def test_importance_shapes(tiny_llama: ge.LanguageModel, llama_dec: Decomposition) -> None:
    g = llama_dec.importance("model.layers.0.mlp.gate_proj", torch.randn(3, 7, 64))
    assert g.shape == (3, 7, 96) and g.min() >= 0 and g.max() <= 1
    with pytest.raises(DecompositionError, match="inputs of width 64"):
        llama_dec.importance("model.layers.0.mlp.gate_proj", torch.randn(3, 65))
    with pytest.raises(DecompositionError, match="not decomposed"):
        llama_dec.components("model.layers.0.mlp.down_proj")


def test_ablating_a_component_edit_equals_its_mask_at_zero(tiny_llama: ge.LanguageModel, llama_dec: Decomposition,
                                                           texts: list[str]) -> None:
    comps = decomposed_components(llama_dec, "model.layers.1.mlp.up_proj", alive_only=False)
    assert len(comps) == 96 and comps.modules == ["model.layers.1.mlp.up_proj"]
    c = comps[7]
    assert c.index == 7 and not c.stored_transposed
    assert torch.allclose(c.weight(), component_weight(llama_dec, c.module_name, 7), atol=1e-6)
    mask = torch.ones(96)
    mask[7] = 0.0
    with llama_dec.masked(tiny_llama, {c.module_name: mask}):
        masked = _logits(tiny_llama, texts)
    with comps.edit(7, 0.0).applied(tiny_llama.model):
        edited = _logits(tiny_llama, texts)
    base = _logits(tiny_llama, texts)
    assert not torch.allclose(base, masked, atol=1e-4)
    assert torch.allclose(edited, masked, atol=1e-4, rtol=1e-4)
    alive = decomposed_components(llama_dec)
    assert 0 < len(alive) <= 4 * 96
    assert all(llama_dec.stats[x.module_name]["firing_frequency"][x.index] > 0 for x in alive)


def test_conv1d_orientation(tiny_gpt2: ge.LanguageModel, texts: list[str]) -> None:
    torch.set_num_threads(1)
    name = "transformer.h.0.mlp.c_fc"
    dec = decompose(tiny_gpt2, name, 80, tiny_corpus(1)[:60], steps=5, batch_size=64, seq_len=32,
                    faithfulness_warmup_steps=0)
    info = dec.infos[name]
    W = tiny_gpt2.model.get_submodule(name).weight  # Conv1D stores [in, out]
    assert info.stored_transposed and (info.d_in, info.d_out) == tuple(W.shape)
    V, U = dec.components(name)
    assert torch.allclose((V @ U).T + dec.residual(name), W.T, atol=1e-5)
    comps = decomposed_components(dec, alive_only=False)
    assert comps[0].stored_transposed
    mask = torch.ones(80)
    mask[3] = 0.0
    with dec.masked(tiny_gpt2, {name: mask}):
        masked = _logits(tiny_gpt2, texts)
    with comps.edit(comps.find(name, 3), 0.0).applied(tiny_gpt2.model):
        edited = _logits(tiny_gpt2, texts)
    assert torch.allclose(edited, masked, atol=1e-4, rtol=1e-4)
    base = _logits(tiny_gpt2, texts)
    with dec.masked(tiny_gpt2, {name: torch.ones(80)}):
        assert torch.equal(_logits(tiny_gpt2, texts), base)


def test_output_objective_on_an_lm(tiny_llama: ge.LanguageModel) -> None:
    torch.set_num_threads(1)
    dec = decompose(tiny_llama, "model.layers.1.mlp.up_proj", 64, tiny_corpus(2)[:40], objective="output",
                    steps=4, batch_size=4, seq_len=16, faithfulness_warmup_steps=0)
    assert dec.objective == "output" and "kl_stochastic" in dec.metrics["output"]


def test_tiny_preset_runs_and_resumes_from_its_folder(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    p = PRESETS["tiny"]
    assert len(preset_texts(p)) > 50
    dec = run_preset("tiny", tmp_path / "t", steps=10)
    again = run_preset("tiny", tmp_path / "t", steps=10)  # finished: loaded, not retrained
    assert torch.equal(again.components(dec.modules[0])[0], dec.components(dec.modules[0])[0])


def test_cli_entry(tmp_path: Path) -> None:
    import argparse

    from gradedit.decompose.presets import add_arguments, run_cli_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    torch.set_num_threads(1)
    dec = run_cli_args(parser.parse_args(["--preset", "tiny", "--out", str(tmp_path / "c"), "--steps", "3",
                                          "--set", "importance_coeff=0.01", "init=\"data\""]))
    assert dec.config.steps == 3 and dec.config.importance_coeff == 0.01 and dec.config.init == "data"
    assert (tmp_path / "c" / "decomposition.json").is_file()
    with pytest.raises(DecompositionError, match="unknown decomposition option"):
        run_cli_args(parser.parse_args(["--preset", "tiny", "--out", str(tmp_path / "d"), "--set", "lrr=1"]))
    with pytest.raises(DecompositionError, match="give --model"):
        run_cli_args(parser.parse_args(["--out", str(tmp_path / "e"), "--model", "tiny-llama"]))


def test_statistics_on_other_text(tiny_llama: ge.LanguageModel, llama_dec: Decomposition) -> None:
    de = llama_dec.statistics(tiny_llama, ["Der Mann ist hier und die Frau ist dort."] * 20, max_rows=200)
    name = llama_dec.modules[0]
    assert de[name]["rows"] <= 200 and len(de[name]["firing_frequency"]) == 96
    same = llama_dec.statistics(tiny_llama, tiny_corpus(0)[:120], max_rows=llama_dec.stats[name]["rows"])
    assert same[name]["firing_frequency"] == llama_dec.stats[name]["firing_frequency"]
