"""The README's command-line workflow, run line by line as it is written there (issue 13): only the
model name is swapped for ``tiny-llama`` and size flags are appended, so the test stays fast.

``data build`` → ``train`` → ``evaluate encoder`` → ``evaluate decoder`` → ``rewrite`` → ``blast``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from gradedit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- cli-workflow -->"
MODEL = "tiny-llama"
# appended per sub-command: fewer rows, steps and texts than the README's real run
SMALL = {
    ("data", "build"): ["--max-per-class", "24"],
    ("train",): ["--max-steps", "4", "--eval-steps", "2"],
    ("evaluate", "decoder"): [],
    ("blast",): ["--n-texts", "3"],
}


def readme_workflow() -> list[list[str]]:
    """The ``gradedit ...`` lines of the fenced block after the marker, as argv lists."""
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, f"README.md lost its {MARKER} block"
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block is not None
    lines = [ln.split("#")[0].strip() for ln in block.group(1).splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("gradedit ")]


def _small(argv: list[str]) -> list[str]:
    argv = [MODEL if a == "smollm2-135m" else a for a in argv]
    for key, extra in SMALL.items():
        if tuple(argv[: len(key)]) == key:
            return argv + extra
    return argv


def test_readme_lists_the_whole_workflow() -> None:
    steps = [argv[:2] if argv[0] in ("data", "evaluate") else argv[:1] for argv in readme_workflow()]
    assert steps == [["data", "build"], ["train"], ["evaluate", "encoder"], ["evaluate", "decoder"],
                     ["rewrite"], ["blast"]]


def test_readme_workflow_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    outputs = []
    for argv in readme_workflow():
        argv = _small(argv)
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 0, f"gradedit {shlex.join(argv)} exited {code}:\n{captured.err[-2000:]}"
        outputs.append(captured.out)
    run = tmp_path / "runs" / "pronouns"
    neutral = json.loads((run / "neutral.json").read_text())
    assert neutral["texts"] and len(neutral["texts"]) == 256 and neutral["source"].startswith("features.neutral")
    assert not any(re.search(r"\b(he|she)\b", t, re.I) for t in neutral["texts"])
    info = json.loads((tmp_path / "out" / "fem" / "rewrite_info.json").read_text())
    assert info["target_class"] == "fem" and info["base_model"] == MODEL
    report = json.loads((tmp_path / "out" / "fem" / "blast" / "report.json").read_text())
    assert report["langs"] == ["en", "de", "fr"] and report["edit_norm"] > 0
    assert "rewritten model" in outputs[-1] and "report:" in outputs[-1]
