"""Encoder evaluation on a tiny GRADIEND trained once per module: metrics vs a numpy oracle, neutral
masking, the diff-source invariant, caps, persistence and the figure."""

import itertools
import logging

import numpy as np
import pytest
import torch

from gradedit.data.schema import MASK, DataError, PairDataset
from gradedit.gradiend.evaluate.encoder import EncoderResults, evaluate_encoder
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

CLASSES = ("masc", "fem")
TARGET_WORDS = {"he", "she"}
NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the lazy dog.",
           "Numbers like 1, 2, 3 and symbols appear too.", "The teacher knows the city is quiet."]


@pytest.fixture(scope="module")
def trained(tiny_gpt2, tmp_path_factory):
    recs = pronoun_records(SUBJECTS[:6], VERBS[:4])
    for s, v in itertools.product(SUBJECTS[:6], VERBS[:4]):
        recs.append({"text": f"{s} {v} [MASK] was here.", "factual": " he", "alternative": " he",
                     "factual_class": "masc", "alternative_class": "masc"})
    ds = PairDataset.from_records(recs, target_classes=list(CLASSES), seed=1)
    cfg = TrainConfig(experiment_dir=str(tmp_path_factory.mktemp("enc") / "run"), max_steps=20, eval_steps=10,
                      pre_prune_topk=0.3, eval_max_size=16)
    tr = Trainer(tiny_gpt2, ds, list(CLASSES), neutral=NEUTRAL, config=cfg)
    tr.train()
    return tr


@pytest.fixture(scope="module")
def results(trained):
    return evaluate_encoder(trained.get_model(), trained.data, CLASSES, neutral=NEUTRAL, split="test")


def _pearson(x, y):
    return float(np.corrcoef(x, y)[0, 1])


def test_metrics_match_numpy_oracle(results):
    rows = results.rows
    assert set(rows["data_type"]) == {"training", "identity", "neutral_masked", "neutral"}
    tr = rows[rows["data_type"] == "training"]
    h, y = tr["encoded"].to_numpy(), tr["label"].to_numpy()
    assert set(y) == {1, -1} and (y[tr["class"] == "masc"] == 1).all()
    assert results.correlation == pytest.approx(_pearson(h, y), abs=1e-12)
    assert results.accuracy_binary == pytest.approx(np.mean(np.sign(h) == y))
    ha, ya = rows["encoded"].to_numpy(), rows["label"].to_numpy()
    assert (ya[rows["data_type"] != "training"] == 0).all()
    assert results.correlation_with_neutral == pytest.approx(_pearson(ha, ya), abs=1e-12)
    tern = np.where(ha > 0.5, 1, np.where(ha < -0.5, -1, 0))
    assert results.accuracy == pytest.approx(np.mean(tern == ya))
    for v in (results.correlation, results.correlation_with_neutral):
        assert -1.0 <= v <= 1.0
    assert 0.0 <= results.accuracy <= 1.0 and 0.0 <= results.accuracy_binary <= 1.0
    assert results.mean_by_class["fem"] == pytest.approx(h[tr["class"] == "fem"].mean())
    assert results.mean_by_class["neutral"] == pytest.approx(rows.loc[rows["data_type"] == "neutral", "encoded"].mean())
    stats = results.to_frame().set_index(["data_type", "class"])
    assert stats.loc[("training", "masc"), "count"] == (tr["class"] == "masc").sum()
    assert stats.loc[("training", "masc"), "q50"] == pytest.approx(np.median(h[tr["class"] == "masc"]))
    assert stats["count"].sum() == len(rows) and (np.abs(rows["encoded"]) <= 1).all()


def test_neutral_masked_rows_use_other_words(results, trained):
    rows = results.rows
    nm = rows[rows["data_type"] == "neutral_masked"]
    assert 0 < len(nm) <= (rows["data_type"] == "training").sum()
    filled = {t.replace(" " + MASK, f).replace(MASK, f)
              for t, f in zip(rows.loc[rows["data_type"] == "training", "text"],
                              rows.loc[rows["data_type"] == "training", "factual"])}
    for t, f, a in zip(nm["text"], nm["factual"], nm["alternative"]):
        assert t.count(MASK) == 1 and f == a and f.startswith(" ")
        assert f.strip().lower() not in TARGET_WORDS
        trained.lm.token_id(f)  # one token
        left = t.split(MASK)[0]
        assert len(left.split()) >= 3
        assert t.replace(MASK, f.strip()) in filled  # same context, another target word
    for t in rows.loc[rows["data_type"] == "neutral", "text"]:
        assert t.count(MASK) == 1


def test_explicit_encoding_agrees_on_neutral_rows(results, trained):
    nm = results.rows[results.rows["data_type"] == "neutral_masked"].head(3)
    ds = PairDataset.from_records([{"text": t, "factual": f, "alternative": f, "factual_class": "neutral",
                                    "alternative_class": "neutral", "label": 0, "split": "test"}
                                   for t, f in zip(nm["text"], nm["factual"])])
    explicit = trained.get_model().encode(ds, method="explicit")
    np.testing.assert_allclose(explicit, nm["encoded"].to_numpy(), atol=1e-5)


def test_diff_source_neutral_rows_encode_to_tanh_bias(trained):
    mwg = ModelWithGradiend(trained.lm, trained.feature_model, source="diff")
    res = evaluate_encoder(mwg, trained.data, CLASSES, neutral=NEUTRAL, split="test", max_size=6)
    zero = res.rows["label"] == 0
    assert set(res.rows.loc[zero, "data_type"]) == {"identity", "neutral_masked", "neutral"}
    b = float(trained.feature_model.encoder_bias.detach()[0])
    expected = torch.tanh(torch.zeros(int(zero.sum()), dtype=torch.float64) + b).numpy()
    np.testing.assert_array_equal(res.rows.loc[zero, "encoded"].to_numpy(), expected)
    assert not np.all(res.rows.loc[~zero, "encoded"].to_numpy() == expected[0])


def test_max_size_caps_balances_and_is_deterministic(trained):
    mwg = trained.get_model()
    a = evaluate_encoder(mwg, trained.data, CLASSES, neutral=NEUTRAL, split="train", max_size=10, seed=3)
    b = evaluate_encoder(mwg, trained.data, CLASSES, neutral=NEUTRAL, split="train", max_size=2, seed=3)
    tr = a.rows[a.rows["data_type"] == "training"]
    assert tr["class"].value_counts().to_dict() == {"masc": 5, "fem": 5}
    assert (a.rows["data_type"] == "identity").sum() <= 10
    assert (b.rows["data_type"] == "training").sum() == 2 and (b.rows["data_type"] == "neutral").sum() <= 2
    n_train = len(trained.data.split("train").to_frame().query("label != 0"))
    assert n_train > 10
    again = evaluate_encoder(mwg, trained.data, CLASSES, split="train", max_size=10, seed=3)
    assert again.rows.loc[again.rows["data_type"] == "training", "text"].tolist() == tr["text"].tolist()


def test_errors_and_skipped_neutral(trained, caplog):
    mwg = trained.get_model()
    with pytest.raises(DataError, match="unknown split"):
        evaluate_encoder(mwg, trained.data, CLASSES, split="dev")
    with pytest.raises(ValueError, match="classes"):
        evaluate_encoder(mwg, trained.data, ("masc", "neut"))
    no_test = trained.data.where(trained.data.to_frame()["split"] != "test")
    with pytest.raises(ValueError, match="'test' split is empty"):
        evaluate_encoder(mwg, no_test, CLASSES)
    with caplog.at_level(logging.INFO, logger="gradedit.gradiend.evaluate.encoder"):
        res = evaluate_encoder(mwg, trained.data, CLASSES, neutral=["Hi.", "a b c"], max_size=2)
    assert "neutral" not in set(res.rows["data_type"]) and "no usable neutral rows" in caplog.text


def test_save_load_round_trip_and_plot(results, tmp_path):
    path = results.save(tmp_path / "encoder.json")
    assert (tmp_path / "encoder_rows.csv").is_file()
    again = EncoderResults.load(path)
    assert again.to_dict() == results.to_dict()
    for col in ("text", "factual", "alternative", "data_type", "class", "label"):
        assert again.rows[col].tolist() == results.rows[col].tolist(), col
    np.testing.assert_array_equal(again.rows["encoded"].to_numpy(), results.rows["encoded"].to_numpy())
    fig = again.plot(tmp_path / "enc.png")
    assert fig is not None and (tmp_path / "enc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_factual_source_reading_of_a_diff_encoder_spreads_neutral_rows(trained, tmp_path):
    """The paper's analysis: a diff-trained encoder read with the factual gradient gives neutral rows a
    real distribution (with "diff" they are all tanh(b_e)), and equals the explicit <w_e, grad> oracle."""
    tr = Trainer.load(trained.experiment_dir, lm=trained.lm)
    tr.config = tr.config.replace(source="diff")
    fm = trained.feature_model
    diff = evaluate_encoder(ModelWithGradiend(trained.lm, fm, source="diff"), trained.data, CLASSES,
                            neutral=NEUTRAL, max_size=6)
    fact = evaluate_encoder(ModelWithGradiend(trained.lm, fm, source="diff"), trained.data, CLASSES,
                            neutral=NEUTRAL, max_size=6, source="factual")
    assert fact.info["source"] == "factual" and fact.info["trained_source"] == "diff"
    neutral = fact.rows[fact.rows["data_type"].isin(["neutral", "neutral_masked"])]["encoded"].to_numpy()
    assert neutral.std() > 1e-6
    assert diff.rows[diff.rows["data_type"] == "neutral"]["encoded"].std() == 0.0
    # oracle: tanh(<w_e, factual gradient> + b_e) computed explicitly for the first neutral row
    row = fact.rows[fact.rows["data_type"] == "neutral"].iloc[0]
    ds = PairDataset.from_records([{"text": row["text"], "factual": row["factual"], "alternative": row["factual"],
                                    "factual_class": "neutral", "alternative_class": "neutral", "label": 0,
                                    "split": "test"}])
    explicit = ModelWithGradiend(trained.lm, fm, source="factual").encode(ds, method="explicit")
    np.testing.assert_allclose(explicit, [row["encoded"]], atol=1e-5)
    with pytest.raises(ValueError, match="source must be one of"):
        evaluate_encoder(trained.get_model(), trained.data, CLASSES, source="grad")  # type: ignore[arg-type]
    # Trainer: saved beside the trained-source results under a suffix, with its own figure
    res = tr.evaluate_encoder(max_size=4, plot=True, source="factual")
    assert (tr.experiment_dir / "encoder_results_test_factual.json").is_file()
    assert (tr.experiment_dir / "encoder_test_factual.png").is_file()
    assert res.info["source"] == "factual"
