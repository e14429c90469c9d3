"""``gradedit data build``, and reading ``--data`` (a file, a folder or a built-in feature)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ..data.schema import PairDataset
    from ..models import LanguageModel


def load_data(spec: str, lm: LanguageModel) -> PairDataset:
    """A PairDataset from a file/folder, or from a built-in feature name."""
    from ..data.schema import PairDataset

    if Path(spec).exists():
        return PairDataset.load(spec)
    from ..data import features

    if features.exists(spec):
        return features.build(spec, lm)
    raise FileNotFoundError(f"{spec!r} is neither a data file/folder nor a built-in feature ({', '.join(features.names())})")


class _LazyEpilog(argparse.RawDescriptionHelpFormatter):
    """Calls a callable epilog only when the help is printed: the feature list imports the data
    catalog, which ``gradedit --help`` and every other command do not need."""

    def add_text(self, text: Any) -> None:
        super().add_text(text() if callable(text) else text)


def _features_help() -> str:
    from ..data import catalog

    return catalog.help_text()


def _cmd_data_build(args: argparse.Namespace) -> int:
    from ..data import catalog

    catalog.parse(args.name)  # unknown feature or class: fail before torch and the corpora load
    if args.max_per_class is not None and args.max_per_class < 1:
        raise ValueError(f"--max-per-class must be >= 1, got {args.max_per_class}")
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".parquet", ".jsonl"):
        raise ValueError(f"--out {args.out}: give a .csv, .parquet or .jsonl file")
    from ..data import features
    from ..models import load_model

    lm = load_model(args.model) if args.model else None
    ds = features.build(args.name, lm, seed=args.seed, max_size_per_class=args.max_per_class)
    if args.out:
        ds.save(args.out)
        print(f"saved {len(ds)} rows to {args.out}")
    print(features.describe(ds))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``data build``."""
    data = sub.add_parser("data", help="build feature datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    build = dsub.add_parser("build", help="build a built-in feature's PairDataset and print counts",
                            description="Build a built-in feature's pair data (balanced classes, 80/10/10 split) "
                                        "and print its counts.", epilog=cast(str, _features_help),
                            formatter_class=_LazyEpilog)
    build.add_argument("name", metavar="NAME", help="a built-in feature (listed below), or NAME:A-B for two classes")
    build.add_argument("--model", help="validate target words as single tokens of this model")
    build.add_argument("--out", help="save to this .csv/.parquet/.jsonl")
    build.add_argument("--max-per-class", type=int, default=None, metavar="N", help="at most N rows per class")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_cmd_data_build)
