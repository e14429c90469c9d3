"""``gradedit decompose``: a tiny preset run writes a loadable decomposition; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradedit.cli import main
from gradedit.decompose import Decomposition
from gradedit.models import load_model


def test_decompose_tiny_preset_writes_a_loadable_decomposition(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "dec"
    assert main(["decompose", "--preset", "tiny", "--out", str(out), "--steps", "3"]) == 0
    assert "decomposition saved" in capsys.readouterr().out
    dec = Decomposition.load(out, load_model("tiny-llama"))
    assert dec.modules and all(dec.components(m)[0].ndim == 2 for m in dec.modules)


def test_decompose_without_modules_is_a_one_line_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["decompose", "--model", "tiny-llama", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--modules" in err[0]
