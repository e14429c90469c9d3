"""Save a rewritten base model as a plain HF folder: weights + tokenizer + ``rewrite_info.json``;
and read one back as the edit it is (its weights minus the base model's)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from .._files import atomic_dir, read_json_object, write_json_atomic
from .._version import __version__
from ..edits import WeightEdit
from ..errors import ArtifactError, EditError
from ..models import LanguageModel
from ..models.param_map import ParamMap

logger = logging.getLogger(__name__)

INFO_FILE = "rewrite_info.json"
DENSE_ABOVE = 0.5
"""A tensor with more than this fraction of entries changed is stored whole (``None`` index), else by index."""


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
        write_json_atomic(tmp / INFO_FILE, {**info, "gradedit_version": __version__})
    return output_dir


def rewrite_info(folder: str | Path) -> dict[str, Any]:
    """The ``rewrite_info.json`` of a folder written by :func:`save_rewrite`."""
    return read_json_object(Path(folder) / INFO_FILE, "it is written by gradedit rewrite / rewrite_base_model(output_dir=...)")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, "save the rewrite again").get("weight_map") or {}
        return [folder / f for f in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder} has no model.safetensors (or sharded index); it is not a saved rewrite")


def rewrite_edit(folder: str | Path, lm: LanguageModel) -> WeightEdit:
    """The rewritten model in ``folder`` as a :class:`WeightEdit` on ``lm`` (its base model): the
    difference of every tensor that changed, indexed on the changed entries (whole tensors when more
    than ``DENSE_ABOVE`` of them changed). Applying it to ``lm`` gives the rewritten weights up to
    one rounding of ``base + (rewritten − base)``.

    Raises:
        ArtifactError: the folder's tensors do not fit ``lm`` (another model, or an incomplete save).
        ValueError: the folder's weights equal ``lm``'s (nothing changed).
    """
    from safetensors import safe_open

    folder = Path(folder)
    info = rewrite_info(folder)
    named = dict(lm.model.named_parameters())
    owner = {id(p): n for n, p in named.items()}
    alias = {k: owner[id(v)] for k, v in lm.model.state_dict(keep_vars=True).items() if id(v) in owner}
    buffers = {k for k, _ in lm.model.named_buffers()}
    seen: set[str] = set()
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    indices: list[torch.Tensor | None] = []
    parts: list[torch.Tensor] = []
    changed: dict[str, int] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                name = alias.get(key)
                if name is None:
                    if key in buffers:
                        continue
                    raise ArtifactError(f"{file} holds {key!r}, which {lm.name} does not have; "
                                        f"was {folder} rewritten from another model?")
                if name in seen:
                    continue
                seen.add(name)
                old = named[name].detach()
                if old.device.type == "meta":
                    raise EditError(f"{name} of {lm.name} is offloaded by a device_map, so {folder} cannot be compared "
                                    f"with it; load the base model without 'disk' (or CPU offload) in its device map")
                new = fh.get_tensor(key).to(device=old.device, dtype=old.dtype)
                if new.shape != old.shape:
                    raise ArtifactError(f"{key}: shape {tuple(new.shape)} in {file}, {tuple(old.shape)} in {lm.name}; "
                                        f"was {folder} rewritten from another model?")
                mask = (new != old).reshape(-1)
                n = int(mask.sum())
                if n == 0:
                    continue
                diff = (new - old).reshape(-1)
                names.append(name)
                shapes.append(tuple(old.shape))
                if n > DENSE_ABOVE * mask.numel():
                    indices.append(None)
                    parts.append(diff)
                else:
                    idx = torch.nonzero(mask).reshape(-1)
                    indices.append(idx.cpu())
                    parts.append(diff[idx])
                changed[name] = n
    missing = sorted(set(named) - seen)
    if missing:
        raise ArtifactError(f"{folder} lacks {len(missing)} of {lm.name}'s tensors (e.g. {missing[0]!r}); "
                            f"it is not a complete rewrite of {lm.name}")
    meta: dict[str, Any] = {"method": "rewrite", "base_model": lm.name, "rewrite_dir": str(folder), "changed_entries": changed,
                            **{k: info[k] for k in ("target_class", "direction", "learning_rate", "feature_factor")
                               if k in info}}
    if not names:
        raise ValueError(f"{folder} has exactly the weights of {lm.name}: the rewrite changed nothing to measure")
    logger.info("%s differs from %s in %d entries of %d tensors", folder, lm.name, sum(changed.values()), len(names))
    return WeightEdit.indexed(ParamMap(names, shapes, indices), torch.cat([p.reshape(-1) for p in parts]), metadata=meta)
