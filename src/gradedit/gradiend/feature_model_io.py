"""Saving and loading a :class:`~gradedit.gradiend.feature_model.FeatureModel` folder (HF-style).

``config.json`` (shapes, dtype, provenance), ``model.safetensors`` (weights + the ParamMap's index
tensors), ``param_map.json``. A new folder appears in one step; into an existing folder each file is
replaced atomically, ``config.json`` last. Loading checks every file against ``config.json`` and names
what is missing or corrupt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from .._files import read_json_object, save_safetensors_atomic, write_folder, write_json_atomic
from ..errors import ArtifactError
from ..models.param_map import ParamMap

if TYPE_CHECKING:
    from .feature_model import FeatureModel

logger = logging.getLogger(__name__)


FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PARAM_MAP_NAME = "param_map.json"


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating-point torch dtype from a dtype or its name (``"float32"``, ``"torch.bfloat16"``)."""
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (as written to ``config.json``)."""
    return str(dtype).removeprefix("torch.")


def save_feature_model(self: FeatureModel, path: Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``param_map.json`` into ``path``.

    A new folder appears in one step (temp folder + rename). Into an existing folder, each file is
    replaced atomically, ``config.json`` last; other files there are left alone.
    """
    try:
        config_text = json.dumps(self.to_config())
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from None
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in self.named_parameters()}
    pm_json = None
    if self.param_map is not None:
        pm_json, pm_tensors = self.param_map.to_state()
        tensors.update(pm_tensors)
    st_meta = {"format": "pt", "gradedit_format_version": str(FORMAT_VERSION)}

    def write(folder: Path) -> None:
        save_safetensors_atomic(tensors, folder / WEIGHTS_NAME, st_meta)
        if pm_json is not None:
            write_json_atomic(folder / PARAM_MAP_NAME, pm_json)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / PARAM_MAP_NAME)  # a stale map from an earlier save
        write_json_atomic(folder / CONFIG_NAME, json.loads(config_text))

    write_folder(path, write)
    logger.info("saved FeatureModel (n=%d, k=%d) to %s", self.input_dim, self.latent_dim, path)
    return path


def load_feature_model(cls: type[FeatureModel], path: Path, *, device: str | torch.device = "cpu") -> FeatureModel:
    """Load a folder written by :meth:`save_pretrained`, the weights on ``device`` (the saved tensors are
    device-independent CPU tensors).

    Raises:
        FileNotFoundError: the folder or one of its files is missing (named in the message).
        ArtifactError: a file is corrupt/truncated or disagrees with ``config.json``.
    """
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"cannot load a FeatureModel: {path} {what}")
    config = read_json_object(path / CONFIG_NAME, "save the model again with save_pretrained()")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"{path / CONFIG_NAME}: format_version {version!r} is not supported "
                            f"(this gradedit reads <= {FORMAT_VERSION}); upgrade gradedit")
    try:
        n, k = int(config["input_dim"]), int(config["latent_dim"])
        bias, dtype = bool(config["bias_decoder"]), as_dtype(config["dtype"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path / CONFIG_NAME} is incomplete or invalid ({err!r})") from None
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the folder holds no FeatureModel weights")
    try:  # read on the CPU (the param map's indices stay there), then the weights alone move to ``device``
        tensors = load_file(weights, device="cpu")
    except Exception as err:  # safetensors raises its own error type for every kind of damage
        raise ArtifactError(f"{weights} is corrupt or truncated ({type(err).__name__}: {err}); "
                            "retrain the model or save it again") from err
    expected = {"encoder_weight": (k, n), "encoder_bias": (k,), "decoder_weight": (n, k)}
    if bias:
        expected["decoder_bias"] = (n,)
    found = sorted(key for key in tensors if not key.startswith("param_map."))
    if found != sorted(expected):
        raise ArtifactError(f"{weights} holds tensors {found}, expected {sorted(expected)} "
                            f"(config says bias_decoder={bias})")
    for key, shape in expected.items():
        t = tensors[key]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ArtifactError(f"{weights}: {key} is {tuple(t.shape)} {dtype_name(t.dtype)} but config.json "
                                f"says {shape} {dtype_name(dtype)} (input_dim={n}, latent_dim={k})")
    param_map = None
    if config.get("has_param_map"):
        pm_state = read_json_object(path / PARAM_MAP_NAME, "save the model again with save_pretrained()")
        try:
            param_map = ParamMap.from_state(pm_state, tensors)
        except (ValueError, TypeError) as err:
            raise ArtifactError(f"{path / PARAM_MAP_NAME} is inconsistent: {err}") from err
        if param_map.size != n:
            raise ArtifactError(f"{path / PARAM_MAP_NAME} selects {param_map.size} entries, input_dim is {n}")
    logger.info("loading FeatureModel (n=%d, k=%d) from %s", n, k, path)
    return cls._from_tensors({key: tensors[key].to(device) for key in expected}, param_map=param_map,
                             metadata=config.get("metadata") or {}, init_seed=config.get("init_seed"))
