"""Saving and loading a ``WeightEdit``: ``edit.safetensors`` (tensors) + ``edit.json`` (terms, provenance).

``edit.json`` holds ``format``, ``format_version``, ``library_version``, ``kind`` (the term kinds, or
``"mixed"``), ``base_model``, ``metadata`` and one entry per term (``kind``, ``scale``, parameter name,
shapes). Term ``i``'s tensors are stored under ``terms.<i>.<name>``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from .._files import read_json_object, save_safetensors_atomic, write_folder, write_json_atomic
from .._version import __version__
from ..errors import ArtifactError
from .terms import TERM_TYPES, EditTerm

if TYPE_CHECKING:
    from .weight_edit import WeightEdit

logger = logging.getLogger(__name__)

FORMAT = "gradedit.WeightEdit"
FORMAT_VERSION = 1
JSON_NAME = "edit.json"
TENSORS_NAME = "edit.safetensors"


def _prefix(i: int) -> str:
    return f"terms.{i}."


def save_edit(edit: WeightEdit, directory: Path) -> Path:
    """Write ``edit`` into ``directory``.

    A new folder appears in one step (temp folder + rename); into an existing folder each file is
    replaced atomically, ``edit.json`` last. Tensors keep their dtype and are stored on the CPU.

    Raises:
        TypeError: ``edit.metadata`` is not JSON-serialisable.
    """
    metas, tensors = [], {}
    for i, term in enumerate(edit.terms):
        meta, ts = term.to_state(_prefix(i))
        metas.append(meta)
        # clone: safetensors refuses tensors that share memory (e.g. ``edit + edit``)
        tensors.update({k: v.detach().to("cpu").contiguous().clone() for k, v in ts.items()})
    kinds = sorted({getattr(t, "label", t.kind) for t in edit.terms})
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "kind": kinds[0] if len(kinds) == 1 else ("empty" if not kinds else "mixed"),
        "base_model": edit.metadata.get("base_model"),
        "metadata": edit.metadata,
        "param_names": edit.param_names,
        "terms": metas,
    }
    try:
        text = json.dumps(doc)
    except (TypeError, ValueError) as err:
        raise TypeError(f"edit metadata must be JSON-serialisable: {err}") from None

    def write(folder: Path) -> None:
        save_safetensors_atomic(tensors, folder / TENSORS_NAME,
                                 {"format": "pt", "gradedit_format_version": str(FORMAT_VERSION)})
        write_json_atomic(folder / JSON_NAME, json.loads(text))

    write_folder(directory, write)
    logger.info("saved %s to %s", edit, directory)
    return directory


def read_edit(directory: Path, *, device: str | torch.device = "cpu") -> tuple[tuple[EditTerm, ...], dict[str, Any]]:
    """Read a folder written by :func:`save_edit`.

    Raises:
        FileNotFoundError: the folder, ``edit.json`` or ``edit.safetensors`` is missing.
        ArtifactError: a file is corrupt/truncated or the two files disagree.
    """
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise FileNotFoundError(f"cannot load a WeightEdit: {directory} {what}")
    doc = read_json_object(directory / JSON_NAME, f"is {directory} a folder written by WeightEdit.save()?")
    version = doc.get("format_version")
    if doc.get("format") != FORMAT or not isinstance(version, int):
        raise ArtifactError(f"{directory / JSON_NAME} is not a WeightEdit file (format={doc.get('format')!r})")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{directory / JSON_NAME}: format_version {version} is newer than this gradedit "
                            f"reads ({FORMAT_VERSION}); upgrade gradedit")
    file = directory / TENSORS_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing; save the edit again with WeightEdit.save()")
    try:
        tensors = load_file(file, device=str(device))
    except Exception as err:  # safetensors raises its own error type for every kind of damage
        raise ArtifactError(f"{file} is corrupt or truncated ({type(err).__name__}: {err}); "
                            "save the edit again") from err
    terms = []
    for i, meta in enumerate(doc.get("terms") or []):
        try:
            cls = TERM_TYPES[meta["kind"]]
            terms.append(cls.from_state(meta, tensors, _prefix(i)))
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{directory}: term {i} ({meta.get('kind') if isinstance(meta, dict) else meta!r}) "
                                f"cannot be read ({type(err).__name__}: {err}); the files disagree") from err
        for name in terms[-1].param_names:
            want = meta.get("shape")
            if want is not None and list(terms[-1].shape_of(name)) != list(want):
                raise ArtifactError(f"{directory}: term {i} on {name} has shape {terms[-1].shape_of(name)}, "
                                    f"edit.json says {want}")
    logger.info("loaded WeightEdit with %d terms from %s", len(terms), directory)
    return tuple(terms), doc.get("metadata") or {}


