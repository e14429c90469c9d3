"""Reproducibility end to end (issue 18.4): the README's command-line workflow (``data build`` →
``train`` → ``evaluate encoder`` → ``evaluate decoder`` → ``rewrite`` → ``blast``, sized down as in
``test_cli_workflow.py``) and a tiny ``gradedit decompose --preset tiny`` run twice, from scratch, with
the same seeds, into two folders, and every artifact compared.

The two runs share nothing but the installed package: each has its own working folder (of a
different path length), its own empty ``$GRADEDIT_CACHE`` and its own ``PYTHONHASHSEED`` (1 vs 2, so
set/dict-order or ``hash()`` dependence shows). Run A is how a user works: one fresh
``python -m gradedit ...`` process per command. Run B is a single fresh process that calls the CLI's
``main`` for every command in turn, so a result that depended on state one command leaves in the
process for the next (RNG, caches, thread counts) would differ as well. Both use OMP_NUM_THREADS=1
and the README's relative paths inside their folder.

What must be equal:

- datasets, CSV tables, tokenizer files, configs, the convergence PNG, the lock files: bytes;
- ``*.safetensors`` (feature models, pre-pruning, checkpoints, trainer state, the rewritten model, the
  decomposition): the same tensor names, dtypes, shapes and bytes (bit-identical), the same header
  metadata, and — unless a dropped field is in the metadata — the same file bytes. (safetensors
  writes the header metadata in a Rust HashMap's random order, so ``{"format",
  "gradedit_format_version"}`` came out either way round; ``_files.save_safetensors_atomic`` now
  sorts it, :func:`test_safetensors_files_are_byte_deterministic`);
- ``*.json`` (selections, encoder results, run records, blast report, decomposition record): equal as
  parsed JSON, numbers exactly, after dropping the fields in :data:`DROPPED`;
- ``*.html`` (blast report): equal text.

Dropped fields (:data:`DROPPED`, checked to be exactly these): ``seconds`` — wall-clock durations of
the training run, of each seed, of each validation and of the decomposition — the only
time-dependent values written. No artifact holds a timestamp, and none holds a path that differs
between the runs (the README's relative paths; the run's absolute folder is replaced by ``<ROOT>``
in JSON and HTML text before comparing, and no file needs it today).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gradedit._files import save_safetensors_atomic
from test_cli_workflow import MODEL, SMALL, readme_workflow

TIMEOUT = 300
DECOMPOSE = ["decompose", "--preset", "tiny", "--steps", "4", "--out", "decomp"]
TIMING_KEYS = frozenset({"seconds"})
DROPPED = frozenset({
    ("runs/pronouns/run.json", "seconds"),                        # the whole train command
    ("runs/pronouns/seed_report.json", "seeds[*].seconds"),        # each seed's training
    ("runs/pronouns/seed_0/result.json", "seconds"),               # the seed's training
    ("runs/pronouns/seed_0/result.json", "history[*].seconds"),    # each validation
    ("runs/pronouns/seed_0/last/trainer_state.safetensors", "<gradedit_tree>.history[*].seconds"),  # the same, resumable
    ("decomp/decomposition.json", "meta.seconds"),                  # the decomposition's training
})
"""(file, field) pairs left out of the comparison: wall-clock time, nothing else."""

DRIVER = textwrap.dedent("""
    import json, sys
    from gradedit.cli import main
    for argv in json.loads(sys.argv[1]):
        code = main(argv)
        if code:
            sys.exit(f"gradedit {' '.join(argv)} exited {code}")
""")


def commands() -> list[list[str]]:
    """The README's lines on the tiny model with the small sizes of ``test_cli_workflow``, then a decomposition."""
    out = []
    for argv in readme_workflow():
        argv = [MODEL if a == "smollm2-135m" else a for a in argv]
        extra = next((v for k, v in SMALL.items() if tuple(argv[: len(k)]) == k), [])
        out.append(argv + extra)
    return [*out, DECOMPOSE]


def _env(cache: Path, hash_seed: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADEDIT_")}
    return {**env, "OMP_NUM_THREADS": "1", "GRADEDIT_NO_PROGRESS": "1", "GRADEDIT_CACHE": str(cache),
            "PYTHONHASHSEED": str(hash_seed)}


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stderr[-3000:]}"


# the two runs are one module-scoped fixture: keep this module on one xdist worker (make test uses
# --dist loadgroup), or every worker that gets one of its tests pays for both runs again
pytestmark = pytest.mark.xdist_group("reliability_repro")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run A (a process per command) and run B (one process for all), each in a fresh folder."""
    base = tmp_path_factory.mktemp("repro")
    a, b = base / "a", base / "second-run-b"
    for folder in (a, b):
        folder.mkdir()
    for argv in commands():
        _check(subprocess.run([sys.executable, "-m", "gradedit", *argv], cwd=a, env=_env(base / "cache-a", 1),
                              capture_output=True, text=True, timeout=TIMEOUT), f"run A: gradedit {' '.join(argv)}")
    _check(subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands())], cwd=b,
                          env=_env(base / "cache-b", 2), capture_output=True, text=True, timeout=TIMEOUT * 3),
           "run B")
    return a, b


# ---------------------------------------------------------------- comparison


def _normalise(value: Any, where: str, dropped: set[str]) -> Any:
    """``value`` without :data:`TIMING_KEYS` (their paths added to ``dropped``; list items as ``[*]``)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if key in TIMING_KEYS:
                dropped.add(path)
            else:
                out[key] = _normalise(item, path, dropped)
        return out
    if isinstance(value, list):
        return [_normalise(item, f"{where}[*]", dropped) for item in value]
    return value


def _json(path: Path, root: Path, dropped: set[str]) -> Any:
    return _normalise(json.loads(path.read_text(encoding="utf-8").replace(str(root), "<ROOT>")), "", dropped)


def _safetensors(path: Path, root: Path, dropped: set[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header metadata (JSON values parsed and normalised) and the tensors."""
    with safe_open(str(path), "pt") as f:
        meta: dict[str, Any] = {}
        for key, text in (f.metadata() or {}).items():
            try:
                meta[key] = _normalise(json.loads(text.replace(str(root), "<ROOT>")), f"<{key}>", dropped)
            except json.JSONDecodeError:
                meta[key] = text
        return meta, {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, shape [numel * itemsize] uint8 (so -0.0 != 0.0 and NaN payloads count)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def compare_file(rel: str, a: Path, b: Path, dropped: set[tuple[str, str]]) -> list[str]:
    """What differs between ``a/rel`` and ``b/rel`` (empty if equal); dropped fields go into ``dropped``."""
    fa, fb = a / rel, b / rel
    da: set[str] = set()
    db: set[str] = set()
    problems = []
    if fa.suffix == ".json":
        if _json(fa, a, da) != _json(fb, b, db):
            problems.append("JSON differs")
    elif fa.suffix == ".safetensors":
        (ma, ta), (mb, tb) = _safetensors(fa, a, da), _safetensors(fb, b, db)
        if ma != mb:
            problems.append("header metadata differs")
        if sorted(ta) != sorted(tb):
            problems.append(f"tensor names differ: {sorted(set(ta) ^ set(tb))}")
        for name in sorted(set(ta) & set(tb)):
            x, y = ta[name], tb[name]
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(_bits(x), _bits(y)):
                problems.append(f"tensor {name} differs ({x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)})")
        if not problems and not da and fa.read_bytes() != fb.read_bytes():
            problems.append("equal tensors and metadata but the file bytes differ (header order?)")
    elif fa.suffix == ".html":
        if fa.read_text(encoding="utf-8").replace(str(a), "<ROOT>") != fb.read_text(encoding="utf-8").replace(
                str(b), "<ROOT>"):
            problems.append("HTML differs")
    elif fa.read_bytes() != fb.read_bytes():
        problems.append("bytes differ")
    if da != db:
        problems.append(f"time fields differ: {sorted(da ^ db)}")
    dropped.update((rel, field) for field in da)
    return problems


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def compare_trees(a: Path, b: Path) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """``{relative path: differences}`` over both folders (missing files included) and the dropped fields."""
    fa, fb = files(a), files(b)
    diffs = {rel: ["only in A" if rel in fa else "only in B"] for rel in set(fa) ^ set(fb)}
    dropped: set[tuple[str, str]] = set()
    for rel in sorted(set(fa) & set(fb)):
        diffs[rel] = compare_file(rel, a, b, dropped)
    return diffs, dropped


@pytest.fixture(scope="module")
def compared(runs: tuple[Path, Path]) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    return compare_trees(*runs)


def _check_group(compared: tuple[dict[str, list[str]], set[tuple[str, str]]], *patterns: str) -> list[str]:
    """Assert every file matching one of the glob ``patterns`` is equal; return them (at least one per pattern)."""
    diffs = compared[0]
    chosen = []
    for pattern in patterns:
        matched = [rel for rel in diffs if Path(rel).match(pattern)]
        assert matched, f"no artifact matches {pattern!r}; written: {sorted(diffs)}"
        chosen += matched
    bad = {rel: diffs[rel] for rel in chosen if diffs[rel]}
    assert not bad, f"not reproducible: {bad}"
    return chosen


# ---------------------------------------------------------------- the two runs agree


def test_datasets_are_byte_identical(compared: Any, runs: tuple[Path, Path]) -> None:
    _check_group(compared, "data/en-pronouns.csv", "runs/pronouns/data.csv", "runs/pronouns/neutral.json")
    data = (runs[0] / "data/en-pronouns.csv").read_text(encoding="utf-8")
    assert data.count("\n") > 40 and "[MASK]" in data  # 48 rows, not an empty file twice
    assert len(json.loads((runs[0] / "runs/pronouns/neutral.json").read_text())["texts"]) == 256


def test_feature_models_are_bit_identical(compared: Any, runs: tuple[Path, Path]) -> None:
    _check_group(compared, "runs/pronouns/model/*", "runs/pronouns/pre_prune/*", "runs/pronouns/seed_0/best/*",
                 "runs/pronouns/seed_0/last/*", "runs/pronouns/seed_0/result.json", "runs/pronouns/seed_report.json",
                 "runs/pronouns/run.json", "runs/pronouns/train_config.json", "runs/pronouns/training_convergence.png")
    with safe_open(str(runs[0] / "runs/pronouns/model/model.safetensors"), "pt") as f:
        weights = [f.get_tensor(k) for k in ("encoder_weight", "decoder_weight")]
    assert weights and all(w.abs().sum() > 0 for w in weights), "trained feature model is empty"


def test_encoder_results_and_decoder_selections_are_equal(compared: Any, runs: tuple[Path, Path]) -> None:
    _check_group(compared, "runs/pronouns/encoder_results_test.json", "runs/pronouns/encoder_results_test_rows.csv",
                 "runs/pronouns/decoder_results.json", "runs/pronouns/decoder/*.json")
    selection = json.loads((runs[0] / "runs/pronouns/decoder_results.json").read_text())
    assert selection["grid"], "the decoder sweep scored no grid point"


def test_rewritten_models_are_bit_identical(compared: Any, runs: tuple[Path, Path]) -> None:
    _check_group(compared, "out/fem/model.safetensors", "out/fem/rewrite_info.json", "out/fem/config.json",
                 "out/fem/tokenizer*.json")


def test_blast_reports_are_equal(compared: Any, runs: tuple[Path, Path]) -> None:
    _check_group(compared, "out/fem/blast/report.json", "out/fem/blast/report.html")
    report = json.loads((runs[0] / "out/fem/blast/report.json").read_text())
    assert report["edit_norm"] > 0 and report["langs"] == ["en", "de", "fr"]


def test_decompositions_are_bit_identical(compared: Any, runs: tuple[Path, Path]) -> None:
    _check_group(compared, "decomp/decomposition.safetensors", "decomp/decomposition.json", "decomp/stats.json")
    record = json.loads((runs[0] / "decomp/decomposition.json").read_text())
    assert record["meta"]["steps_done"] == 4


def test_every_artifact_is_equal_and_only_timing_is_dropped(compared: Any) -> None:
    diffs, dropped = compared
    assert not {rel: d for rel, d in diffs.items() if d}, "not reproducible"
    assert dropped == DROPPED, f"dropped fields changed: extra {dropped - DROPPED}, gone {DROPPED - dropped}"


# ---------------------------------------------------------------- the comparison can fail


@pytest.fixture()
def twin(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two equal small artifact folders (JSON with a time field, safetensors with JSON metadata, HTML, CSV)."""
    a, b = tmp_path / "a", tmp_path / "bb"
    a.mkdir()
    (a / "r.json").write_text(json.dumps({"x": 0.1, "seconds": 1.5, "h": [{"seconds": 2.0, "y": 1}],
                                          "out": str(a / "o")}))
    save_file({"w": torch.tensor([0.0, 1.0, float("nan")])}, str(a / "m.safetensors"),
              metadata={"tree": json.dumps({"history": [{"seconds": 3.0, "loss": 0.5}]}), "format": "pt"})
    (a / "p.html").write_text(f"<p>{a}/x 0.25</p>")
    (a / "d.csv").write_text("text,label\nHe [MASK],1\n")
    shutil.copytree(a, b)
    (b / "r.json").write_text((a / "r.json").read_text().replace(str(a), str(b)).replace("1.5", "9.5"))
    (b / "p.html").write_text(f"<p>{b}/x 0.25</p>")
    yield a, b


def test_comparison_drops_only_time_and_the_run_folder(twin: tuple[Path, Path]) -> None:
    diffs, dropped = compare_trees(*twin)
    assert not any(diffs.values()), diffs
    assert dropped == {("r.json", "seconds"), ("r.json", "h[*].seconds"), ("m.safetensors", "<tree>.history[*].seconds")}


@pytest.mark.parametrize("damage", ["json number", "tensor bit", "tensor -0.0", "metadata", "html", "csv", "extra file"])
def test_comparison_sees_any_other_change(twin: tuple[Path, Path], damage: str) -> None:
    a, b = twin
    if damage == "json number":
        (b / "r.json").write_text((b / "r.json").read_text().replace("0.1", "0.10000000000000002"))
    elif damage in ("tensor bit", "tensor -0.0"):
        w = torch.tensor([-0.0, 1.0, float("nan")]) if damage == "tensor -0.0" else torch.tensor(
            [0.0, float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))), float("nan")])
        save_file({"w": w}, str(b / "m.safetensors"),
                  metadata={"tree": json.dumps({"history": [{"seconds": 3.0, "loss": 0.5}]}), "format": "pt"})
    elif damage == "metadata":
        save_file({"w": torch.tensor([0.0, 1.0, float("nan")])}, str(b / "m.safetensors"),
                  metadata={"tree": json.dumps({"history": [{"seconds": 3.0, "loss": 0.25}]}), "format": "pt"})
    elif damage == "html":
        (b / "p.html").write_text(f"<p>{b}/x 0.26</p>")
    elif damage == "csv":
        (b / "d.csv").write_text("text,label\nHe [MASK],-1\n")
    else:
        (b / "new.txt").write_text("")
    diffs, _ = compare_trees(a, b)
    assert [rel for rel, d in diffs.items() if d], f"{damage} went unnoticed"


def test_safetensors_files_are_byte_deterministic(tmp_path: Path) -> None:
    """The same tensors and metadata give the same bytes, whatever order safetensors' HashMap picks."""
    tensors = {"w": torch.arange(6.0), "b": torch.zeros(2, dtype=torch.int64)}
    meta = {k: f"value {i}" for i, k in enumerate("fedcba")}
    raw, ours = set(), set()
    for i in range(8):
        save_file(tensors, str(tmp_path / "raw.safetensors"), metadata=meta)
        raw.add((tmp_path / "raw.safetensors").read_bytes())
        save_safetensors_atomic(tensors, tmp_path / "ours.safetensors", metadata=dict(reversed(meta.items()))
                                if i % 2 else meta)
        ours.add((tmp_path / "ours.safetensors").read_bytes())
    assert len(raw) > 1, "safetensors now writes its metadata in a fixed order: the sorting can go"
    assert len(ours) == 1
    with safe_open(str(tmp_path / "ours.safetensors"), "pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("w"), tensors["w"])
        assert f.get_tensor("b").dtype == torch.int64
