"""``gradedit compare`` on two tiny trained runs (pruned differently), and the report in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chromium import external, guarded_page
from gradedit.cli import main
from gradedit.cli.compare import PARTS
from gradedit.data.schema import PairDataset
from gradedit.gradiend.feature_model import PARTS as MODEL_PARTS
from gradedit.gradiend.train import TrainConfig, Trainer
from pronoun_rows import pronoun_records

K = 40


@pytest.fixture(scope="module")
def runs(tiny_gpt2, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs of the same pair: one pre-pruned to 2000 entries then post-pruned to half, one not
    pre-pruned and post-pruned to 300 entries (different input spaces)."""
    data = PairDataset.from_records(pronoun_records(), target_classes=["masc", "fem"])
    root = tmp_path_factory.mktemp("compare_runs")
    out = {}
    for name, extra in [("pre", {"pre_prune_topk": 2000, "post_prune_topk": 0.5, "seed": 0}),
                        ("post", {"pre_prune_topk": None, "post_prune_topk": 300, "seed": 1})]:
        cfg = TrainConfig(experiment_dir=str(root / name), max_steps=12, eval_steps=6, pre_prune_samples=8,
                          eval_max_size=16, **extra)
        Trainer(tiny_gpt2, data, ["masc", "fem"], config=cfg).train()
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def report(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "out"
    code = main(["compare", str(runs["pre"]), str(runs["post"]), "--out", str(out), "--topk", str(K)])
    assert code == 0
    return out


def test_cli_parts_match_the_library() -> None:
    assert sorted(PARTS) == sorted(MODEL_PARTS)


def test_compare_writes_tables_and_figures(report: Path, runs: dict[str, Path], tiny_gpt2) -> None:
    comp = json.loads((report / "comparison.json").read_text())
    assert comp["names"] == ["pre", "post"]
    counts = np.array(comp["matrices"]["overlap_counts"])
    assert counts[0, 0] == counts[1, 1] == K and 0 <= counts[0, 1] <= K
    assert comp["matrices"]["overlap_min"][0][1] == pytest.approx(counts[0, 1] / K)
    # the top-k export names real parameters of the base model, with in-range coordinates
    topk = pd.read_csv(report / "topk.csv")
    assert len(topk) == 2 * K
    shapes = {n: tuple(p.shape) for n, p in tiny_gpt2.model.named_parameters()}
    for row in topk.itertuples():
        shape = shapes[row.param]
        assert 0 <= row.row < shape[0] and 0 <= row.col < shape[1]
        assert row.row * shape[1] + row.col == row.flat_index
    # both runs read the same pair, so their encoders separate each other's rows as well
    cross = np.array(comp["cross"]["correlation"])
    assert cross.shape == (2, 2)
    for name in ("overlap_sets", "heatmap_overlap", "heatmap_cosine", "layers", "modules", "cross"):
        assert (report / f"{name}.png").stat().st_size > 1000
    for name in ("cosine", "spearman", "mass_overlap"):
        assert (report / "matrices" / f"{name}.csv").is_file()


def test_cross_encoding_diagonal_is_each_encoder_r(report: Path, runs: dict[str, Path], tiny_gpt2) -> None:
    """Oracle: the diagonal equals the encoder r that ``evaluate_encoder`` computes on the same test rows
    (the test split has fewer than 32 rows, so both use all of them)."""
    comp = json.loads((report / "comparison.json").read_text())
    cross = np.array(comp["cross"]["correlation"])
    for i, name in enumerate(("pre", "post")):
        enc = Trainer.load(runs[name], lm=tiny_gpt2).evaluate_encoder(split="test")
        assert cross[i, i] == pytest.approx(enc.correlation, abs=1e-6)
    # class means are oriented: masc (class A, label +1) above fem for a model whose r is positive
    means = comp["cross"]["class_means"]
    for i, name in enumerate(("pre", "post")):
        if cross[i, i] > 0.5:
            assert means[name]["masc"] > means[name]["fem"]


def test_report_loads_offline_in_chromium(report: Path) -> None:
    requests: list[str] = []
    with guarded_page(requests) as pg:
        pg.goto((report / "report.html").as_uri())
        imgs = pg.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.src.slice(0, 15)])")
        assert len(imgs) == 7  # sets, 3 heatmaps, layers, modules, cross
        assert all(ok and width > 100 and src.startswith("data:image/png") for ok, width, src in imgs)
        text = pg.inner_text("body")
        assert "Venn diagram" in text and "Cross-encoding" in text and "pre" in text
    assert external(requests) == []


def test_compare_usage_errors(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pre = str(runs["pre"])
    cases = [
        ([pre, "--out", str(tmp_path / "a")], "at least two"),
        ([pre, pre, "--out", str(tmp_path / "b")], "given twice"),
        ([pre, str(tmp_path), "--out", str(tmp_path / "c")], "no trained feature model"),
        ([pre, str(runs["post"]), "--out", str(tmp_path)], "exists"),
    ]
    for argv, message in cases:
        assert main(["compare", *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["compare", pre, str(runs["post"]), "--out", str(tmp_path / "d"), "--topk", "1.5"]) == 2
    assert "fraction" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_compare_without_cross_encoding(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "nocross"
    assert main(["compare", str(runs["pre"]), str(runs["post"]), "--out", str(out), "--topk", "0.1",
                 "--part", "encoder-weight", "--no-cross"]) == 0
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["cross"] is None and comp["part"] == "encoder-weight"
    sizes = np.diag(np.array(comp["matrices"]["overlap_counts"]))
    inputs = [s["inputs"] for s in comp["summary"]]
    assert sizes.tolist() == [round(0.1 * n) for n in inputs]  # a fraction of each model's own inputs
    assert "Not computed" in (out / "report.html").read_text()
