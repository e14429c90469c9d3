"""``gradedit models list|prepare|info`` and ``gradedit score``: the zoo and scoring texts."""

from __future__ import annotations

import argparse
import json


def _cmd_models_list(args: argparse.Namespace) -> int:
    from ..models import zoo

    rows = [("name", "kind", "status", "description")]
    for e in zoo.entries():
        if not e.needs_prepare:
            status = "built on load"
        elif e.is_prepared():
            status = "prepared"
        else:
            status = f"not prepared (~{e.approx_minutes:g} min)"
        rows.append((e.name, e.kind, status, e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print(f"\ncache: {zoo.model_dir('x').parent}   prepare with: gradedit models prepare NAME")
    return 0


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    from ..models import zoo

    for name in args.names:
        path = zoo.prepare(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def _cmd_models_info(args: argparse.Namespace) -> int:
    from ..models import zoo

    e = zoo.entry(args.name)
    info: dict[str, object] = {"name": e.name, "kind": e.kind, "description": e.description, "source": e.source,
                               "install": e.install, "prepared": e.is_prepared()}
    if e.path is not None:
        info["path"] = str(e.path)
        src = e.path / zoo.SOURCE_FILE
        if src.is_file():
            info["provenance"] = json.loads(src.read_text())
    if e.is_prepared() and args.load:
        from ..models import load_model

        lm = load_model(e.name)
        info.update({"architecture": type(lm.model).__name__, "parameters": sum(p.numel() for p in lm.model.parameters()),
                     "vocab_size": lm.vocab_size, "pad_token": lm.tokenizer.pad_token})
    print(json.dumps(info, indent=2))
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    from .checks import read_lines

    texts = [t for t in (args.text or []) if t.strip()]
    if args.file:
        texts += read_lines(args.file, "--file")
    if not texts:
        raise ValueError("give --text TEXT (repeatable) or --file FILE (one text per line)")
    return texts


SCORE_EXPLAINED = {
    "cross_entropy": "mean negative log-probability (nats) the model gives each scored token "
                     "(CLM: every token after the first, from its left context; MLM: each token masked in turn)",
    "perplexity": "exp(cross_entropy): the effective number of equally likely choices per token",
    "lms": "language-modelling score = top-1 accuracy: the share of scored tokens that are the model's single "
           "most likely prediction (1.0 = all)",
    "tokens": "number of scored tokens",
}


def _cmd_score(args: argparse.Namespace) -> int:
    from .launch import single_process_only

    single_process_only("score", "a few texts are scored in one pass")
    texts = _read_texts(args)  # before the model loads: a missing text costs nothing
    from .. import metrics
    from ..models import load_model

    lm = load_model(args.model)
    sc = metrics.lm_scores(lm, texts)
    out = {"model": args.model, "texts": len(texts), "cross_entropy": sc["cross_entropy"],
           "perplexity": sc["perplexity"], "lms": sc["lms"], "tokens": sc["tokens"], "explain": SCORE_EXPLAINED}
    print(json.dumps(out, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` (list, prepare, info) and ``score``."""
    models = sub.add_parser("models", help="list, prepare or describe zoo models")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="every zoo model and whether it is prepared").set_defaults(func=_cmd_models_list)
    prep = msub.add_parser("prepare", help="build a zoo model's HF folder in the cache (once)")
    prep.add_argument("names", nargs="+", metavar="NAME")
    prep.add_argument("--force", action="store_true", help="rebuild even if prepared")
    prep.set_defaults(func=_cmd_models_prepare)
    info = msub.add_parser("info", help="describe one zoo model")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--load", action="store_true", help="also load it and report parameters and vocabulary")
    info.set_defaults(func=_cmd_models_info)

    score = sub.add_parser("score", help="cross-entropy, perplexity and LMS (top-1 accuracy) of a model on texts")
    score.add_argument("--model", required=True, help="zoo name, local HF folder or hub id")
    score.add_argument("--text", action="append", help="a text (repeatable)")
    score.add_argument("--file", help="a file with one text per line")
    from .launch import add_device
    from .precision import add_precision

    add_device(score)
    add_precision(score)
    score.set_defaults(func=_cmd_score)
