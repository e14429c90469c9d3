"""Files and folders gradedit writes get the modes the user's umask gives any other new file (issue 13):
atomic writes go through mkstemp/mkdtemp (private 0600/0700) and safetensors writes 0600 itself."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradedit import _files
from gradedit._files import atomic_dir, save_safetensors_atomic, write_json_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["umask022", "umask077", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask: int) -> None:
    assert _files.current_umask() == umask
    assert _files.current_umask() == umask  # still the same: reading did not reset it


def test_atomic_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    import torch

    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "c.safetensors")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any other program would get
    for name in ("a.txt", "b.json", "c.safetensors"):
        assert _mode(tmp_path / name) == 0o666 & ~umask == _mode(plain), name
    assert {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}[umask] == _mode(tmp_path / "a.txt")


def test_atomic_folders_and_their_contents_follow_the_umask(tmp_path: Path, umask: int) -> None:
    import torch
    from safetensors.torch import save_file

    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # as HF save_pretrained does: 0600
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "x.txt").write_text("x")
    assert _mode(final) == 0o777 & ~umask == _mode(final / "sub")
    assert _mode(final / "model.safetensors") == 0o666 & ~umask == _mode(final / "sub" / "x.txt")


def test_a_rewritten_model_and_a_run_data_file_are_readable_like_other_files(tmp_path: Path, tiny_llama) -> None:
    from gradedit.data.schema import PairDataset
    from gradedit.gradiend.rewrite_io import save_rewrite
    from pronoun_rows import SUBJECTS, VERBS, pronoun_records

    old = os.umask(0o022)
    try:
        out = save_rewrite(tiny_llama.model, tiny_llama, tmp_path / "rw", {"base_model": "tiny-llama"})
        data = PairDataset.from_records(pronoun_records(SUBJECTS[:2], VERBS[:2]), target_classes=["masc", "fem"])
        data.save(tmp_path / "data.csv")
    finally:
        os.umask(old)
    assert _mode(out / "model.safetensors") == 0o644 and _mode(out / "rewrite_info.json") == 0o644
    assert _mode(out) == 0o755 and _mode(tmp_path / "data.csv") == 0o644
