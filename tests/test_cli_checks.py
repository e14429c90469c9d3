"""The CLI's rough edges (issue 13): checks before any model loads, one-line errors with distinct exit
codes (2 = usage/input, 1 = internal, 3 = no edit found), ``--debug`` tracebacks, hints, metric
names explained, features listed in ``data build --help``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradedit.cli import main
from pronoun_rows import SUBJECTS, VERBS, pronoun_records


def _cli(*argv: str) -> tuple[int, str, str, set[str], float]:
    """Run ``main(argv)`` in a fresh interpreter: exit code, stdout, stderr, the modules it imported, seconds."""
    code = ("import sys, json\nfrom gradedit.cli import main\ncode = main(json.loads(sys.argv[1]))\n"
            "sys.stderr.write('\\nMODULES ' + ' '.join(sys.modules) + '\\n')\nsys.exit(code)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, json.dumps(list(argv))], capture_output=True, text=True,
                       env={**__import__("os").environ, "GRADEDIT_NO_PROGRESS": "1"})
    seconds = time.perf_counter() - t0
    err, _, mods = p.stderr.rpartition("\nMODULES ")
    return p.returncode, p.stdout, err.strip(), set(mods.split()), seconds


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradedit: "), err
    assert "Traceback" not in err
    return lines[0]


def _pairs(tmp_path: Path) -> Path:
    from gradedit.data.schema import PairDataset

    data = tmp_path / "pairs.csv"
    PairDataset.from_records(pronoun_records(SUBJECTS[:3], VERBS[:2], rest="left."),
                             target_classes=["masc", "fem"]).save(data)
    return data


def _fake_run(folder: Path, classes: tuple[str, str] = ("masc", "fem")) -> Path:
    """The files a finished run has, enough for the CLI's checks (which read no tensors)."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text(json.dumps(
        {"metadata": {"classes": list(classes), "base_model": "tiny-llama"}}))
    (folder / "train_config.json").write_text("{}")
    (folder / "data.csv").write_text("text\n")
    return folder


# -- checks before any model loads -------------------------------------------------------------------


def test_unknown_class_of_a_builtin_feature_fails_before_torch_loads(tmp_path: Path) -> None:
    code, _, err, mods, seconds = _cli("train", "--model", "tiny-llama", "--data", "en-pronouns", "--classes",
                                       "masc", "female", "--out", str(tmp_path / "run"))
    line = _one_line(err)
    assert code == 2 and "female" in line and "masc, fem" in line and "en-pronouns" in line
    assert "torch" not in mods and not (tmp_path / "run").exists()
    assert seconds < 10  # a generous bound for a loaded machine; --help-like start-up is ~0.3 s


def test_unknown_class_of_a_data_file_fails_before_torch_loads(tmp_path: Path) -> None:
    data = _pairs(tmp_path)
    code, _, err, mods, _ = _cli("train", "--model", "tiny-llama", "--data", str(data), "--classes", "masc", "female",
                                 "--out", str(tmp_path / "run"))
    assert code == 2 and "masc, fem" in _one_line(err) and "torch" not in mods


def test_data_build_checks_the_feature_name_before_torch_loads() -> None:
    code, _, err, mods, _ = _cli("data", "build", "en-pronoun")
    assert code == 2 and "en-pronouns" in _one_line(err) and "torch" not in mods
    code, _, err, mods, _ = _cli("data", "build", "en-pronouns:masc-female")
    assert code == 2 and "masc, fem" in _one_line(err) and "torch" not in mods


def test_data_build_help_lists_the_features_without_torch() -> None:
    from gradedit.data import features

    code, out, _, mods, _ = _cli("data", "build", "--help")
    assert code == 0 and "torch" not in mods
    for name in features.names():
        assert name in out
        for cls in features.get(name).class_ids[:2]:
            assert cls in out


def test_feature_catalog_matches_the_feature_registry() -> None:
    from gradedit.data import catalog, features

    assert catalog.names() == features.names()
    for name in features.names():
        spec, entry = features.get(name), catalog.get(name)
        assert (entry.lang, entry.classes, entry.selectable) == (spec.lang, tuple(spec.class_ids), tuple(spec.selectable))


def test_score_without_text_keeps_the_prefix_and_loads_no_model() -> None:
    code, _, err, mods, _ = _cli("score", "--model", "tiny-llama")
    assert code == 2 and "--text" in _one_line(err) and "torch" not in mods


def test_score_explains_its_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--model", "tiny-gpt2", "--text", "He said that she would be late."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["lms"] <= 1 and out["tokens"] > 0
    assert "top-1 accuracy" in out["explain"]["lms"] and "exp(cross_entropy)" in out["explain"]["perplexity"]


def test_rewrite_into_an_existing_folder_is_one_line_before_loading(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    (tmp_path / "out").mkdir()
    code, _, err, mods, _ = _cli("rewrite", str(run), "--target-class", "fem", "--out", str(tmp_path / "out"))
    assert code == 2 and "exists" in _one_line(err) and "torch" not in mods
    code, _, err, mods, _ = _cli("rewrite", str(run), "--target-class", "female", "--out", str(tmp_path / "new"))
    assert code == 2 and "masc, fem" in _one_line(err) and "torch" not in mods


def test_a_folder_holding_the_run_gets_a_hint(tmp_path: Path) -> None:
    _fake_run(tmp_path / "demo" / "run")
    for argv in (["rewrite", str(tmp_path / "demo"), "--target-class", "fem", "--out", str(tmp_path / "o")],
                 ["evaluate", "decoder", str(tmp_path / "demo")]):
        code, _, err, mods, _ = _cli(*argv)
        line = _one_line(err)
        assert code == 2 and str(tmp_path / "demo" / "run") in line and "torch" not in mods


def test_blast_rejects_a_folder_that_is_neither_an_edit_nor_a_rewrite(tmp_path: Path) -> None:
    code, _, err, mods, _ = _cli("blast", str(tmp_path), "--model", "tiny-llama")
    line = _one_line(err)
    assert code == 2 and "rewrite_info.json" in line and "edit.json" in line and "torch" not in mods
    run = _fake_run(tmp_path / "run")
    code, _, err, _, _ = _cli("blast", str(run))
    assert code == 2 and "gradedit rewrite" in _one_line(err)


# -- errors, exit codes, --debug ---------------------------------------------------------------------


def test_usage_errors_return_2_and_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "x"]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "--debug" in capsys.readouterr().out


def test_internal_errors_return_1_in_one_line_and_debug_shows_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from gradedit.cli import env

    monkeypatch.setattr(env, "environment", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert main(["env"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "internal error" in line and "boom" in line and "--debug" in line
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "env"])


def test_user_errors_return_2_and_debug_reraises(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "info", "no-such-model"]) == 2
    assert "unknown zoo model" in _one_line(capsys.readouterr().err)
    with pytest.raises(KeyError):
        main(["--debug", "models", "info", "no-such-model"])


def test_train_records_the_neutral_file_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _pairs(tmp_path)
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("The city is quiet.\n\nThe house is old and the road is long.\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem", "--out", str(run),
                 "--max-steps", "2", "--eval-steps", "2", "--pre-prune", "100", "--neutral", str(neutral)]) == 0
    rec = json.loads((run / "neutral.json").read_text())
    assert rec["texts"] == ["The city is quiet.", "The house is old and the road is long."]
    assert rec["source"] == str(neutral)
    assert main(["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem",
                 "--out", str(tmp_path / "r2"), "--neutral", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in _one_line(capsys.readouterr().err)


def test_train_asks_for_neutral_text_when_the_data_language_is_unknown(tmp_path: Path) -> None:
    from gradedit.data.schema import PairDataset

    recs = [dict(r, factual_class={"masc": "a", "fem": "b"}[r["factual_class"]],
                 alternative_class={"masc": "a", "fem": "b"}[r["alternative_class"]])
            for r in pronoun_records(SUBJECTS[:3], VERBS[:2], rest="left.")]
    data = tmp_path / "ab.csv"
    PairDataset.from_records(recs, target_classes=["a", "b"]).save(data)
    code, _, err, mods, _ = _cli("train", "--model", "tiny-llama", "--data", str(data), "--classes", "a", "b",
                                 "--out", str(tmp_path / "run"))
    assert code == 2 and "--neutral" in _one_line(err) and "torch" not in mods


def test_edit_scalar_that_finds_no_edit_exits_3_and_saves_nothing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scalar"
    code = main(["edit", "scalar", "--model", "tiny-llama", "--tokens", "4", "--n-texts", "4", "--components", "2",
                 "--kl-weight", "1e9", "--max-leak", "0", "--out", str(out)])
    assert code == 3 and not out.exists()
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("gradedit: ") and "Traceback" not in err
    assert "no-op" in line and "no scale moved" in line


def test_languages_are_checked_before_torch_loads(tmp_path: Path) -> None:
    code, _, err, mods, _ = _cli("edit", "lora", "--model", "tiny-llama", "--target", "xx", "--out", str(tmp_path / "e"))
    assert code == 2 and "'xx'" in _one_line(err) and "torch" not in mods
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "edit.json").write_text(json.dumps({"base_model": "tiny-llama", "metadata": {}}))
    code, _, err, mods, _ = _cli("blast", str(tmp_path / "e"), "--langs", "en,klingon")
    assert code == 2 and "'klingon'" in _one_line(err) and "torch" not in mods


def test_a_run_without_neutral_text_asks_for_neutral_before_loading(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    (run / "neutral.json").write_text(json.dumps({"texts": None}))  # as runs trained before this fix recorded it
    for argv in (["evaluate", "decoder", str(run)],
                 ["rewrite", str(run), "--target-class", "fem", "--out", str(tmp_path / "o")]):
        code, _, err, mods, _ = _cli(*argv)
        line = _one_line(err)
        assert code == 2 and "records no neutral text" in line and "--neutral FILE" in line and "torch" not in mods
