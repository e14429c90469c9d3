"""``gradedit data build``, and reading ``--data`` (a file, a folder or a built-in feature)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

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


def _cmd_data_build(args: argparse.Namespace) -> int:
    from ..data import features
    from ..models import load_model

    lm = load_model(args.model) if args.model else None
    ds = features.build(args.name, lm, seed=args.seed)
    if args.out:
        ds.save(args.out)
        print(f"saved {len(ds)} rows to {args.out}")
    print(features.describe(ds))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``data build``."""
    data = sub.add_parser("data", help="build feature datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    build = dsub.add_parser("build", help="build a built-in feature's PairDataset and print counts")
    build.add_argument("name")
    build.add_argument("--model", help="validate target words as single tokens of this model")
    build.add_argument("--out", help="save to this .csv/.parquet/.jsonl")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_cmd_data_build)
