"""The ``gradedit`` command line: ``main`` parses and dispatches to one module per subcommand."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
