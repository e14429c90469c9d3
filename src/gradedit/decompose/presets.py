"""Ready-made decompositions (model, layers, C, options, unlabelled text) and the command-line entry.

``gemma3-270m``: MLP ``gate_proj``/``up_proj`` of layers 0 and 14–17 (where German-selective SVD
directions were found), on mixed Bible text of all five languages — sentences ``[100 : 100+n]`` of
each language, so never the last 32 sentences (evaluation text elsewhere) nor German 65–88
(calibration). ``objective="layer"``, sized for ≤ 60 minutes on 2 CPU cores, resumable.
``tiny``: the same recipe on the random ``tiny-llama`` test model, in seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DecompositionError
from .artifact import Decomposition
from .config import DecomposeConfig

logger = logging.getLogger(__name__)

__all__ = ["Preset", "PRESETS", "preset_texts", "run_preset", "add_arguments", "parse_sets", "run_cli_args"]

LANGUAGES = ("de", "en", "fr", "es", "it")


@dataclass(frozen=True)
class Preset:
    """A named decomposition recipe.

    Attributes:
        model: zoo name (or folder) for :func:`gradedit.load_model`.
        modules, n_components: as for :func:`gradedit.decompose.decompose`.
        options: :class:`DecomposeConfig` fields.
        text: ``"bible"`` (mixed languages, ``sentences[start : start + per_language]`` each) or ``"tiny"``.
    """

    model: str
    modules: tuple[str, ...]
    n_components: int | Mapping[str, int]
    options: Mapping[str, Any] = field(default_factory=dict)
    text: str = "bible"
    languages: tuple[str, ...] = LANGUAGES
    start: int = 100
    per_language: int = 300


_GEMMA_LAYERS = (0, 14, 15, 16, 17)

#: options of the real-model presets (objective "layer", sized for 2 CPU cores); each adds its ``steps``
_CPU_MLP_OPTIONS: dict[str, Any] = {
    "objective": "layer", "batch_size": 256, "lr": 3e-4, "ci_lr": 3e-3, "lr_final_frac": 0.1,
    "importance_coeff": 2e-4, "p_start": 1.0, "p_end": 0.4, "faithfulness_coeff": 300.0, "faithfulness_rows": 256,
    "ci_hidden": 8, "seq_len": 64, "max_pool_rows": 32768, "checkpoint_every": 100, "stats_rows": 8192}

PRESETS: dict[str, Preset] = {
    "gemma3-270m": Preset(
        model="gemma3-270m",
        modules=tuple(f"model.layers.{i}.mlp.{p}_proj" for i in _GEMMA_LAYERS for p in ("gate", "up")),
        n_components=1024,
        options={**_CPU_MLP_OPTIONS, "steps": 2500},
        per_language=300,
    ),
    # The redirect study's layers (gradedit.demo.redirect, docs/redirect.md): smollm2-135m's MLP down
    # projections write straight into the residual stream (no post-MLP norm as in Gemma 3). Same text
    # (sentences 100-399 of each language, mixed) and options as gemma3-270m; 3 layers of 1536 -> 576 at
    # C=1024 cost ~1.1x a gemma gate/up layer per step (rows x C x (d_in + d_out) plus faithfulness rows
    # d_in x C x 256), i.e. ~1/3 of gemma3-270m's 10 layers, and 2000 instead of 2500 steps: ~27% of it.
    "smollm2-135m-down": Preset(
        model="smollm2-135m",
        modules=tuple(f"model.layers.{i}.mlp.down_proj" for i in (12, 19, 26)),
        n_components=1024,
        options={**_CPU_MLP_OPTIONS, "steps": 2000},
        per_language=300,
    ),
    "tiny": Preset(
        model="tiny-llama",
        modules=("model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj"),
        n_components=96,
        options={"objective": "layer", "steps": 100, "batch_size": 128, "lr": 1e-2, "importance_coeff": 1e-3,
                 "faithfulness_warmup_steps": 0, "seq_len": 32, "checkpoint_every": 50},
        text="tiny",
    ),
}


def preset_texts(preset: Preset) -> list[str]:
    """The preset's unlabelled training text, languages interleaved sentence by sentence."""
    if preset.text == "tiny":
        from ..models.zoo.tiny import tiny_corpus

        return tiny_corpus(0)[:200]
    from ..data import corpora

    per: dict[str, list[str]] = {}
    for lang in preset.languages:
        sents = corpora.sentences(lang)
        stop = min(preset.start + preset.per_language, len(sents) - 32)  # the last 32 are held-out evaluation text
        per[lang] = sents[preset.start: stop]
    n = max(len(v) for v in per.values())
    return [per[lang][i] for i in range(n) for lang in preset.languages if i < len(per[lang])]


def run_preset(name: str, out: str | os.PathLike[str] | None, *, resume: bool = True,
               **overrides: Any) -> Decomposition:
    """Load the preset's model and text and decompose (``overrides``: :class:`DecomposeConfig` fields)."""
    if name not in PRESETS:
        raise DecompositionError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    from ..models import load_model
    from .api import decompose

    p = PRESETS[name]
    lm = load_model(p.model)
    return decompose(lm, list(p.modules), p.n_components, preset_texts(p), out=out, resume=resume,
                     **{**p.options, **overrides})


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gradedit decompose`` (the caller owns the parser and the sub-command)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a ready-made recipe (model, layers, C, text)")
    parser.add_argument("--model", help="zoo name or model folder (not with --preset)")
    parser.add_argument("--modules", nargs="+", help="module names or fnmatch patterns of linear layers")
    parser.add_argument("-C", "--n-components", type=int, help="components per module")
    parser.add_argument("--texts", help="UTF-8 text file, one text per line (default: the preset's / mixed Bible text)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints and the result)")
    parser.add_argument("--objective", choices=("layer", "output"))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="any DecomposeConfig field, e.g. --set importance_coeff=1e-3 lr=0.003")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.003", "init=data"]`` → ``{"lr": 0.003, "init": "data"}`` (values parsed as JSON when they can be)."""
    fields = DecomposeConfig.__dataclass_fields__
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise DecompositionError(f"--set takes KEY=VALUE, got {item!r}")
        if key not in fields:
            raise DecompositionError(f"unknown decomposition option {key!r}; known: {sorted(fields)}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def run_cli_args(args: argparse.Namespace) -> Decomposition:
    """Do the work of ``gradedit decompose`` for parsed ``args`` (see :func:`add_arguments`)."""
    overrides = parse_sets(args.set)
    for key in ("objective", "steps", "batch_size", "seed"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    texts = None
    if args.texts:
        with open(args.texts, encoding="utf-8") as fh:
            texts = [line.rstrip("\n") for line in fh if line.strip()]
    if args.preset:
        if args.model or args.modules or args.n_components:
            raise DecompositionError("--preset fixes the model, modules and C; drop --model/--modules/-C or --preset")
        if texts is None:
            return run_preset(args.preset, args.out, resume=not args.no_resume, **overrides)
        p = PRESETS[args.preset]
        model, modules, C, overrides = p.model, list(p.modules), p.n_components, {**p.options, **overrides}
    else:
        if not (args.model and args.modules and args.n_components):
            raise DecompositionError("give --model, --modules and -C (or a --preset)")
        model, modules, C = args.model, list(args.modules), args.n_components
        if texts is None:
            texts = preset_texts(Preset(model, tuple(modules), C))
    from ..models import load_model
    from .api import decompose

    return decompose(load_model(model), modules, C, texts, out=args.out, resume=not args.no_resume, **overrides)
