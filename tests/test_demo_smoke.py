"""``gradedit demo --smoke``: an installation check that loads a model, generates and scores."""

from __future__ import annotations

import pytest

from gradedit.cli import main
from gradedit.demo import smoke as demo_smoke


def test_smoke_is_described_as_what_it_is_and_prints_nothing_itself(capsys: pytest.CaptureFixture[str]) -> None:
    assert "placeholder" not in (demo_smoke.__doc__ or "").lower()
    assert "placeholder" not in (demo_smoke.run_smoke.__doc__ or "").lower()
    lines = demo_smoke.run_smoke("tiny-llama")
    assert capsys.readouterr().out == "", "library code must not print; the CLI prints the returned lines"
    assert lines[0] == "model: tiny-llama" and any("perplexity" in ln for ln in lines)


def test_cli_smoke_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--smoke", "--model", "tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "model: tiny-llama" in out and "LMS" in out
