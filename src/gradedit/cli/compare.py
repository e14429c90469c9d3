"""``gradedit compare RUN [RUN ...] --out DIR``: compare trained feature models (top-k overlap,
similarity matrices, layers, cross-encoding) and write an HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .checks import new_folder

PARTS = ("decoder-weight", "encoder-weight", "decoder-bias", "decoder-sum")


def topk_value(text: str) -> int | float:
    """``--topk``: an int count (``1000``) or a fraction in (0, 1] (``0.01``)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--topk must be a count (e.g. 1000) or a fraction (e.g. 0.01), "
                                             f"got {text!r}") from None
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"--topk as a fraction must be in (0, 1], got {text}") from None
        return value
    if value < 1:
        raise argparse.ArgumentTypeError(f"--topk as a count must be >= 1, got {text}")
    return value


def _model_folder(value: str) -> Path:
    path = Path(value)
    if (path / "model" / "config.json").is_file() or (path / "config.json").is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; give run folders written by gradedit train")
    raise FileNotFoundError(f"{path} holds no trained feature model (no model/config.json); train it first "
                            f"with gradedit train --out {path}")


def _cmd_compare(args: argparse.Namespace) -> int:
    runs = [_model_folder(r) for r in args.runs]
    if len(runs) < 2:
        raise ValueError("give at least two runs to compare")
    if len({p.resolve() for p in runs}) != len(runs):
        raise ValueError("the same run is given twice; give each run once")
    if args.cross_rows < 1:
        raise ValueError(f"--cross-rows must be >= 1, got {args.cross_rows}")
    out = new_folder(args.out)
    from ..gradiend.compare import compare_runs

    comp = compare_runs(runs, k=args.topk, part=args.part, cross=not args.no_cross, split=args.split,
                        max_rows=args.cross_rows)
    comp.save(out, title=args.title)
    mat = comp.matrix_frame("overlap_min")
    print(f"top-k overlap |A∩B|/min(|A|,|B|) ({args.part}, k={args.topk}):")
    print(mat.round(3).to_string())
    if comp.cross is not None:
        print("cross-encoding r (rows: encoder, columns: data):")
        print(comp.cross.correlation_frame().round(3).to_string())
    print(f"report: {out / 'report.html'} (tables: {out / 'matrices'}, top-k: {out / 'topk.csv'})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``compare``."""
    cp = sub.add_parser("compare", help="compare trained feature models: shared parameters, similarity, report")
    cp.add_argument("runs", nargs="+", metavar="RUN", help="two or more folders written by gradedit train")
    cp.add_argument("--out", required=True, help="new folder for the report, tables and figures")
    cp.add_argument("--topk", type=topk_value, default=1000,
                    help="top entries per model: a count (default 1000) or a fraction of each model's inputs")
    cp.add_argument("--part", choices=PARTS, default="decoder-weight",
                    help="what ranks the entries and gives the compared values (default decoder-weight)")
    cp.add_argument("--no-cross", action="store_true",
                    help="skip cross-encoding (which loads the base model and encodes each run's test rows)")
    cp.add_argument("--split", default="test", choices=["train", "val", "test"],
                    help="split whose rows cross-encoding uses (default test)")
    cp.add_argument("--cross-rows", type=int, default=32, help="rows per run for cross-encoding (default 32)")
    cp.add_argument("--title", default=None, help="title of the HTML report")
    cp.set_defaults(func=_cmd_compare)
