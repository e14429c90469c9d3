"""What every demo shares: timed stages and the result the CLI prints."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("gradedit.demo")


@dataclass
class DemoResult:
    """What the demo produced: the report path and the headline numbers."""

    out_dir: Path
    report: Path
    headline: list[str]
    summary: dict[str, Any] = field(default_factory=dict)


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Log the start and wall time of a demo stage into ``timings``."""
    logger.info("== %s ...", name)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 1)
    logger.info("== %s done in %.1f s", name, timings[name])
