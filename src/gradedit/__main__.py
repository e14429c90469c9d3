"""``python -m gradedit`` (and ``torchrun -m gradedit``): the same command line as ``gradedit``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
