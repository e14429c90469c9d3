"""The ``gradedit`` command line (argparse): one module per subcommand, each with ``register(sub)``;
each subcommand is a thin layer over the library, imported lazily so ``gradedit --help`` is fast."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import blast, data, demo, edit, env, evaluate, models, rewrite, train

logger = logging.getLogger(__name__)

SUBCOMMANDS = (models, env, data, train, evaluate, rewrite, edit, blast, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``gradedit`` parser with every subcommand registered."""
    p = argparse.ArgumentParser(prog="gradedit", description="Find where a language model encodes a feature, "
                                "rewrite its weights, and measure the blast radius.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as err:
        from ..models.zoo import ModelPackageMissing

        if args.verbose and not isinstance(err, ModelPackageMissing):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"gradedit: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
