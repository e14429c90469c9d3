"""Save a rewritten base model as a plain HF folder: weights + tokenizer + ``rewrite_info.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .._files import atomic_dir, write_json_atomic
from .._version import __version__
from ..models import LanguageModel


def save_rewrite(model: PreTrainedModel, lm: LanguageModel, output_dir: Path, info: dict[str, Any]) -> Path:
    """Write model + tokenizer + provenance into ``output_dir`` in one step (temp folder + rename).

    Raises:
        FileExistsError: ``output_dir`` exists (choose a new folder; nothing is overwritten).
    """
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} exists; give a new output_dir (a rewrite never overwrites)")
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "rewrite_info.json", {**info, "gradedit_version": __version__})
    return output_dir
