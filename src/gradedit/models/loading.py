"""``load_model``: a zoo name, a local HF folder or a hub id -> :class:`LanguageModel`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ArtifactError
from . import zoo
from .language_model import LanguageModel, ModelKind

__all__ = ["load_model"]


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    kind: ModelKind | None = None,
) -> LanguageModel:
    """Load a zoo model (``gradedit models list``), a local HF folder, or a hub id.

    Zoo models that need preparing (``smollm2-135m``, ``gemma3-270m``, ``minilm-mlm``) are prepared
    on first use. ``kind`` overrides the MLM/CLM detection for a folder or hub id. Code shipped with
    a model (``auto_map`` in its config) is never run: ``trust_remote_code`` is always False.
    """
    name = str(name_or_path)
    if zoo.is_zoo_name(name):
        lm = zoo.load(name, dtype=dtype)
    else:
        lm = _load_hf(name, dtype=dtype, kind=kind)
    lm.model.to(device)  # type: ignore[arg-type]  # transformers types PreTrainedModel.to (a decorated method) as taking the model itself
    lm.model.eval()
    return lm


def _load_hf(name: str, *, dtype: torch.dtype, kind: ModelKind | None) -> LanguageModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = Path(name)
    if not path.exists() and ("/" not in name or name.startswith((".", "/"))):
            raise FileNotFoundError(
            f"{name!r} is neither a zoo model ({', '.join(zoo.names())}) nor an existing folder"
        )
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ArtifactError(f"{name} needs its own model code (auto_map in its config), which gradedit never runs; "
                            f"use a model of an architecture transformers ships") from None
    if kind is None:
        archs = getattr(config, "architectures", None) or []
        kind = "mlm" if any(a.endswith("ForMaskedLM") for a in archs) else "clm"
    auto = AutoModelForMaskedLM if kind == "mlm" else AutoModelForCausalLM
    model = auto.from_pretrained(name, dtype=dtype, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    return LanguageModel(model=model, tokenizer=tokenizer, kind=kind, name=name)
