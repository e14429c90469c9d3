"""``Suite`` on a tiny model with 3 classes (he / she / they): pairs, one shared pre-pruning pass,
resuming per pair, and the comparison at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gradedit.data.schema import PairDataset
from gradedit.errors import UnsafeName
from gradedit.gradiend import suite as suite_mod
from gradedit.gradiend.compare import KeySpace
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.suite import Suite, one_vs_rest, suite_pairs
from pronoun_rows import SUBJECTS, THREE_CLASS_TOKENS, VERBS, three_class_records

TOKENS = THREE_CLASS_TOKENS


def three_class_data() -> PairDataset:
    # labels of the pairs other than masc/fem are 0
    return PairDataset.from_records(three_class_records(SUBJECTS, VERBS), target_classes=["masc", "fem"])


CONFIG = {"max_steps": 12, "eval_steps": 6, "pre_prune_topk": 1500, "pre_prune_samples": 12, "eval_max_size": 16,
          "post_prune_topk": 300}


@pytest.fixture(scope="module")
def trained(tiny_gpt2, tmp_path_factory: pytest.TempPathFactory) -> Suite:
    suite = Suite(tiny_gpt2, three_class_data(), "all", config=CONFIG,
                  experiment_dir=tmp_path_factory.mktemp("suite") / "s")
    suite.train()
    return suite


def test_pairs_modes() -> None:
    data = three_class_data()
    assert suite_pairs(data, "all") == [("fem", "masc"), ("fem", "plur"), ("masc", "plur")]
    assert suite_pairs(data, "one-vs-rest") == [("fem", "not_fem"), ("masc", "not_masc"), ("plur", "not_plur")]
    assert suite_pairs(data, [("masc", "fem")]) == [("masc", "fem")]
    with pytest.raises(ValueError, match="not two different classes"):
        suite_pairs(data, [("masc", "neut")])
    with pytest.raises(ValueError, match="twice"):
        suite_pairs(data, [("masc", "fem"), ("fem", "masc")])
    with pytest.raises(ValueError, match="'all', 'one-vs-rest'"):
        suite_pairs(data, "some")
    # a pair without rows between its classes is skipped in "all"
    frame = data.to_frame()
    keep = ~((frame["factual_class"].isin(["masc", "plur"])) & (frame["alternative_class"].isin(["masc", "plur"])))
    assert suite_pairs(data.where(keep.to_numpy()), "all") == [("fem", "masc"), ("fem", "plur")]


def test_one_vs_rest_relabels() -> None:
    ds = one_vs_rest(three_class_data(), "masc").to_frame()
    assert set(ds["factual_class"]) == {"masc", "not_masc"}
    assert (ds.loc[ds["factual_class"] == "masc", "label"] == 1).all()
    assert (ds.loc[(ds["factual_class"] == "not_masc") & (ds["alternative_class"] == "masc"), "label"] == -1).all()
    # he<->they and she<->they pairs stay; she<->they is now identity (label 0)
    same = ds[(ds["factual_class"] == "not_masc") & (ds["alternative_class"] == "not_masc")]
    assert len(same) == len(SUBJECTS) * len(VERBS) * 2 and (same["label"] == 0).all()


def test_a_pair_gets_only_the_rows_between_its_two_classes(tiny_gpt2, tmp_path: Path) -> None:
    data = three_class_data()
    suite = Suite(tiny_gpt2, data, "all", config=CONFIG, experiment_dir=tmp_path / "s")
    frame = data.to_frame()
    for pair in suite.pairs:
        got = suite.pair_data(pair).with_targets(list(pair)).to_frame()
        inside = frame["factual_class"].isin(pair) & frame["alternative_class"].isin(pair)
        assert len(got) == int(inside.sum()) < len(frame)
        assert set(got["factual_class"]) | set(got["alternative_class"]) == set(pair)
        assert (got["label"] != 0).all()  # no row of another pair rides along as a label-0 row


def test_every_pair_trains_on_the_one_shared_input_space(trained: Suite) -> None:
    shared = trained.shared_map
    assert shared is not None and shared.size == 1500
    space = KeySpace.from_maps([shared])
    shared_keys = set(space.keys(shared).tolist())
    for pair in trained.pairs:
        d = trained.pair_dir(pair)
        # the Trainer trained on the space it was given (every seed checkpoint), and pre-pruned nothing itself
        assert all(FeatureModel.from_pretrained(b).param_map == shared for b in d.glob("seed_*/best"))
        assert len(list(d.glob("seed_*/best"))) >= 1 and not (d / "pre_prune").exists()
        model = FeatureModel.from_pretrained(d / "model")
        assert model.metadata["classes"] == list(pair) and model.input_dim == 300
        assert set(space.keys(model.param_map).tolist()) <= shared_keys  # post-pruned inside the shared space
        assert (d / "encoder_results_test.json").is_file()
    state = json.loads((trained.experiment_dir / "suite.json").read_text())
    assert sorted(state["pairs"]) == ["fem-vs-masc", "fem-vs-plur", "masc-vs-plur"]
    assert all(r["finished"] and r["shared_pre_pruning"] for r in state["pairs"].values())


def test_rerun_skips_finished_pairs_and_retrains_a_missing_one(trained: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = suite_mod.Trainer.train

    def counting(self):  # type: ignore[no-untyped-def]
        calls.append(tuple(self.classes))
        return original(self)

    monkeypatch.setattr(suite_mod.Trainer, "train", counting)
    again = Suite(trained.lm, trained.data, "all", config=CONFIG, experiment_dir=trained.experiment_dir)
    before = {p: (trained.pair_dir(p) / "model" / "model.safetensors").read_bytes() for p in trained.pairs}
    again.train()
    assert calls == []
    state_file = trained.experiment_dir / "suite.json"
    state = json.loads(state_file.read_text())
    del state["pairs"]["fem-vs-plur"]
    state_file.write_text(json.dumps(state))
    again.train()
    assert calls == [("fem", "plur")]
    for p in (("fem", "masc"), ("masc", "plur")):
        assert (trained.pair_dir(p) / "model" / "model.safetensors").read_bytes() == before[p]
    # a changed config is not "finished": that pair would be trained again
    changed = Suite(trained.lm, trained.data, "all", config={**CONFIG, "learning_rate": 5e-4},
                    experiment_dir=trained.experiment_dir)
    assert not any(changed.is_done(p) for p in changed.pairs)


def test_suite_ends_in_the_comparison(trained: Suite) -> None:
    comp = trained.compare(k=50)
    assert comp.names == ["fem-vs-masc", "fem-vs-plur", "masc-vs-plur"]
    np.testing.assert_array_equal(np.diag(comp.matrices["overlap_counts"]), [50, 50, 50])
    assert comp.cross is not None
    # the diagonal of the cross-encoding is each pair's own test r, as evaluate_encoder wrote it
    for i, pair in enumerate(trained.pairs):
        enc = json.loads((trained.pair_dir(pair) / "encoder_results_test.json").read_text())
        assert comp.cross.correlation[i, i] == pytest.approx(enc["correlation"], abs=1e-6)
        assert comp.runs[i].encoder_r == pytest.approx(enc["correlation"])
    assert set(comp.cross.class_means["fem-vs-masc"]) == {"fem", "masc", "plur"}
    out = trained.experiment_dir / "compare"
    assert (out / "report.html").is_file() and (out / "topk.csv").is_file()
    assert "Venn diagram" in (out / "report.html").read_text()


def test_unshared_pairs_pre_prune_on_their_own(tiny_gpt2, tmp_path: Path) -> None:
    suite = Suite(tiny_gpt2, three_class_data(), [("masc", "fem")], config={**CONFIG, "max_steps": 2, "eval_steps": 2},
                  experiment_dir=tmp_path / "u", share_pre_pruning=False, evaluate=False)
    suite.train()
    assert suite.shared_map is None and not (tmp_path / "u" / "shared_pre_prune").exists()
    assert FeatureModel.from_pretrained(suite.pair_dir(("masc", "fem")) / "pre_prune").param_map.size == 1500


def test_one_vs_rest_suite_names_original_classes(tiny_gpt2, tmp_path: Path) -> None:
    suite = Suite(tiny_gpt2, three_class_data(), "one-vs-rest", config={**CONFIG, "max_steps": 4, "eval_steps": 2},
                  experiment_dir=tmp_path / "ovr", evaluate=False)
    comp = suite.run(k=30)
    assert comp.names == ["fem-vs-not_fem", "masc-vs-not_masc", "plur-vs-not_plur"]
    assert comp.cross is not None
    # class means are over the ORIGINAL classes, not the relabelled not_<c> of whichever pair a row came from
    assert all(set(m) == {"fem", "masc", "plur"} for m in comp.cross.class_means.values())
    # each pair's held-out rows: its class against the rest, at most 32 (balanced over the two labels)
    assert all(0 < n <= 32 for n in comp.cross.rows.values())


def test_class_pairs_that_cannot_name_a_folder_are_refused_before_training(tiny_gpt2, tmp_path: Path) -> None:
    """Each id is a safe name (checked when the data loads), but ``A-vs-B`` can still be too long: the suite
    refuses it when it is built, and never rewrites it (two pairs could then share a folder)."""
    long = {"masc": "m" * 130, "fem": "f" * 130}
    frame = three_class_data().to_frame().drop(columns="label").replace({"factual_class": long,
                                                                        "alternative_class": long})
    data = PairDataset.from_frame(frame, target_classes=list(long.values()))
    with pytest.raises(UnsafeName, match=r"^class pair 'mmm.*\.\.\.' is longer than 255 bytes"):
        Suite(tiny_gpt2, data, [tuple(long.values())], config=CONFIG, experiment_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert Suite.pair_name(("a b", "c")) == "a b-vs-c"  # safe characters stay as they are
