"""Rewriting with a feature model: the update lands on exactly the mapped entries, with the
decoder's values (an oracle built from the decoder's tensors and the map's index lists)."""

from __future__ import annotations

import math

import pytest
import torch

import gradedit as ge
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.models.param_map import ParamMap


@pytest.fixture(scope="module")
def partial_map() -> ParamMap:
    """Every other parameter fully, the rest through a random sorted seventh of their entries."""
    params = ge.select_parameters(ge.load_model("tiny-llama").model)
    gen = torch.Generator().manual_seed(0)
    indices = []
    for i, p in enumerate(params.values()):
        keep = torch.randperm(p.numel(), generator=gen)[: max(1, p.numel() // 7)]
        indices.append(None if i % 2 == 0 else torch.sort(keep).values)
    return ParamMap(list(params), [tuple(p.shape) for p in params.values()], indices)


@pytest.mark.parametrize("lr, ff", [(0.5, -2.0), (3e-2, 1.0)])
def test_applied_update_changes_exactly_the_mapped_entries_by_the_decoder(partial_map, lr, ff):
    """Rewriting a model with ``lr · decoder(ff)`` changes the param map's entries — and only those —
    by ``lr · (ff · W_d[i] + b_d[i])``, computed here entry by entry from the decoder's tensors and the
    map's own index lists (no ParamMap offsets, scatter or update_vector)."""
    lm = ge.load_model("tiny-llama")
    fm = FeatureModel(partial_map.size, 1, param_map=partial_map, seed=3)
    with torch.no_grad():
        fm.decoder_bias.copy_(torch.randn(partial_map.size, generator=torch.Generator().manual_seed(1)) * 0.01)
    w_d, b_d = fm.decoder_weight[:, 0].detach().double(), fm.decoder_bias.detach().double()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    rewritten = ModelWithGradiend(lm, fm).rewrite_base_model(learning_rate=lr, feature_factor=ff)
    after = dict(rewritten.named_parameters())
    pos, touched = 0, set()
    for name, shape, idx in zip(partial_map.names, partial_map.shapes, partial_map.indices):
        flat_idx = torch.arange(math.prod(shape)) if idx is None else idx
        n = flat_idx.numel()
        old, new = before[name].reshape(-1), after[name].detach().reshape(-1)
        want = lr * (ff * w_d[pos:pos + n] + b_d[pos:pos + n])
        got = new[flat_idx].double() - old[flat_idx].double()
        torch.testing.assert_close(got, want, atol=1e-6 * (1 + old.abs().max().item()), rtol=1e-4)
        rest = torch.ones(old.numel(), dtype=torch.bool)
        rest[flat_idx] = False
        assert torch.equal(new[rest], old[rest]), f"{name}: entries outside the map changed"
        pos += n
        touched.add(name)
    assert pos == partial_map.size
    for name, p in after.items():  # parameters outside the map are untouched, and lm itself too
        if name not in touched:
            assert torch.equal(p, before[name]), name
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, before[name]), f"inplace=False changed the base model's {name}"
