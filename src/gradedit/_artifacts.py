"""Reading and writing saved artefacts (feature models, edits, adapters): JSON and safetensors files,
written atomically, read with errors that name the file and the fix."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


class ArtifactError(ValueError):
    """A saved artefact (feature model, edit) is corrupt, truncated or inconsistent with its config."""


def read_json_object(file: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``file``; ``fix`` (e.g. "save the model again") ends every error message.

    Raises:
        FileNotFoundError: the file is missing.
        ArtifactError: it is not valid JSON or not an object.
    """
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing; {fix}")
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{file} is corrupt ({err}); {fix}") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{file} should hold a JSON object, got {type(obj).__name__}")
    return obj


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], file: Path,
                            metadata: dict[str, str] | None = None) -> None:
    """``safetensors`` file written to a temp file beside ``file`` and renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata or {"format": "pt"})
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
