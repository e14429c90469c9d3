"""Blast radius with 2 gloo processes (texts split over ranks, sums combined) == 1 process: every
number of the report within float tolerance, per-token records in text order, a corpus of one text
(one rank scores nothing) included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit import dist
from gradedit.blast import TargetSpec, blast_radius
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


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    rep = _report(ge.load_model("tiny-llama"))
    Path(out, f"rank{dist.rank()}.json").write_text(json.dumps(rep))


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
        assert isinstance(b, (int, float)) and (math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_two_process_blast_report_equals_one_process(tmp_path: Path, tiny_llama: ge.LanguageModel) -> None:
    dist.launch_local(_worker, 2, str(tmp_path))
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
