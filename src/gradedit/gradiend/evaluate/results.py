"""Decoder-evaluation results: the grid and the selected configuration per (class, direction).

Selectors live in :mod:`.selectors` (re-exported here)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._files import write_json_atomic
from .selectors import (
    SELECTORS,
    Constraint,
    NoAdmissiblePoint,
    Selector,
    lms_constraint,
    metric_times_lms,
    perplexity_constraint,
    resolve_selector,
    result_key,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["SELECTORS", "Constraint", "DecoderResults", "NoAdmissiblePoint", "Selection", "Selector", "lms_constraint",
           "metric_times_lms", "perplexity_constraint", "resolve_selector", "result_key"]


@dataclass
class Selection:
    """The configuration chosen for one (class, direction).

    ``admissible`` is ``False`` when no grid point raised the metric above its base value within the
    selector's constraint: then the fields describe the unedited base (lr 0) and ``reason`` names the
    requirement that binds; ``rewrite_base_model`` refuses such a selection. ``split`` names the data
    split the values were measured on (the rows that chose this point: not a held-out figure).
    """

    key: str
    target_class: str
    increase: bool
    value: float
    base_value: float
    feature_factor: float
    learning_rate: float
    lms: float
    base_lms: float
    perplexity: float = float("nan")
    base_perplexity: float = float("nan")
    admissible: bool = True
    reason: str = ""
    split: str = ""

    @property
    def ratio(self) -> float:
        """value / base_value (how many times the metric moved)."""
        return self.value / self.base_value if self.base_value else float("inf")

    def require_admissible(self) -> Selection:
        """``self``, or raise :class:`NoAdmissiblePoint` naming the constraint that binds."""
        if not self.admissible:
            direction = "strengthen" if self.increase else "weaken"
            raise NoAdmissiblePoint(f"cannot {direction} {self.target_class!r}: {self.reason or 'no admissible point'}; "
                                    "widen the grid (learning_rates=, feature_factors=) or relax the selector")
        return self


@dataclass
class DecoderResults(Mapping[str, Selection]):
    """Dict-like: ``dec["fem"]``, ``dec["fem_weaken"]`` -> ``Selection``; ``.grid`` holds every point."""

    selections: dict[str, Selection]
    grid: list[dict[str, Any]]
    base: dict[str, Any]
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Selection:
        try:
            return self.selections[key]
        except KeyError:
            raise KeyError(f"{key!r} was not evaluated; available: {sorted(self.selections)} "
                           f"(weakening is 'CLASS_weaken', evaluated with increase_target_probabilities=False)") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.selections)

    def __len__(self) -> int:
        return len(self.selections)

    def to_frame(self) -> pd.DataFrame:
        """One row per grid point: feature_factor, learning_rate, lms and every metric."""
        import pandas as pd

        rows = [{"feature_factor": p["feature_factor"], "learning_rate": p["learning_rate"], "lms": p["lms"],
                 "perplexity": p.get("perplexity"),
                 "refined": p.get("refined", False), **p["metrics"]} for p in [self.base, *self.grid]]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"selections": {k: asdict(v) for k, v in self.selections.items()}, "grid": self.grid,
                "base": self.base, "fingerprint": self.fingerprint, "info": self.info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecoderResults:
        return cls({k: Selection(**v) for k, v in d["selections"].items()}, list(d["grid"]), dict(d["base"]),
                   d.get("fingerprint", ""), dict(d.get("info", {})))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> DecoderResults:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def merged(self, other: DecoderResults) -> DecoderResults:
        """Selections of both (other wins on clashes); grids concatenated."""
        return DecoderResults({**self.selections, **other.selections}, self.grid + other.grid, self.base,
                              self.fingerprint, {**self.info, **other.info})

    def plot(self, path: str | Path | None = None, ax: Any = None) -> Any:
        from ...viz.plots import plot_decoder

        fig = plot_decoder(self, ax=ax)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig
