"""LoRA baseline training with 2 gloo processes (each rank a slice of every global batch, means over
all ranks' positions, adapter gradients averaged) == 1 process: the same adapters and history within
float tolerance — full-vocabulary KL with other texts and an odd batch, and a top-k KL run whose
batch of one text leaves rank 1 without rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gradedit as ge
from gradedit import dist
from gradedit.edits import LoraConfig, train_lora
from gradedit.edits.lora import TargetData

TARGET = ["Der Mann sagt, dass er heute kommt.", "Die Frau ist hier und das Haus ist alt.", "Das Kind schläft.",
          "Er hörte die Stimmen der Kinder.", "Wir gehen morgen in die Stadt."]
OTHER = ["The city is quiet and the house is old.", "She knows he is here.", "The teacher said that he would come."]
RUNS = {
    "full_kl": dict(config=LoraConfig(rank=2, steps=8, lr=1e-2, batch_size=3, seed=1), texts=TARGET, other=OTHER),
    "topk_one_row": dict(config=LoraConfig(rank=1, steps=6, lr=2e-2, batch_size=1, kl_topk=8, seed=2),
                         texts=TargetData(OTHER, target_words=[" he"]), other=None),
}


def _train(lm: ge.LanguageModel, name: str, seed: int | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    run = RUNS[name]
    config = run["config"] if seed is None else LoraConfig(**{**run["config"].to_dict(), "seed": seed})
    res = train_lora(lm, run["texts"], config, remove=name != "full_kl", other_texts=run["other"], progress=False)
    tensors = {f"{m}/{k}": t.contiguous() for m, (B, A) in res.adapters.items() for k, t in (("B", B), ("A", A))}
    return tensors, res.history


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    lm = ge.load_model("tiny-llama")
    for name in RUNS:
        tensors, history = _train(lm, name)
        save_file(tensors, str(Path(out, f"{name}_rank{dist.rank()}.safetensors")))
        Path(out, f"{name}_rank{dist.rank()}.txt").write_text(repr(history))


def _assert_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5 * float(ref[k].abs().max()), msg=k)


def test_two_process_lora_equals_one_process(tmp_path: Path, tiny_llama: ge.LanguageModel) -> None:
    dist.launch_local(_worker, 2, str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        refs = {name: _train(tiny_llama, name) for name in RUNS}
        other_seed, _ = _train(tiny_llama, "full_kl", seed=5)
    finally:
        torch.set_num_threads(threads)
    for name, (ref, ref_hist) in refs.items():
        r0 = load_file(str(tmp_path / f"{name}_rank0.safetensors"))
        r1 = load_file(str(tmp_path / f"{name}_rank1.safetensors"))
        assert all(torch.equal(r0[k], r1[k]) for k in r0)  # every rank holds the same adapters
        _assert_close(r0, ref)
        hist = eval((tmp_path / f"{name}_rank0.txt").read_text(), {"nan": math.nan})  # noqa: S307 - our own repr
        assert [h["n_target"] for h in hist] == [h["n_target"] for h in ref_hist]  # global counts
        assert [h["n_kl"] for h in hist] == [h["n_kl"] for h in ref_hist]
        for key in ("loss", "target_loss", "target_ce", "kl"):
            assert [h[key] for h in hist] == pytest.approx([h[key] for h in ref_hist], rel=1e-4, abs=1e-6, nan_ok=True), key
        assert any(float(t.abs().max()) > 1e-3 for k, t in ref.items() if k.endswith("/B"))  # training moved B
    with pytest.raises(AssertionError):  # another seed gives other adapters: the comparison can fail
        _assert_close(other_seed, refs["full_kl"][0])
