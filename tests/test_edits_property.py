"""Property test: ANY mix of edit kinds on any parameters, applied (nested, in LIFO order), restores bit-exactly."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradedit as ge
from gradedit.edits import WeightEdit

KINDS = ("dense", "low_rank", "rank_one", "component_scale", "indexed")


def _term(kind: str, name: str, shape: tuple[int, ...], seed: int, scale: float) -> WeightEdit:
    g = torch.Generator().manual_seed(seed)
    if kind == "dense" or len(shape) == 1:
        return WeightEdit.dense({name: torch.randn(shape, generator=g)}, scale=scale)
    module = name.removesuffix(".weight")
    if kind == "low_rank":
        r = 1 + seed % 3
        return WeightEdit.low_rank({module: (torch.randn(shape[0], r, generator=g), torch.randn(r, shape[1], generator=g))},
                                   scale=scale)
    if kind == "rank_one":
        return WeightEdit.rank_one(module, torch.randn(shape[0], generator=g), torch.randn(shape[1], generator=g),
                                   scale=scale)
    if kind == "component_scale":
        return WeightEdit.component_scale(module, torch.randn(shape[0], generator=g), torch.randn(shape[1], generator=g),
                                          s=scale)
    n = shape[0] * shape[1]
    idx = torch.unique(torch.randint(0, n, (1 + seed % 50,), generator=g))
    pm = ge.ParamMap([name], [shape], [idx])
    return WeightEdit.indexed(pm, torch.randn(pm.size, generator=g), scale=scale)


scales = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([0.0, 1.0, -1.0, 1e-30, 1e30]))
term = st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000), st.integers(0, 2**31 - 1), scales)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.lists(term, min_size=1, max_size=4), min_size=1, max_size=3))
def test_random_edits_restore_bit_exactly(tiny_llama: ge.LanguageModel, edits) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama.model
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.ndim == 2 or n.endswith("norm.weight")]
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    built = []
    for terms in edits:
        parts = [_term(k, *named[i % len(named)], seed, s) for k, i, seed, s in terms]
        built.append(sum(parts[1:], parts[0]))
    handles = [e.apply_(model) for e in built]  # nested: each snapshots what the previous ones left
    touched = {n for e in built for n in e.param_names}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, saved[n])}
    assert changed <= touched, f"edits changed parameters they do not name: {changed - touched}"
    for h in reversed(handles):
        h.remove()
    for n, p in model.named_parameters():
        assert torch.equal(p, saved[n]), f"{n} not restored"
    # the same through the context manager, with an exception inside
    try:
        with built[0].applied(model):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters())
