"""Autocast names and ``device_map`` models (accelerate): parsing, checks, dispatch, refusals.

A model loaded with a ``device_map`` that splits it over devices or offloads layers (to the CPU or
disk) runs under accelerate hooks: each block's weights are brought to its execution device for the
forward and activations are moved between blocks. Such a model serves forward-only work (blast
radius, decoder sweeps, scoring); gradients through it are refused (offloaded weights get none),
and so are rewrites and edits of offloaded weights (they live on the ``meta`` device).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["AUTOCAST_CHOICES", "AUTOCAST_ENV", "DEVICE_MAP_ENV", "DEVICE_MAP_STRATEGIES", "OFFLOAD_ENV",
           "DeviceMap", "autocast_dtype", "canonical_autocast", "check_device_map", "dispatch", "input_device", "is_dispatched",
           "parse_device_map", "refuse_dispatched", "resolve_autocast"]

#: what ``autocast=`` / ``--autocast`` accepts (``None`` = ``"none"``: full precision)
AUTOCAST_CHOICES = ("none", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                    "float16": torch.float16, "half": torch.float16}
#: ``load_model(autocast=None)`` reads this (the CLI's ``--autocast`` sets it for a command)
AUTOCAST_ENV = "GRADEDIT_AUTOCAST"
#: ``load_model(device_map=None)`` reads this: a strategy name or a JSON object (the CLI's ``--device-map``)
DEVICE_MAP_ENV = "GRADEDIT_DEVICE_MAP"
#: ``load_model(offload_folder=None)`` reads this (the CLI's ``--offload-folder``)
OFFLOAD_ENV = "GRADEDIT_OFFLOAD_FOLDER"
#: device-map strategies transformers/accelerate compute from free memory
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

#: a strategy name or ``{module name: device}`` (``"cpu"``, ``"disk"``, ``"cuda:N"``, ``N``)
DeviceMap: TypeAlias = str | Mapping[str, int | str]
_CUDA = re.compile(r"^cuda(:\d+)?$")


def autocast_dtype(name: str | None) -> torch.dtype | None:
    """``"bf16"`` -> ``torch.bfloat16``, ``"fp16"`` -> ``torch.float16``, ``None``/``"none"`` -> ``None``.

    Raises:
        ConfigError: another name.
    """
    if name is None:
        return None
    key = str(name).strip().lower()
    if key in ("", "none", "off", "fp32", "float32"):
        return None
    if key not in _AUTOCAST_DTYPES:
        raise ConfigError(f"unknown autocast {name!r}; use one of {', '.join(AUTOCAST_CHOICES)}")
    return _AUTOCAST_DTYPES[key]


def canonical_autocast(name: str | None) -> str | None:
    """``"bf16"``, ``"fp16"`` or ``None`` for any name :func:`autocast_dtype` accepts."""
    dtype = autocast_dtype(name)
    return None if dtype is None else ("bf16" if dtype == torch.bfloat16 else "fp16")


def resolve_autocast(name: str | None) -> str | None:
    """:func:`canonical_autocast` of ``name``; ``None`` reads ``GRADEDIT_AUTOCAST`` (unset: no autocast)."""
    if name is None:
        name = os.environ.get(AUTOCAST_ENV, "").strip() or None
    return canonical_autocast(name)


def parse_device_map(spec: str) -> DeviceMap:
    """``--device-map`` text: a strategy (``auto``, ``balanced``, ...), a JSON object, or a JSON file.

    Raises:
        ConfigError: neither, or JSON that is not an object of module name -> device.
    """
    text = spec.strip()
    if text.lower() in DEVICE_MAP_STRATEGIES:
        return text.lower()
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"device map {spec!r} is neither one of {', '.join(DEVICE_MAP_STRATEGIES)}, a JSON object "
                              f"nor a JSON file; e.g. --device-map auto or --device-map '{{\"\": \"cpu\"}}'")
        text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"device map {spec!r} is not valid JSON ({err.msg} at {err.pos}); give "
                          f"{{\"module name\": \"cpu\" | \"disk\" | \"cuda:N\" | N}}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"device map {spec!r} must be a JSON object of module name -> device")
    return value


def check_device_map(device_map: DeviceMap, offload_folder: str | Path | None) -> DeviceMap:
    """Validate a device map before any weight is read (devices exist; disk offload has a folder).

    Raises:
        ConfigError: unknown strategy or device, CUDA without CUDA, ``"disk"`` without ``offload_folder``,
            an empty map, or a launcher (each rank would load its own split copy).
    """
    world = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if world.isdigit() and int(world) > 1:
        raise ConfigError(f"device_map splits one model over this machine's devices for one process, but this is "
                          f"one of {world} launcher processes; run without torchrun / accelerate launch, or use "
                          f"--device instead of --device-map")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ConfigError(f"unknown device_map {device_map!r}; use one of {', '.join(DEVICE_MAP_STRATEGIES)} "
                              "or a dict of module name -> device")
        return device_map
    if not isinstance(device_map, Mapping) or not device_map:
        raise ConfigError("device_map must be a strategy name or a non-empty dict of module name -> device")
    out: dict[str, int | str] = {}
    for module, dev in device_map.items():
        if not isinstance(module, str):
            raise ConfigError(f"device_map key {module!r} is not a module name (a string such as 'model.layers.0')")
        out[module] = _check_device(module, dev)
    if "disk" in out.values() and offload_folder is None:
        raise ConfigError("the device_map puts modules on 'disk' but no offload folder is given; pass "
                          "offload_folder= (--offload-folder DIR)")
    return out


def _check_device(module: str, dev: object) -> int | str:
    if isinstance(dev, bool) or not isinstance(dev, (int, str)):
        raise ConfigError(f"device_map[{module!r}] = {dev!r} is not a device; use 'cpu', 'disk', 'cuda:N' or N")
    if isinstance(dev, str):
        name = dev.strip().lower()
        if name in ("cpu", "disk", "mps"):
            return name
        if not _CUDA.match(name):
            raise ConfigError(f"device_map[{module!r}] = {dev!r} is not a device; use 'cpu', 'disk', 'cuda:N' or N")
        dev = int(name.split(":")[1]) if ":" in name else 0
    if dev < 0:
        raise ConfigError(f"device_map[{module!r}] = {dev} is not a GPU index")
    if not torch.cuda.is_available() or dev >= torch.cuda.device_count():
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ConfigError(f"device_map[{module!r}] asks for GPU {dev} but this machine has {have}; map it to "
                          "'cpu' or 'disk'")
    return dev


def dispatch(model: torch.nn.Module, device_map: DeviceMap, *, offload_folder: str | Path | None = None,
             max_memory: Mapping[int | str, int | str] | None = None) -> torch.nn.Module:
    """Dispatch an in-memory model with accelerate (strategy names are resolved by
    ``infer_auto_device_map``); returns the same model, hooked. For folders and hub ids
    ``from_pretrained(device_map=...)`` is used instead, so no full copy is held in memory."""
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError:
        raise ImportError("device_map needs accelerate: pip install 'gradedit[dist]' (or pip install accelerate)") from None
    if isinstance(device_map, str):
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        mapping: dict[str, int | str] = dict(infer_auto_device_map(
            model, max_memory=dict(max_memory) if max_memory else None, no_split_module_classes=no_split))
        if "disk" in mapping.values() and offload_folder is None:
            raise ConfigError(f"device_map={device_map!r} offloads modules to disk here; pass offload_folder= "
                              "(--offload-folder DIR) or more max_memory")
    else:
        mapping = dict(device_map)
    folder = None if offload_folder is None else str(offload_folder)
    return dispatch_model(model, device_map=mapping, offload_dir=folder)


def is_dispatched(model: torch.nn.Module) -> bool:
    """Whether accelerate hooks run ``model`` (a device map that splits or offloads it).

    A device map that puts the whole model on one device adds no hooks: that model is a plain one."""
    if getattr(model, "hf_device_map", None) is None and not hasattr(model, "_hf_hook"):
        return False
    return any(hasattr(m, "_hf_hook") for m in model.modules())


def refuse_dispatched(model: torch.nn.Module, what: str) -> None:
    """Raise if ``model`` is dispatched: ``what`` needs the whole model in memory on one device.

    Raises:
        ConfigError: one line naming the fix (load without ``device_map``).
    """
    if is_dispatched(model):
        raise ConfigError(f"{what} needs the whole model in memory on one device, but this model was loaded with a "
                          f"device_map that splits or offloads it; load it without device_map (device_map serves "
                          f"forward-only work: blast radius, decoder sweeps, scoring)")


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: the input embedding's execution device under accelerate hooks,
    else the device of the first parameter."""
    if is_dispatched(model):
        get_emb = getattr(model, "get_input_embeddings", None)
        emb = get_emb() if callable(get_emb) else None
        dev = getattr(getattr(emb, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
        for p in model.parameters():
            if p.device.type != "meta":
                return p.device
    return next(model.parameters()).device
