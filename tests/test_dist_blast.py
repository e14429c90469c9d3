"""Blast radius with 2 gloo processes (texts split over ranks, sums combined) == 1 process: every
number of the report within float tolerance, per-token records in text order, a corpus of one text
(one rank scores nothing) included; the Pareto sweep (its edits scored on the same text split) too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit import dist
from gradedit.blast import TargetSpec, blast_radius, pareto_sweep
from gradedit.edits import WeightEdit

CORPORA = {
    "en": ["He said that she would be late.", "The nurse thinks the city is quiet.", "She knows he is here.",
           "The teacher and the house are old, and it is late."],
    "de": ["Der Mann ist hier.", "Die Frau sagt, dass er kommt.", "Das Haus ist alt."],
    "one": ["Le chat noir dort sur la chaise."],
}
TARGET = TargetSpec(["He said that she would be late and he left.", "She knows he is here."], [" he", " she"])


def _edit(lm: ge.LanguageModel) -> WeightEdit:
    name, p = [(n, p) for n, p in ge.select_parameters(lm.model).items() if p.ndim == 2][3]
    return WeightEdit.dense({name: torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5})


def _report(lm: ge.LanguageModel) -> dict:
    return blast_radius(lm, _edit(lm), CORPORA, TARGET, control=True, batch_size=2).to_dict(tokens=True)


def _pareto(lm: ge.LanguageModel) -> dict:
    edit = _edit(lm)
    frame = pareto_sweep(lm, lambda v: edit.scaled(v), [0.25, 0.5, 1.0], CORPORA, "en", control=True, chunk=2,
                         batch_size=2)
    return frame.to_dict("list")


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    lm = ge.load_model("tiny-llama")
    Path(out, f"rank{dist.rank()}.json").write_text(json.dumps(_report(lm)))
    Path(out, f"pareto{dist.rank()}.json").write_text(json.dumps(_pareto(lm)))


def _close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            if k not in ("seconds", "elapsed_s"):
                _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert isinstance(b, (int, float)) and (math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
                                                or (math.isnan(a) and math.isnan(b))), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def two_process_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-process launch writes each rank's report and Pareto frame."""
    out = tmp_path_factory.mktemp("dist_blast")
    dist.launch_local(_worker, 2, str(out))
    return out


def test_two_process_blast_report_equals_one_process(two_process_dir: Path, tiny_llama: ge.LanguageModel) -> None:
    tmp_path = two_process_dir
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = json.loads(json.dumps(_report(tiny_llama)))
    finally:
        torch.set_num_threads(threads)
    assert r0 == r1  # every rank holds the combined report
    _close(ref, r0)
    assert r0["tokens"]["en"][0]["tokens"][:2] == ref["tokens"]["en"][0]["tokens"][:2]  # text order kept
    assert any(abs(v) > 1e-3 for v in r0["ce_delta"].values())  # the edit does something to compare
    with pytest.raises(AssertionError):  # and the comparison would see a change of 1e-3
        _close(ref, json.loads(json.dumps(ref).replace(str(ref["global_kl"]), str(ref["global_kl"] * 1.001))))


def test_two_process_pareto_sweep_equals_one_process(two_process_dir: Path, tiny_llama: ge.LanguageModel) -> None:
    """``pareto_sweep`` under 2 processes: each value's edit (and control) is scored on each rank's block
    of every corpus, so the frame equals the 1-process frame within float tolerance."""
    p0, p1 = (json.loads((two_process_dir / f"pareto{r}.json").read_text()) for r in range(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = json.loads(json.dumps(_pareto(tiny_llama)))
    finally:
        torch.set_num_threads(threads)
    assert p0 == p1
    _close(ref, p0)
    assert ref["value"] == [0.25, 0.5, 1.0] and len(set(ref["off_target"])) == 3  # three different edits
