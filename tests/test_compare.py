"""The comparison math on CONSTRUCTED feature models with known overlaps (issue 15.1).

Three hand-made models over a fake base model with parameters
``P1 = model.layers.0.mlp.down_proj.weight`` [2, 3], ``P2 = model.layers.1.self_attn.q_proj.weight`` [2, 2]
and ``P3 = model.norm.weight`` [3]:

- A reads all of P1 and P2 entries {0, 3} (pruned differently from B);
- B reads P1 entries {1, 2, 5}, all of P2 and all of P3;
- C reads only P3 (another "layer" than A).

Every expected number below is worked out by hand in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gradedit.errors import ArtifactError
from gradedit.gradiend.compare import (
    KeySpace,
    compare_models,
    cosine_matrix,
    group_table,
    intersections,
    jaccard,
    layer_of,
    mass_overlap,
    module_of,
    overlap_counts,
    overlap_min,
    sparse_vector,
    spearman,
    topk_of,
)
from gradedit.gradiend.compare.similarity import rank
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.models.param_map import ParamMap

P1, P2, P3 = "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"
SHAPES = {P1: (2, 3), P2: (2, 2), P3: (3,)}


def _fm(entries: dict[str, list[int] | None], decoder: list[float], encoder: list[float] | None = None) -> FeatureModel:
    pm = ParamMap(list(entries), [SHAPES[n] for n in entries],
                  [None if i is None else torch.tensor(i) for i in entries.values()])
    fm = FeatureModel(pm.size, param_map=pm, seed=0, metadata={"base_model": "fake"})
    with torch.no_grad():
        fm.decoder_weight.copy_(torch.tensor(decoder).reshape(-1, 1))
        fm.decoder_bias.zero_()  # type: ignore[union-attr]
        if encoder is not None:
            fm.encoder_weight.copy_(torch.tensor(encoder).reshape(1, -1))
    return fm


# A: P1 flat 0..5, then P2 flat 0, 3
A_DEC = [0.1, -0.9, 0.8, 0.05, 0.02, 0.7, 0.6, -0.01]
# B: P1 flat 1, 2, 5; P2 flat 0..3; P3 flat 0..2
B_DEC = [0.5, 0.03, -0.4, 0.9, 0.2, 0.01, -0.3, 0.04, 0.02, 0.6]
C_DEC = [0.3, -0.2, 0.1]


@pytest.fixture()
def models() -> dict[str, FeatureModel]:
    return {
        "A": _fm({P1: None, P2: [0, 3]}, A_DEC, encoder=[0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.9, 0.5]),
        "B": _fm({P1: [1, 2, 5], P2: None, P3: None}, B_DEC),
        "C": _fm({P3: None}, C_DEC),
    }


@pytest.fixture()
def space(models: dict[str, FeatureModel]) -> KeySpace:
    return KeySpace.from_maps([m.param_map for m in models.values()])  # type: ignore[misc]


def _key(space: KeySpace, name: str, flat: int) -> int:
    return int(space.bases[space.index(name)]) + flat


def test_names_map_to_layers_and_modules() -> None:
    assert layer_of(P1) == 0 and layer_of(P2) == 1 and layer_of(P3) is None
    assert layer_of("transformer.h.11.attn.c_attn.weight") == 11
    assert module_of(P1) == "mlp.down_proj" and module_of(P3) == "model.norm"
    assert module_of("transformer.h.0.attn.c_attn.bias") == "attn.c_attn"


def test_topk_sets_are_in_base_model_coordinates(models: dict[str, FeatureModel], space: KeySpace) -> None:
    a = topk_of(models["A"], "A", space, 4)
    # |w_d| of A: P1f1 .9 > P1f2 .8 > P1f5 .7 > P2f0 .6
    assert a.keys.tolist() == [_key(space, P1, 1), _key(space, P1, 2), _key(space, P1, 5), _key(space, P2, 0)]
    np.testing.assert_allclose(a.values, [-0.9, 0.8, 0.7, 0.6], rtol=1e-6)
    b = topk_of(models["B"], "B", space, 4)
    # |w_d| of B: P2f0 .9 > P3f2 .6 > P1f1 .5 > P1f5 .4
    assert b.keys.tolist() == [_key(space, P2, 0), _key(space, P3, 2), _key(space, P1, 1), _key(space, P1, 5)]
    frame = b.to_frame()
    assert frame["param"].tolist() == [P2, P3, P1, P1]
    # P2 [2, 2] flat 0 -> (0, 0); P3 is 1-D: row = flat, no col; P1 [2, 3] flat 1 -> (0, 1), flat 5 -> (1, 2)
    assert frame["row"].tolist() == [0, 2, 0, 1]
    assert frame["col"].isna().tolist() == [False, True, False, False]
    assert frame["col"].dropna().tolist() == [0, 1, 2]
    assert frame["rank"].tolist() == [1, 2, 3, 4]
    # an int k larger than a model's inputs takes all of them; a fraction is of the model's OWN size
    assert len(topk_of(models["C"], "C", space, 4)) == 3
    assert len(topk_of(models["B"], "B", space, 0.5)) == 5


def test_encoder_part_ranks_by_encoder_weight(models: dict[str, FeatureModel], space: KeySpace) -> None:
    a = topk_of(models["A"], "A", space, 2, part="encoder-weight")
    assert a.keys.tolist() == [_key(space, P2, 0), _key(space, P2, 3)]  # encoder .9 (P2f0), .5 (P2f3)
    np.testing.assert_allclose(a.values, [0.9, 0.5], rtol=1e-6)


def test_overlap_counts_min_jaccard_and_regions(models: dict[str, FeatureModel], space: KeySpace) -> None:
    tops = [topk_of(m, n, space, 4) for n, m in models.items()]
    # A ∩ B = {P1f1, P1f5, P2f0} (3); A ∩ C = {}; B ∩ C = {P3f2}; |A| = |B| = 4, |C| = 3
    np.testing.assert_array_equal(overlap_counts(tops), [[4, 3, 0], [3, 4, 1], [0, 1, 3]])
    np.testing.assert_allclose(overlap_min(tops), [[1, 3 / 4, 0], [3 / 4, 1, 1 / 3], [0, 1 / 3, 1]])
    np.testing.assert_allclose(jaccard(tops), [[1, 3 / 5, 0], [3 / 5, 1, 1 / 6], [0, 1 / 6, 1]])
    # exclusive regions: A only {P1f2}; B only {}; C only {P3f0, P3f1}; A&B 3; B&C 1
    assert intersections(tops) == {("A",): 1, ("C",): 2, ("A", "B"): 3, ("B", "C"): 1}


def test_mass_overlap_is_directed(models: dict[str, FeatureModel], space: KeySpace) -> None:
    tops = [topk_of(models[n], n, space, 4) for n in ("A", "B")]
    mass = mass_overlap(tops)
    # A: mass .9+.8+.7+.6 = 3.0, on shared entries .9+.7+.6 = 2.2; B: 2.4 in all, .9+.5+.4 = 1.8 shared
    np.testing.assert_allclose(mass, [[1, 2.2 / 3.0], [1.8 / 2.4, 1]], rtol=1e-6)


def test_cosine_and_spearman_on_union_of_supports(models: dict[str, FeatureModel], space: KeySpace) -> None:
    va, vb = sparse_vector(models["A"], space), sparse_vector(models["B"], space)
    # shared support: P1f1, P1f2, P1f5, P2f0, P2f3 -> dot = -.9*.5 + .8*.03 + .7*-.4 + .6*.9 + -.01*-.3 = -0.163
    dot, dot_abs = -0.163, 1.297
    na, nb = math.sqrt(sum(v * v for v in A_DEC)), math.sqrt(sum(v * v for v in B_DEC))
    cos = cosine_matrix([va, vb])
    np.testing.assert_allclose(cos, [[1, dot / (na * nb)], [dot / (na * nb), 1]], rtol=1e-5)
    np.testing.assert_allclose(cosine_matrix([va, vb], absolute=True)[0, 1], dot_abs / (na * nb), rtol=1e-5)
    # union of supports in key order: P1f0..5, P2f0..3, P3f0..2; a model is 0 where it reads nothing
    dense_a = [0.1, -0.9, 0.8, 0.05, 0.02, 0.7, 0.6, 0, 0, -0.01, 0, 0, 0]
    dense_b = [0, 0.5, 0.03, 0, 0, -0.4, 0.9, 0.2, 0.01, -0.3, 0.04, 0.02, 0.6]
    expected = np.corrcoef(pd.Series(dense_a).rank(), pd.Series(dense_b).rank())[0, 1]
    assert spearman(va, vb) == pytest.approx(expected, abs=1e-6)
    assert spearman(va, va) == pytest.approx(1.0)


def test_rank_matches_average_ranks_with_ties() -> None:
    x = np.array([3.0, 1.0, 3.0, 0.0, 0.0, 0.0, 7.0])
    np.testing.assert_array_equal(rank(x), pd.Series(x).rank(method="average").to_numpy())


def test_pruned_copy_keeps_its_keys_and_cosine(models: dict[str, FeatureModel], space: KeySpace) -> None:
    """Post-pruning a model keeps each entry's base-model key: the pruned copy's top-k equals the
    original's, and cosine(original, pruned) = ‖kept part‖ / ‖all‖."""
    a = models["A"]
    keep = torch.sort(a.topk(5)).values
    pruned = a.restrict(keep)
    sp = KeySpace.from_maps([a.param_map, pruned.param_map])  # type: ignore[list-item]
    assert topk_of(pruned, "p", sp, 4).keys.tolist() == topk_of(a, "a", sp, 4).keys.tolist()
    top5 = sorted((abs(v) for v in A_DEC), reverse=True)[:5]
    expected = math.sqrt(sum(v * v for v in top5)) / math.sqrt(sum(v * v for v in A_DEC))
    assert cosine_matrix([sparse_vector(a, sp), sparse_vector(pruned, sp)])[0, 1] == pytest.approx(expected, rel=1e-5)


def test_groups_by_layer_and_module(models: dict[str, FeatureModel], space: KeySpace) -> None:
    tops = [topk_of(models[n], n, space, 4) for n in ("A", "B")]
    layers = group_table(tops, "layer")
    assert layers.index.tolist() == ["0", "1", "other"]
    # A: 3 of 4 in layer 0, 1 in layer 1; B: P1f1, P1f5 (layer 0), P2f0 (1), P3f2 (other)
    np.testing.assert_allclose(layers["A"], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(layers["B"], [0.5, 0.25, 0.25])
    mass = group_table(tops, "layer", weight="mass")
    np.testing.assert_allclose(mass["B"], [0.9 / 2.4, 0.9 / 2.4, 0.6 / 2.4], rtol=1e-6)
    modules = group_table(tops, "module")
    assert modules.loc["model.norm", "B"] == pytest.approx(0.25) and modules.loc["model.norm", "A"] == 0


def test_compare_models_and_save(models: dict[str, FeatureModel], tmp_path) -> None:
    comp = compare_models(models, k=4)
    assert comp.names == ["A", "B", "C"]
    np.testing.assert_array_equal(comp.matrices["overlap_counts"], [[4, 3, 0], [3, 4, 1], [0, 1, 3]])
    for name in ("overlap_min", "jaccard", "cosine", "cosine_abs", "spearman"):
        mat = comp.matrices[name]
        np.testing.assert_allclose(mat, mat.T, err_msg=name)
        np.testing.assert_allclose(np.diag(mat), 1.0, err_msg=name)
    out = comp.save(tmp_path / "cmp", html=False)
    topk = pd.read_csv(out / "topk.csv")
    assert len(topk) == 4 + 4 + 3 and set(topk["model"]) == {"A", "B", "C"}
    assert (topk.loc[topk["model"] == "A", "param"] == [P1, P1, P1, P2]).all()
    saved = pd.read_csv(out / "matrices" / "overlap_min.csv", index_col=0)
    np.testing.assert_allclose(saved.to_numpy(), comp.matrices["overlap_min"])


def test_incompatible_models_are_refused(models: dict[str, FeatureModel]) -> None:
    other = ParamMap([P1], [(3, 2)], [None])  # same name, another shape: another base model
    with pytest.raises(ArtifactError, match="same base model"):
        compare_models({"A": models["A"], "X": FeatureModel(6, param_map=other, seed=0)}, k=2)
    with pytest.raises(ValueError, match="at least two"):
        compare_models({"A": models["A"]})
    with pytest.raises(ValueError, match="unknown part"):
        compare_models(models, part="nope")  # type: ignore[arg-type]
