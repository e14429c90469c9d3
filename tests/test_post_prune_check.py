"""Post-pruning measures the pruned encoder again: a pruning that keeps inputs without the encoder's
evidence is reported (warning + ``metadata["post_prune"]``), one that keeps them is not."""

from __future__ import annotations

import logging

import pytest
import torch

from gradedit.data.schema import PairDataset
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.gradients import GradientEngine
from gradedit.gradiend.rows import rows_of
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.postprune import post_prune
from gradedit.models.param_map import ParamMap
from pronoun_rows import pronoun_records


@pytest.fixture(scope="module")
def setup(tiny_gpt2):
    data = PairDataset.from_records(pronoun_records(), target_classes=["masc", "fem"])
    rows = rows_of(data, tiny_gpt2)
    engine = GradientEngine(tiny_gpt2, ["*.mlp.*"])
    pmap = ParamMap.from_params(engine.params)
    grads = torch.stack([engine.gradient_vectors([rows.texts[i]], rows.factual[[i]], rows.alternative[[i]],
                                                 ["diff"], pmap)["diff"] for i in range(len(rows))])
    labels = rows.labels.double()
    direction = (grads[labels > 0].mean(0) - grads[labels < 0].mean(0)).float()  # a linear discriminant
    half = pmap.size // 2
    evidence = torch.topk(direction.abs(), half).indices  # the encoder lives on these inputs ...
    others = torch.ones(pmap.size, dtype=torch.bool)
    others[evidence] = False
    fm = FeatureModel(pmap.size, 1, param_map=pmap, seed=0)
    with torch.no_grad():
        w = torch.zeros(pmap.size)
        w[evidence] = direction[evidence]
        fm.encoder_weight.copy_((w / w.norm() * 50).reshape(1, -1))
        fm.encoder_bias.zero_()
        d = torch.zeros(pmap.size)
        d[others] = torch.rand(int(others.sum())) + 1.0  # ... and the decoder's largest weights on the others
        fm.decoder_weight.copy_(d.reshape(-1, 1))
    return engine, rows, fm, half


def test_pruning_away_the_encoders_inputs_is_reported(setup, caplog) -> None:
    engine, rows, fm, half = setup
    cfg = TrainConfig(post_prune_topk=half, post_prune_part="decoder-weight")
    with caplog.at_level(logging.WARNING, logger="gradedit.gradiend.train.postprune"):
        pruned = post_prune(fm, engine, rows, cfg)
    info = pruned.metadata["post_prune"]
    assert pruned.input_dim == half and info["inputs_before"] == fm.input_dim
    assert info["val_r_before"] > 0.9  # the hand-built encoder separates the classes
    assert abs(info["val_r_after"]) < 0.5  # its inputs were pruned away
    assert "broke the encoder" in caplog.text and "post_prune_part" in caplog.text


def test_pruning_that_keeps_the_encoders_inputs_is_quiet(setup, caplog) -> None:
    engine, rows, fm, half = setup
    cfg = TrainConfig(post_prune_topk=half, post_prune_part="encoder-weight")
    with caplog.at_level(logging.WARNING, logger="gradedit.gradiend.train.postprune"):
        pruned = post_prune(fm, engine, rows, cfg)
    info = pruned.metadata["post_prune"]
    assert info["val_r_after"] == pytest.approx(info["val_r_before"], abs=1e-6) and info["val_r_before"] > 0.9
    assert "broke the encoder" not in caplog.text


def test_no_post_pruning_returns_the_model(setup) -> None:
    engine, rows, fm, _ = setup
    assert post_prune(fm, engine, rows, TrainConfig(post_prune_topk=None)) is fm
