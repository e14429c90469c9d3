"""The ``gradedit`` command line: ``main`` parses and dispatches to one module per subcommand."""

from .main import main

__all__ = ["main"]
