"""A rewritten model folder read back as a WeightEdit on its base model (what ``gradedit blast`` measures)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit.edits.terms import IndexedTerm
from gradedit.errors import ArtifactError
from gradedit.gradiend.rewrite_io import rewrite_edit, save_rewrite


def test_rewrite_folder_is_the_edit_of_its_weights(tmp_path: Path, tiny_llama: ge.LanguageModel) -> None:
    model = copy.deepcopy(tiny_llama.model)
    named = dict(model.named_parameters())
    few, whole = "model.layers.0.mlp.up_proj.weight", "model.layers.1.input_layernorm.weight"
    with torch.no_grad():
        named[few].view(-1)[[3, 17, 40]] += torch.tensor([0.5, -0.25, 1e-3])
        named[whole].add_(0.125)
    out = save_rewrite(model, tiny_llama, tmp_path / "rw", {"base_model": tiny_llama.name, "target_class": "fem"})
    edit = rewrite_edit(out, tiny_llama)
    assert sorted(edit.param_names) == sorted([few, whole])
    assert edit.metadata["changed_entries"] == {few: 3, whole: named[whole].numel()}
    assert edit.metadata["method"] == "rewrite" and edit.metadata["target_class"] == "fem"
    (term,) = edit.terms
    assert isinstance(term, IndexedTerm)
    by_name = dict(zip(term.param_map.names, term.param_map.indices))
    assert by_name[few].tolist() == [3, 17, 40] and by_name[whole] is None  # indexed vs whole tensor
    base = {n: p.detach().clone() for n, p in tiny_llama.model.named_parameters()}
    with edit.applied(tiny_llama.model):
        for n, p in tiny_llama.model.named_parameters():
            torch.testing.assert_close(p, named[n], rtol=0, atol=1e-6)
    for n, p in tiny_llama.model.named_parameters():
        assert torch.equal(p, base[n])  # restored bit-exactly


def test_rewrite_folder_errors(tmp_path: Path, tiny_llama: ge.LanguageModel, tiny_gpt2: ge.LanguageModel) -> None:
    out = save_rewrite(tiny_llama.model, tiny_llama, tmp_path / "same", {"base_model": tiny_llama.name})
    with pytest.raises(ValueError, match="changed nothing"):
        rewrite_edit(out, tiny_llama)
    with pytest.raises(ArtifactError, match="another model"):
        rewrite_edit(out, tiny_gpt2)
    with pytest.raises(FileNotFoundError, match="rewrite_info.json"):
        rewrite_edit(tmp_path, tiny_llama)
