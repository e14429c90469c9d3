"""FeatureModel (GRADIEND encoder–decoder) and ParamMap: invariants and oracle tests."""

from __future__ import annotations

import json
import math

import pytest
import torch

import gradedit as ge
from gradedit.gradiend.feature_model import ArtifactError, FeatureModel
from gradedit.models.param_map import ParamMap


@pytest.fixture(scope="module")
def params() -> dict[str, torch.nn.Parameter]:
    return ge.select_parameters(ge.load_model("tiny-llama").model)


@pytest.fixture(scope="module")
def partial_map(params) -> ParamMap:
    """Every other param fully, the rest with a random sorted subset of entries."""
    gen = torch.Generator().manual_seed(0)
    names = list(params)
    indices = []
    for i, p in enumerate(params.values()):
        if i % 2 == 0:
            indices.append(None)
        else:
            keep = torch.randperm(p.numel(), generator=gen)[: max(1, p.numel() // 7)]
            indices.append(torch.sort(keep).values)
    return ParamMap(names, [tuple(p.shape) for p in params.values()], indices)


def _model(n=50, k=1, seed=0, **kw) -> FeatureModel:
    return FeatureModel(n, k, seed=seed, **kw)


# -- ParamMap ---------------------------------------------------------------------------------------


def test_gather_scatter_round_trip_full(params):
    pm = ParamMap.from_params(params)
    assert pm.size == sum(p.numel() for p in params.values())
    assert pm.offsets[0] == 0 and pm.offsets[1] == pm.sizes[0]
    assert pm.gather(params).requires_grad  # parameters: differentiable path
    with torch.no_grad():
        vec = pm.gather(params)
    assert vec.shape == (pm.size,) and not vec.requires_grad
    dense = pm.scatter(vec)
    assert list(dense) == list(params)
    for name, p in params.items():
        assert torch.equal(dense[name], p.detach())
    vec[0] += 1.0  # scatter returns copies, not views of vec
    assert torch.equal(dense[pm.names[0]], params[pm.names[0]].detach())


def test_gather_scatter_round_trip_partial(params, partial_map):
    pm = partial_map
    with torch.no_grad():
        vec = pm.gather(params)
    manual = torch.cat([
        p.detach().reshape(-1) if idx is None else p.detach().reshape(-1)[idx]
        for p, idx in zip(params.values(), pm.indices)
    ])
    assert torch.equal(vec, manual)
    for (name, p), idx in zip(params.items(), pm.indices):
        expected = p.detach().clone().reshape(-1)
        if idx is not None:
            mask = torch.ones_like(expected, dtype=torch.bool)
            mask[idx] = False
            expected[mask] = 0
        assert torch.equal(pm.scatter(vec)[name], expected.reshape(p.shape))
    # differentiable path agrees with the preallocated one
    assert torch.equal(pm.gather({n: p.detach().requires_grad_() for n, p in params.items()}).detach(), vec)


def test_gather_names_the_missing_param(params):
    pm = ParamMap.from_params(params)
    some = dict(params)
    missing = pm.names[3]
    del some[missing]
    with pytest.raises(KeyError, match=missing):
        pm.gather(some)
    with pytest.raises(ValueError, match="None"):
        pm.gather({**params, missing: None})


def test_select_and_locate_match_manual_indexing(params, partial_map):
    pm = partial_map
    vec = pm.gather(params)
    gen = torch.Generator().manual_seed(1)
    pos = torch.sort(torch.randperm(pm.size, generator=gen)[:300]).values
    sub = pm.select(pos)
    assert sub.size == 300
    assert torch.equal(sub.gather(params), vec[pos])  # the sub-map reads the same entries
    located = pm.locate(pos)
    flat_params = {n: p.detach().reshape(-1) for n, p in params.items()}
    for (name, flat), value in zip(located, vec[pos].tolist()):
        assert flat_params[name][flat].item() == value
    # a position in a fully selected param maps to itself; unsorted input keeps its order
    last = pm.size - 1
    assert pm.locate(torch.tensor([last, 0])) == [(pm.names[-1], pm.indices[-1][-1].item()
                                                    if pm.indices[-1] is not None else math.prod(pm.shapes[-1]) - 1),
                                                   (pm.names[0], 0)]
    with pytest.raises(ValueError, match="strictly increasing"):
        pm.select(torch.tensor([5, 3]))
    with pytest.raises(IndexError):
        pm.locate(torch.tensor([pm.size]))


def test_select_drops_untouched_params_and_canonicalises_full(params):
    pm = ParamMap.from_params(params)
    first = pm.sizes[0]
    sub = pm.select(torch.arange(first))
    assert sub.names == [pm.names[0]] and sub.indices == [None]
    assert pm.select(torch.arange(pm.size)) == pm
    sub2 = pm.select(torch.tensor([1, first + 2]))
    assert sub2.names == pm.names[:2]
    assert torch.equal(sub2.indices[0], torch.tensor([1])) and torch.equal(sub2.indices[1], torch.tensor([2]))


def test_scatter_add_exact_when_sums_are_exact():
    # dyadic values of small magnitude: p + d and (p + d) - d are exact in fp32
    gen = torch.Generator().manual_seed(0)
    ps = {"a": torch.randint(-64, 64, (6, 5), generator=gen).float() / 16,
          "b": torch.randint(-64, 64, (7,), generator=gen).float() / 16}
    before = {n: p.clone() for n, p in ps.items()}
    pm = ParamMap(["a", "b"], [(6, 5), (7,)], [torch.tensor([0, 4, 29]), None])
    vec = torch.randint(-64, 64, (pm.size,), generator=gen).float() / 32
    pm.scatter_add_(ps, vec, alpha=0.5)
    dense = pm.scatter(vec)
    for n in ps:
        assert torch.equal(ps[n], before[n] + 0.5 * dense[n])
    pm.scatter_add_(ps, vec, alpha=-0.5)
    for n in ps:
        assert torch.equal(ps[n], before[n])


def test_scatter_add_restore_via_snapshot_is_bit_exact(params, partial_map):
    pm = partial_map
    work = {n: p.detach().clone() for n, p in params.items()}
    before = {n: p.clone() for n, p in work.items()}
    saved = pm.gather(work)
    vec = torch.randn(pm.size, generator=torch.Generator().manual_seed(2))
    pm.scatter_add_(work, vec, alpha=1e-3)
    assert any(not torch.equal(work[n], before[n]) for n in work)
    pm.assign_(work, saved)
    assert all(torch.equal(work[n], before[n]) for n in work)


def test_scatter_add_validates_before_touching(params):
    pm = ParamMap.from_params(params)
    work = {n: p.detach().clone() for n, p in params.items()}
    first = pm.names[0]
    before = work[first].clone()
    del work[pm.names[-1]]
    with pytest.raises(KeyError):
        pm.scatter_add_(work, torch.ones(pm.size))
    assert torch.equal(work[first], before)


def test_param_map_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        ParamMap(["a"], [(4,)], [torch.tensor([2, 1])])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        ParamMap(["a"], [(4,)], [torch.tensor([1, 4])])
    with pytest.raises(ValueError, match="repeat"):
        ParamMap(["a", "a"], [(4,), (4,)], [None, None])
    assert ParamMap(["a"], [(2, 2)], [torch.arange(4)]).indices == [None]


def test_param_map_state_round_trip(partial_map):
    meta, tensors = partial_map.to_state()
    meta = json.loads(json.dumps(meta))
    assert ParamMap.from_state(meta, tensors) == partial_map
    assert ParamMap.from_params({"x": torch.zeros(3)}) != partial_map
    meta["counts"][1] += 1
    with pytest.raises(ValueError, match="counts"):
        ParamMap.from_state(meta, tensors)


# -- FeatureModel -----------------------------------------------------------------------------------


def test_init_is_seeded_leaves_global_rng_alone_and_matches_linear():
    state = torch.random.get_rng_state()
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    fresh = _model(seed=None)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(fresh.init_seed, int)
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.encoder_weight, c.encoder_weight)
    # encoder: torch's default nn.Linear init; decoder: U(-x, x) with x = max encoder weight
    with torch.random.fork_rng():
        torch.manual_seed(3)
        lin = torch.nn.Linear(50, 1)
    assert torch.equal(a.encoder_weight, lin.weight) and torch.equal(a.encoder_bias, lin.bias)
    x = a.encoder_weight.max()
    assert a.decoder_weight.abs().max() <= x and a.decoder_bias.abs().max() <= x
    assert a.decoder_weight.shape == (50, 1) and a.decoder_bias.shape == (50,)


def test_encode_decode_shapes_and_formula():
    m = _model(n=30, k=3, seed=1)
    g = torch.randn(4, 30)
    rec, h = m(g)
    assert rec.shape == (4, 30) and h.shape == (4, 3)
    assert torch.allclose(h, torch.tanh(g @ m.encoder_weight.T + m.encoder_bias))
    assert torch.allclose(rec, h @ m.decoder_weight.T + m.decoder_bias)
    assert m.encode(g[0]).shape == (3,)
    with pytest.raises(ValueError, match="latent_dim == 1"):
        m.decode(1.0)
    m1 = _model(n=30, k=1, seed=1)
    assert torch.allclose(m1.decode(-2.0), -2.0 * m1.decoder_weight[:, 0] + m1.decoder_bias)
    want = 0.5 * (-2.0 * m1.decoder_weight[:, 0].double() + m1.decoder_bias.double())
    torch.testing.assert_close(m1.update_vector(-2.0, 0.5).double(), want.detach(), atol=1e-7, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[\.\.\., 30\]"):
        m1.encode(torch.randn(29))


def test_flip_sign_is_exact():
    m = _model(n=200, k=2, seed=5)
    g = torch.randn(8, 200)
    h_old = m.encode(g).detach()
    pre_old = m.pre_activation(g).detach()
    hs = torch.randn(8, 2)
    dec_old = m.decode(hs).detach()
    m.flip_sign_()
    assert torch.equal(m.pre_activation(g), -pre_old)
    assert torch.equal(m.encode(g), -h_old)
    assert torch.equal(m.decode(-hs), dec_old)
    m1 = _model(n=200, k=1, seed=5)
    v = m1.decode(0.7).detach()
    assert torch.equal(m1.flip_sign_().decode(-0.7), v)


def test_importance_and_topk_against_brute_force():
    m = _model(n=40, k=2, seed=7)
    we, wd, bd = m.encoder_weight.detach(), m.decoder_weight.detach(), m.decoder_bias.detach()
    brute = {
        "encoder-weight": [abs(we[0, i].item()) + abs(we[1, i].item()) for i in range(40)],
        "decoder-weight": [abs(wd[i, 0].item()) + abs(wd[i, 1].item()) for i in range(40)],
        "decoder-bias": [abs(bd[i].item()) for i in range(40)],
        "decoder-sum": [abs(wd[i, 0].item() + wd[i, 1].item() + bd[i].item()) for i in range(40)],
    }
    for part, values in brute.items():
        assert torch.allclose(m.importance(part), torch.tensor(values), atol=1e-7), part
        order = sorted(range(40), key=lambda i: -values[i])
        assert m.topk(5, part).tolist() == order[:5]
        assert m.topk(0.25, part).tolist() == order[:10]
    assert m.topk(1.0).numel() == 40
    for bad in (0, 41, 0.0, 1.5, True, "3"):
        with pytest.raises((ValueError, TypeError)):
            m.topk(bad)
    with pytest.raises(ValueError, match="unknown part"):
        m.importance("bias")
    with pytest.raises(ValueError, match="bias_decoder=False"):
        _model(bias_decoder=False).importance("decoder-bias")


def test_topk_params_names_base_entries(params, partial_map):
    m = FeatureModel(partial_map.size, param_map=partial_map, seed=0)
    top = m.topk_params(10)
    idx = m.topk(10)
    assert [(n, f) for n, f, _ in top] == partial_map.locate(idx)
    assert [v for *_, v in top] == pytest.approx(m.importance()[idx].tolist())
    assert all(a[2] >= b[2] for a, b in zip(top, top[1:]))


def test_prune_equals_restricted_original(partial_map):
    full = FeatureModel(partial_map.size, 2, param_map=partial_map, seed=0, metadata={"base_model": "tiny-llama"})
    pruned = full.prune(topk=100)
    idx = torch.sort(full.topk(100)).values
    assert pruned.input_dim == 100 and pruned.latent_dim == 2
    assert pruned.param_map == partial_map.select(idx)
    assert pruned.metadata == full.metadata and pruned.metadata is not full.metadata
    assert torch.equal(pruned.encoder_weight, full.encoder_weight[:, idx])
    assert torch.equal(pruned.encoder_bias, full.encoder_bias)
    h = torch.randn(3, 2)
    assert torch.equal(pruned.decode(h), full.decode(h)[:, idx])
    # a gradient that is zero outside the kept entries encodes the same
    g = torch.zeros(partial_map.size)
    g[idx] = torch.randn(100)
    assert torch.allclose(pruned.pre_activation(g[idx]), full.pre_activation(g), atol=1e-6)
    # the pruned map reads the same base-model entries the kept positions pointed to
    assert pruned.param_map.locate(torch.arange(100)) == partial_map.locate(idx)
    # threshold pruning: strictly greater than
    imp = full.importance("encoder-weight")
    thr = float(imp.median())
    by_thr = full.prune(threshold=thr, part="encoder-weight")
    assert by_thr.input_dim == int((imp > thr).sum())
    with pytest.raises(ValueError, match="exactly one"):
        full.prune()
    with pytest.raises(ValueError, match="exactly one"):
        full.prune(topk=3, threshold=0.1)


def test_save_load_round_trip(tmp_path, partial_map):
    meta = {"base_model": "tiny-llama", "source": "masc", "target": "fem", "data_fingerprint": "abc123"}
    m = FeatureModel(partial_map.size, 2, param_map=partial_map, seed=11, metadata=meta)
    out = tmp_path / "fm"
    m.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "param_map.json"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["input_dim"] == partial_map.size and cfg["latent_dim"] == 2 and cfg["dtype"] == "float32"
    assert cfg["library_version"] == ge.__version__ and cfg["metadata"] == meta
    pm_json = json.loads((out / "param_map.json").read_text())
    assert pm_json["names"] == partial_map.names and pm_json["counts"] == partial_map.sizes
    loaded = FeatureModel.from_pretrained(out)
    assert loaded.param_map == partial_map and loaded.metadata == meta and loaded.init_seed == 11
    for (na, pa), (nb, pb) in zip(m.named_parameters(), loaded.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    # saving again into the existing folder overwrites; dropping the map removes the stale file
    bare = FeatureModel(7, bias_decoder=False, dtype="bfloat16", seed=1)
    bare.save_pretrained(out)
    again = FeatureModel.from_pretrained(out)
    assert not (out / "param_map.json").exists() and again.param_map is None
    assert again.dtype == torch.bfloat16 and not again.bias_decoder
    assert torch.equal(again.decoder_weight, bare.decoder_weight)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_load_errors_are_specific(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureModel.from_pretrained(tmp_path / "nope")
    out = tmp_path / "fm"
    _model().save_pretrained(out)
    weights = out / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ArtifactError, match="model.safetensors is corrupt.*save it again"):
        FeatureModel.from_pretrained(out)
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError, match="corrupt"):
        FeatureModel.from_pretrained(out)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        FeatureModel.from_pretrained(out)
    weights.write_bytes(data)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "input_dim": 51}))
    with pytest.raises(ArtifactError, match=r"encoder_weight is \(1, 50\).*\(1, 51\)"):
        FeatureModel.from_pretrained(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="config.json is corrupt"):
        FeatureModel.from_pretrained(out)
    (out / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        FeatureModel.from_pretrained(out)


def test_missing_param_map_file_is_named(tmp_path):
    m = FeatureModel(5, param_map=ParamMap(["w"], [(5,)], [None]), seed=0)
    m.save_pretrained(tmp_path / "fm")
    (tmp_path / "fm" / "param_map.json").unlink()
    with pytest.raises(FileNotFoundError, match="param_map.json"):
        FeatureModel.from_pretrained(tmp_path / "fm")


def test_constructor_validation():
    with pytest.raises(ValueError, match="input_dim"):
        FeatureModel(0)
    with pytest.raises(ValueError, match="param_map selects 5"):
        FeatureModel(6, param_map=ParamMap(["w"], [(5,)], [None]))
    with pytest.raises(ValueError, match="floating-point"):
        FeatureModel(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="JSON"):
        FeatureModel(3, metadata={"x": object()}).save_pretrained("/nonexistent-never-written")


def test_large_model_is_memory_lean(tmp_path):
    n = 20_000_000
    m = FeatureModel(n, seed=0)
    assert sum(p.numel() for p in m.parameters()) == 3 * n + 1
    assert m.update_vector(1.0, 1e-3).shape == (n,)
    m.save_pretrained(tmp_path / "big")
    loaded = FeatureModel.from_pretrained(tmp_path / "big")
    assert torch.equal(loaded.decoder_bias, m.decoder_bias)
    assert torch.equal(loaded.topk(5), m.topk(5))

