"""``LatentTrainer`` under a launcher (2 gloo processes) == 1 process: the same trained k-latent model
(every tensor within 1e-6), the same kept step, R and class means, the same orientation of the latents,
the same ``evaluate_latents`` metrics and decoder selections; the validation and ``evaluate_latents``
encodings are split over the ranks (each rank encodes its share, the shares add up to one process's
rows); rank 0 alone writes, and every rank returns the same results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from gradedit import dist
from gradedit.data.schema import PairDataset
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.gradients import GradientEngine
from gradedit.gradiend.train.latent import LatentTrainer
from json_close import assert_json_close
from pronoun_rows import SUBJECTS, VERBS, three_class_records

pytestmark = pytest.mark.xdist_group("dist_latent")

CLASSES = ["masc", "fem", "plur"]
# 21 validation rows: 3 jvp batches of 8, split 2 + 1 over the ranks; 3 examples per step (2 + 1)
CONFIG: dict[str, Any] = {"latent_dim": 2, "max_steps": 6, "eval_steps": 2, "train_batch_size": 3,
                          "pre_prune_topk": 0.2, "pre_prune_samples": 7, "eval_max_size": 21,
                          "early_stopping_patience": None}
SWEEP: dict[str, Any] = {"latents": [0], "learning_rates": [1e-3, 1e-1], "refine_steps": 0, "max_rows_per_class": 4,
                         "max_neutral": 1, "use_cache": False}
# a sweep's fingerprint hashes the feature model's bytes, which differ in the float addition order
IGNORED = ("seconds", "directory", "experiment_dir", "folder", "fingerprint")


def _data() -> PairDataset:
    return PairDataset.from_records(three_class_records(SUBJECTS, VERBS), target_classes=["masc", "fem"])


def _count_encoded(counts: dict[str, int]) -> None:
    """Count the rows every jvp encoding pass reads (all encodings go through ``jvp_dot``)."""
    dot = GradientEngine.jvp_dot

    def counted(self: GradientEngine, texts: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        counts["rows"] += len(texts)
        return dot(self, texts, *args, **kwargs)

    GradientEngine.jvp_dot = counted  # type: ignore[method-assign]


def _run(lm: ge.LanguageModel, out: Path) -> dict[str, Any]:
    counts = {"rows": 0}
    _count_encoded(counts)
    tr = LatentTrainer(lm, _data(), CLASSES, neutral=["The sky is blue today."],
                       config={**CONFIG, "experiment_dir": str(out)})
    fm = tr.train()
    trained_rows = counts["rows"]
    metrics = tr.evaluate_latents("test")
    sweeps = tr.evaluate_latent_decoders(**SWEEP)
    return {"model": {n: p.detach().tolist() for n, p in fm.named_parameters()},
            "metadata": fm.metadata, "runs": tr.training_runs(), "metrics": metrics.to_dict(),
            "sweeps": {k: v.to_dict() for k, v in sweeps.items()},
            "encoded_rows": {"training": trained_rows, "evaluate_latents": counts["rows"] - trained_rows}}


def _worker(root: str) -> None:
    torch.set_num_threads(1)
    lm = ge.load_model("tiny-llama")
    writes: list[str] = []
    if not dist.is_main():  # every finished file of gradedit's atomic writes is renamed into place
        replace, rename = os.replace, Path.rename

        def spy_replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            writes.append(str(dst))
            replace(src, dst, *a, **k)

        def spy_rename(self: Path, target: Any) -> Path:
            writes.append(str(target))
            return rename(self, target)

        os.replace = spy_replace  # type: ignore[assignment]
        Path.rename = spy_rename  # type: ignore[method-assign]
    out = _run(lm, Path(root, "run"))
    out["writes"] = writes
    Path(root, f"rank{dist.rank()}.json").write_text(json.dumps(out))


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist_latent")
    dist.launch_local(_worker, 2, str(root))
    return root


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory, tiny_llama: ge.LanguageModel) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("one_latent")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same gradient bits
    dot = GradientEngine.jvp_dot
    try:
        return root, json.loads(json.dumps(_run(tiny_llama, root / "run")))
    finally:
        GradientEngine.jvp_dot = dot  # type: ignore[method-assign]
        torch.set_num_threads(threads)


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def test_two_process_latent_training_equals_one_process(one: tuple[Path, dict[str, Any]], two: Path) -> None:
    one_dir, ref = one
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in range(2)]
    # every rank returned the same model, metadata (orientation, R on val), history and metrics, bit for bit
    for key in ("model", "metadata", "metrics", "sweeps"):
        assert ranks[0][key] == ranks[1][key], key
    assert _untimed(ranks[0]["runs"]) == _untimed(ranks[1]["runs"])  # every decision the same
    got = ranks[0]
    # the same trained model as one process, float addition order aside
    assert got["model"].keys() == ref["model"].keys()
    for k in ref["model"]:
        torch.testing.assert_close(torch.tensor(got["model"][k]), torch.tensor(ref["model"][k]), atol=1e-6, rtol=1e-5,
                                   msg=k)
    # and training moved it far beyond that tolerance (the comparison can fail)
    trained = FeatureModel.from_pretrained(one_dir / "run" / "seed_0" / "best")  # model/ is post-pruned
    init = FeatureModel(trained.input_dim, 2, param_map=trained.param_map, seed=0)
    assert (trained.decoder_weight - init.decoder_weight).abs().max() > 1e-3
    # the same kept step, R, class means, orientation (latent_metrics_val of the oriented model) and sweeps
    r1, r2 = ref["runs"][0], got["runs"][0]
    assert r2["best_step"] == r1["best_step"] and r2["last_step"] == r1["last_step"]
    assert_json_close(ref["runs"], got["runs"], ignore=IGNORED, rel_tol=1e-5, abs_tol=1e-6)
    assert_json_close(ref["metadata"], got["metadata"], ignore=IGNORED, rel_tol=1e-5, abs_tol=1e-6)
    assert_json_close(ref["metrics"], got["metrics"], rel_tol=1e-5, abs_tol=1e-6)
    assert_json_close(ref["sweeps"], got["sweeps"], ignore=IGNORED, rel_tol=1e-5, abs_tol=1e-6)
    for key, sweep in ref["sweeps"].items():  # the same selected points
        for cls, sel in sweep["selections"].items():
            other = got["sweeps"][key]["selections"][cls]
            assert (other["learning_rate"], other["feature_factor"]) == (sel["learning_rate"], sel["feature_factor"])


def test_latent_encodings_are_split_over_the_ranks(one: tuple[Path, dict[str, Any]], two: Path) -> None:
    ref = one[1]["encoded_rows"]
    ranks = [json.loads((two / f"rank{r}.json").read_text())["encoded_rows"] for r in range(2)]
    for part in ("training", "evaluate_latents"):  # validation (+ orientation, post-pruning); the test split
        assert ref[part] > 0 and all(0 < r[part] < ref[part] for r in ranks), part
        assert ranks[0][part] + ranks[1][part] == ref[part], part


def test_only_rank_0_writes(one: tuple[Path, dict[str, Any]], two: Path) -> None:
    assert _files(two / "run") == _files(one[0] / "run")  # what one process writes, and nothing more
    assert (two / "run" / "latent_metrics_test.json").is_file()
    assert {p for p in _files(two / "run") if p.startswith("decoder_latent0_")} == {
        "decoder_latent0_strengthen.json", "decoder_latent0_weaken.json"}
    rank1 = json.loads((two / "rank1.json").read_text())
    assert rank1["writes"] == []  # rank 1 finished no file (checkpoints, models, JSON)
    saved = json.loads((two / "run" / "latent_metrics_test.json").read_text())
    assert saved == {"split": "test", **rank1["metrics"]}
