"""``gradedit edit scalar|lora``: build an edit that removes (or strengthens) a language and save it.

The target text is the FIRST ``--n-texts`` Bible sentences of ``--target``; other languages' first
sentences are kept unchanged by a KL term. ``gradedit blast EDIT_DIR`` then measures it on the LAST
sentences (held out). Wired into :mod:`gradedit.cli.app` by ``register(sub)``.

``--tokens N`` is the whole target-language budget by default: ``edit scalar`` ranks components on
the same first N target tokens it fits on (``--selection-tokens M`` states a separate selection
budget, ``all`` = every token of the ``--n-texts`` sentences). The command prints, and the edit's
metadata keeps, ``target_tokens_used``: the target tokens read per purpose and in total.

Under ``torchrun`` / ``accelerate launch`` ``edit lora`` trains data parallel (each rank a slice of
every batch); ``edit scalar`` runs the same fit on every rank. Rank 0 alone saves and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .checks import NoEditFound, check_langs, finite_float
from .launch import add_device

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``edit`` sub-command (``scalar`` and ``lora``) to the main parser's sub-parsers."""
    p = sub.add_parser("edit", help="build a component-scalar or LoRA edit from target-language text and save it")
    esub = p.add_subparsers(dest="edit_kind", required=True)
    for kind, help_ in (("scalar", "scale the most target-selective rank-1 components, fitted on a few tokens"),
                        ("lora", "the LoRA baseline: rank-r adapters, unlikelihood on targets + KL elsewhere")):
        e = esub.add_parser(kind, help=help_)
        e.add_argument("--model", required=True, help="zoo name, local HF folder or hub id")
        e.add_argument("--target", default="de", help="language whose text the edit acts on (default de)")
        e.add_argument("--others", default="fr,es,it,en", help="languages to keep (KL / leakage), comma-separated")
        e.add_argument("--tokens", type=int, default=16,
                       help="target tokens used to fit/train (default 16); for scalar also the selection budget "
                            "unless --selection-tokens says otherwise")
        e.add_argument("--n-texts", type=int, default=64, help="first n sentences per language to draw from")
        e.add_argument("--strengthen", action="store_true", help="lower the target CE instead of raising it")
        e.add_argument("--out", required=True, help="folder for the edit (WeightEdit.save)")
        e.add_argument("--kl-weight", type=finite_float, default=1.0,
                       help="weight of the KL term that keeps the other languages' predictions (default 1)")
        if kind == "scalar":
            e.add_argument("--components", type=int, default=1, help="how many components to scale (default 1)")
            e.add_argument("--max-leak", type=finite_float, default=0.1, help="allowed CE increase per other language")
            e.add_argument("--selection-tokens", default=None, metavar="N|all",
                           help="target tokens that rank the components (default: --tokens; 'all' = all of the "
                                "--n-texts sentences)")
        else:
            e.add_argument("--rank", type=int, default=1)
            e.add_argument("--steps", type=int, default=24)
            e.add_argument("--lr", type=finite_float, default=2e-3)
        add_device(e)
        e.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Build the edit, save it, print what it used; a scalar fit that finds no edit saves nothing (exit 3)."""
    if args.tokens < 1 or args.n_texts < 1:
        raise ValueError("--tokens and --n-texts must be >= 1")
    if args.kl_weight < 0:
        raise ValueError(f"--kl-weight must be >= 0, got {args.kl_weight}")
    others = [x.strip() for x in args.others.split(",") if x.strip() and x.strip() != args.target]
    if not others:
        raise ValueError(f"--others {args.others!r} names no language besides the target {args.target!r}")
    check_langs([args.target], "--target")
    check_langs(others, "--others")
    selection_tokens = _selection_budget(args.selection_tokens, args.tokens) if args.edit_kind == "scalar" else None
    from .. import dist
    from ..data.corpora import sentences
    from ..edits import LoraConfig, train_lora, tune_scalar
    from ..models import load_model

    dist.init()  # under a launcher: every rank takes part, rank 0 saves
    lm = load_model(args.model)
    target = sentences(args.target)[: args.n_texts]
    other = {lang: sentences(lang)[: max(4, args.n_texts // 4)] for lang in others}
    remove = not args.strengthen
    if args.edit_kind == "scalar":
        edit = tune_scalar(lm, target, other_texts=other, max_target_tokens=args.tokens, remove=remove,
                           n_components=args.components, max_leak=args.max_leak, kl_weight=args.kl_weight,
                           s_range=(-8.0, 1.0) if remove else (1.0, 8.0), selection_score="impact",
                           selection_tokens=selection_tokens)
        if edit.metadata.get("status") == "no-op":
            raise NoEditFound(f"no-op: {edit.metadata.get('status_reason')}; nothing saved to {args.out} (try more "
                              f"--tokens, --components, --selection-tokens all, or a smaller --kl-weight / larger --max-leak)")
    else:
        conf = LoraConfig(rank=args.rank, steps=args.steps, lr=args.lr, kl_weight=args.kl_weight,
                          max_target_tokens=args.tokens, batch_size=2, kl_topk=256)
        edit = train_lora(lm, target, conf, remove=remove, other_texts=[s for v in other.values() for s in v]).edit
    if not dist.is_main():
        return 0
    edit.metadata.update({"base_model": lm.name, "target_language": args.target, "remove": remove})
    out = edit.save(Path(args.out))
    print(f"saved {edit!r} to {out}")
    print(json.dumps({k: v for k, v in edit.metadata.items() if k in ("components", "scales", "base_model")},
                     default=str)[:600])
    used = edit.metadata.get("target_tokens_used", {})
    print(f"{args.target} tokens read: " + ", ".join(f"{k} {v}" for k, v in used.items() if k != "total")
          + f"; {used.get('total')} distinct in total")
    print(f"measure it on held-out text: gradedit blast {out} --model {args.model} --target {args.target}")
    return 0


def _selection_budget(value: str | None, tokens: int) -> int | None:
    """``--selection-tokens``: ``None`` -> the ``--tokens`` budget, ``"all"`` -> no cap, else a positive int."""
    if value is None:
        return tokens
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--selection-tokens must be a positive integer or 'all', got {value!r}") from None
    if n < 1:
        raise ValueError(f"--selection-tokens must be a positive integer or 'all', got {value!r}")
    return n
