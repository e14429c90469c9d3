"""tqdm progress bars that users can silence with ``GRADEDIT_NO_PROGRESS=1``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_disabled() -> bool:
    return os.environ.get("GRADEDIT_NO_PROGRESS", "").lower() in ("1", "true", "yes")


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (disabled by ``GRADEDIT_NO_PROGRESS`` or ``disable=True``)."""
    kwargs["disable"] = kwargs.get("disable", False) or progress_disabled()
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
