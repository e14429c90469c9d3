"""``load_model``: a zoo name, a local HF folder or a hub id -> :class:`LanguageModel`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError, ConfigError
from . import zoo
from .dispatch import (
    DEVICE_MAP_ENV,
    OFFLOAD_ENV,
    DeviceMap,
    check_device_map,
    dispatch,
    parse_device_map,
    resolve_autocast,
)
from .language_model import LanguageModel, ModelKind

__all__ = ["DEVICES", "DEVICE_ENV", "check_tokenizer", "default_device", "load_model", "resolve_device",
           "resolve_device_map"]

#: what ``--device`` accepts (``cuda:N`` too)
DEVICES = ("auto", "cpu", "cuda")
#: the device :func:`load_model` uses when none is given (default ``cpu``); the CLI's ``--device`` sets it
DEVICE_ENV = "GRADEDIT_DEVICE"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available, else the CPU) as a device.

    ``"cuda"`` and ``"auto"`` mean this process's GPU under a launcher (``LOCAL_RANK``), else GPU 0.
    ``None`` is the device named by ``GRADEDIT_DEVICE`` (:func:`default_device`), else the CPU.

    Raises:
        ConfigError: an unknown name, or CUDA asked for on a machine without it.
    """
    if device is None:
        device = os.environ.get(DEVICE_ENV, "").strip() or "cpu"
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} but this machine (or this torch build) has no CUDA; use "
                              "--device cpu or --device auto")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
        try:
            return torch.device(name)
        except RuntimeError:
            pass
    raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} or cuda:N")


@contextlib.contextmanager
def default_device(device: str | torch.device) -> Iterator[torch.device]:
    """Within the block, :func:`load_model` without ``device=`` puts models on ``device`` (checked now,
    resolved at each load by :func:`resolve_device`), through ``GRADEDIT_DEVICE`` (restored on exit)."""
    resolved = resolve_device(device)
    old = os.environ.get(DEVICE_ENV)
    os.environ[DEVICE_ENV] = str(device)
    try:
        yield resolved
    finally:
        if old is None:
            os.environ.pop(DEVICE_ENV, None)
        else:
            os.environ[DEVICE_ENV] = old


def resolve_device_map(device_map: DeviceMap | None, device: str | torch.device | None = None,
                       offload_folder: str | Path | None = None) -> tuple[DeviceMap | None, Path | None]:
    """The checked ``(device_map, offload_folder)`` :func:`load_model` uses; ``None`` values read
    ``GRADEDIT_DEVICE_MAP`` / ``GRADEDIT_OFFLOAD_FOLDER`` (set by the CLI's ``--device-map`` /
    ``--offload-folder``) unless ``device`` is given. ``(None, None)``: load the whole model onto ``device``.

    Raises:
        ConfigError: both ``device`` and ``device_map`` given, or a bad map (:func:`.dispatch.check_device_map`).
    """
    if device_map is not None and device is not None:
        raise ConfigError("give device= or device_map=, not both (a device map names the device of every module)")
    if device_map is None and device is None:  # an explicit device= beats the environment's device map
        spec = os.environ.get(DEVICE_MAP_ENV, "").strip()
        device_map = parse_device_map(spec) if spec else None
    if device_map is None:
        return None, None
    if offload_folder is None:
        offload_folder = os.environ.get(OFFLOAD_ENV, "").strip() or None
    folder = None if offload_folder is None else Path(offload_folder)
    return check_device_map(device_map, folder), folder


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    kind: ModelKind | None = None,
    autocast: str | None = None,
    device_map: DeviceMap | None = None,
    offload_folder: str | Path | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
) -> LanguageModel:
    """Load a zoo model (``gradedit models list``), a local HF folder, or a hub id.

    Zoo models that need preparing (``smollm2-135m``, ``gemma3-270m``, ``minilm-mlm``) are prepared
    on first use. ``kind`` overrides the MLM/CLM detection for a folder or hub id. Code shipped with
    a model (``auto_map`` in its config) is never run: ``trust_remote_code`` is always False.
    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (:func:`resolve_device`); ``None``
    = ``GRADEDIT_DEVICE`` (set by :func:`default_device` and the CLI's ``--device``), else the CPU.

    ``autocast``: ``"bf16"`` / ``"fp16"`` runs forward-only scoring in that precision
    (:attr:`LanguageModel.autocast`); ``None`` = ``GRADEDIT_AUTOCAST``, else off.
    ``device_map``: ``"auto"`` (or ``"balanced"``, ``"sequential"``) or ``{module: "cpu" | "disk" |
    "cuda:N" | N}`` splits or offloads the model with accelerate (inference only; see docs/devices.md);
    ``offload_folder`` holds the weights of ``"disk"`` modules, ``max_memory`` caps a strategy per
    device (``{0: "10GiB", "cpu": "30GiB"}``). ``None`` = ``GRADEDIT_DEVICE_MAP``, else one device.
    """
    ac = resolve_autocast(autocast)  # bad options fail before the model loads
    dmap, folder = resolve_device_map(device_map, device, offload_folder)
    name = str(name_or_path)
    if dmap is not None:
        lm = _load_dispatched(name, dtype=dtype, kind=kind, device_map=dmap, folder=folder, max_memory=max_memory)
    else:
        target = resolve_device(device)
        if zoo.is_zoo_name(name):
            lm = zoo.load(name, dtype=dtype)
        else:
            lm = _load_hf(name, dtype=dtype, kind=kind)
        lm.model.to(target)  # type: ignore[arg-type]  # transformers types PreTrainedModel.to (a decorated method) as taking the model itself
    lm.model.eval()
    lm.autocast = ac
    return lm


def _load_dispatched(name: str, *, dtype: torch.dtype, kind: ModelKind | None, device_map: DeviceMap,
                     folder: Path | None, max_memory: Mapping[int | str, int | str] | None) -> LanguageModel:
    """Folders, hub ids and prepared zoo models load straight into their devices (``from_pretrained``);
    tiny zoo models are built in memory, then dispatched."""
    placement: dict[str, Any] = {"device_map": device_map, "offload_folder": None if folder is None else str(folder),
                                 "max_memory": None if max_memory is None else dict(max_memory)}
    if not zoo.is_zoo_name(name):
        return _load_hf(name, dtype=dtype, kind=kind, placement=placement)
    if zoo.entry(name).needs_prepare:
        lm = _load_hf(str(zoo.prepare(name)), dtype=dtype, kind=zoo.entry(name).kind, placement=placement)
        lm.name = name
        return lm
    lm = zoo.load(name, dtype=dtype)
    dispatch(lm.model, device_map, offload_folder=folder, max_memory=max_memory)
    return lm


def _load_hf(name: str, *, dtype: torch.dtype, kind: ModelKind | None,
             placement: dict[str, Any] | None = None) -> LanguageModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = Path(name)
    if not path.exists() and ("/" not in name or name.startswith((".", "/"))):
            raise FileNotFoundError(
            f"{name!r} is neither a zoo model ({', '.join(zoo.names())}) nor an existing folder"
        )
    fix = "give a folder saved with model.save_pretrained() and tokenizer.save_pretrained() (or a hub id)"
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise ArtifactError(f"{name}: config.json cannot be read ({_first_line(err)}); {fix}") from None
        raise ArtifactError(f"{name} needs its own model code (auto_map in its config), which gradedit never runs; "
                            f"use a model of an architecture transformers ships") from None
    except OSError as err:
        if not path.is_dir():
            raise
        raise ArtifactError(f"{name}: config.json is missing or unreadable ({_first_line(err)}); {fix}") from None
    if kind is None:
        archs = getattr(config, "architectures", None) or []
        kind = "mlm" if any(a.endswith("ForMaskedLM") for a in archs) else "clm"
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    if path.is_dir():
        _check_folder(path, fix)
    try:
        model = auto.from_pretrained(name, dtype=dtype, trust_remote_code=False, **(placement or {}))
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except OSError as err:
        if not path.is_dir():
            raise
        raise ArtifactError(f"{name}: the weights or the tokenizer cannot be read ({_first_line(err)}); {fix}") from None
    except Exception as err:  # safetensors raises its own error type for a truncated or corrupt file
        if not path.is_dir() or "safetensor" not in type(err).__module__.lower() + type(err).__name__.lower():
            raise
        raise ArtifactError(f"{name}: the weights are corrupt or truncated ({_first_line(err)}); {fix}") from None
    check_tokenizer(model, tokenizer, name)
    return LanguageModel(model=model, tokenizer=tokenizer, kind=kind, name=name)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _check_folder(path: Path, fix: str) -> None:
    """A local model folder holds weights and a tokenizer (else transformers fails late or guesses)."""
    if not any((path / f).is_file() for f in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise ArtifactError(f"{path} holds no model weights (none of {', '.join(WEIGHT_FILES[::2])}); {fix}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ArtifactError(f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); {fix}")


def check_tokenizer(model: torch.nn.Module, tokenizer: Any, name: str) -> None:
    """The tokenizer belongs to the model: its ids fit the embedding, and the special token ids the
    model's config names (bos, eos) are the tokenizer's.

    Raises:
        ArtifactError: the tokenizer has more tokens than the embedding has rows, or a special id differs.
    """
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    rows = getattr(getattr(emb, "weight", None), "shape", (None,))[0]
    fix = "save the model's own tokenizer beside it (tokenizer.save_pretrained(folder))"
    if rows is not None and len(tokenizer) > rows:
        raise ArtifactError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                            f"{rows} rows, so the tokenizer belongs to another model; {fix}")
    config = getattr(model, "config", None)
    for what in ("bos", "eos"):
        want, got = getattr(config, f"{what}_token_id", None), getattr(tokenizer, f"{what}_token_id", None)
        wanted = set(want) if isinstance(want, (list, tuple)) else {want}
        if want is None or got is None or got in wanted:
            continue
        raise ArtifactError(f"{name}: the tokenizer's {what} token id is {got}, the model's config says {want}, "
                            f"so the tokenizer belongs to another model; {fix}")
