"""The ``gradedit`` command line (argparse): one module per subcommand, each with ``register(sub)``;
each subcommand is a thin layer over the library, imported lazily so ``gradedit --help`` is fast.

Errors are one line (``gradedit: error: ...``) unless ``--debug`` is given. Exit codes:

- 0 done;
- 1 internal error (a bug: one line, the traceback with ``--debug``);
- 2 usage or input error (bad arguments, data, config or model folder: the line names the fix);
- 3 no edit found (:class:`.checks.NoEditFound`; nothing saved);
- 130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM (128 + the signal number): ``train`` and
  ``decompose`` keep their checkpoints and say how to resume (:mod:`.interrupt`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import GradeditError
from . import blast, compare, components, data, decompose, demo, edit, env, evaluate, models, rewrite, train
from .checks import NoEditFound
from .launch import device_scope
from .precision import precision_scope

logger = logging.getLogger(__name__)

SUBCOMMANDS = (models, env, data, train, evaluate, rewrite, edit, blast, decompose, components, compare, demo)

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_EDIT = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
"""128 + the signal number, as shells report a process a signal ended (see :mod:`.interrupt`)."""
USER_ERRORS: tuple[type[BaseException], ...] = (
    GradeditError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    PermissionError)
"""Errors in what the user gave (arguments, files, data): exit code 2, one line."""

EPILOG = """\
workflow (see README.md, "Command line"):
  gradedit data build en-pronouns --model smollm2-135m --out data/en-pronouns.csv
  gradedit train --model smollm2-135m --data data/en-pronouns.csv --classes masc fem --out runs/pronouns
  gradedit evaluate encoder runs/pronouns ; gradedit evaluate decoder runs/pronouns
  gradedit rewrite runs/pronouns --target-class fem --out out/fem
  gradedit blast out/fem --langs en,de,fr

exit codes: 0 done, 1 internal error (a bug: rerun with --debug and report it with `gradedit env`),
2 usage or input error (the message names the fix), 3 no edit found (nothing saved),
130 interrupted by Ctrl-C (SIGINT), 143 terminated (SIGTERM); train and decompose keep their
checkpoints: run the same command again to resume"""


def build_parser() -> argparse.ArgumentParser:
    """The ``gradedit`` parser with every subcommand registered."""
    p = argparse.ArgumentParser(prog="gradedit", description="Find where a language model encodes a feature, "
                                "rewrite its weights, and measure the blast radius.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", "-v", "--verbose", dest="debug", action="store_true",
                   help="debug logging, and a traceback instead of a one-line error (also accepted after the "
                        "subcommand)")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return p


def _one_line(err: BaseException) -> str:
    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    return " ".join(str(msg).split()) or type(err).__name__


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, USER_ERRORS):
        return True
    if isinstance(err, ImportError) and "pip install" in str(err):
        return True  # an optional package is missing and the message says how to install it
    # a KeyError that carries a sentence (e.g. "unknown zoo model 'x'; known: ...") was raised on
    # purpose about the user's input; a bare key is a bug
    return isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str) and " " in err.args[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    cut = args_list.index("--") if "--" in args_list else len(args_list)
    debug = "--debug" in args_list[:cut]
    args_list = [a for i, a in enumerate(args_list) if a != "--debug" or i >= cut]
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:  # --help (0) or a usage error (2; argparse printed it)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    args.debug = args.debug or debug
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    try:
        # --device of the commands that run a model; --autocast/--device-map of the forward-only ones
        with device_scope(getattr(args, "device", None)), precision_scope(args):
            return int(args.func(args) or EXIT_OK)
    except NoEditFound as err:
        print(f"gradedit: {_one_line(err)}", file=sys.stderr)
        return EXIT_NO_EDIT
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gradedit: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except Exception as err:
        if args.debug:
            raise
        if _is_user_error(err):
            print(f"gradedit: error: {_one_line(err)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"gradedit: internal error: {type(err).__name__}: {_one_line(err)} (a bug: rerun with --debug for "
              f"the traceback and report it with the output of `gradedit env`)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
