"""Decoder-evaluation results: the grid, the selected configuration per (class, direction), policies."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._files import write_json_atomic

logger = logging.getLogger(__name__)

#: selector(points, key, base) -> chosen point; ``points`` are grid dicts, ``key`` e.g. "fem_weaken"
Selector = Callable[[Sequence[dict[str, Any]], str, dict[str, Any]], dict[str, Any]]


def result_key(cls: str, increase: bool) -> str:
    """``"fem"`` for strengthening fem, ``"fem_weaken"`` for weakening it."""
    return cls if increase else f"{cls}_weaken"


def lms_constraint(ratio: float = 0.99) -> Selector:
    """Maximise the metric among points whose LMS is at least ``ratio`` × the base LMS."""

    def select(points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> dict[str, Any]:
        ok = [p for p in points if p["lms"] >= ratio * base["lms"]]
        if not ok:
            logger.warning("no grid point keeps LMS >= %.2f x base for %s; keeping the base model", ratio, key)
            return base
        return max(ok, key=lambda p: p["metrics"][key])

    select.__name__ = f"lms_constraint({ratio})"
    return select


def perplexity_constraint(max_increase: float = 0.02) -> Selector:
    """Maximise the metric among points whose neutral perplexity rose at most ``max_increase`` (relative)."""

    def select(points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> dict[str, Any]:
        ok = [p for p in points if p["perplexity"] <= (1.0 + max_increase) * base["perplexity"]]
        if not ok:
            logger.warning("no grid point keeps perplexity within +%.0f%% for %s; keeping the base model",
                           100 * max_increase, key)
            return base
        return max(ok, key=lambda p: p["metrics"][key])

    select.__name__ = f"perplexity_constraint({max_increase})"
    return select


def metric_times_lms(points: Sequence[dict[str, Any]], key: str, base: dict[str, Any]) -> dict[str, Any]:
    """Maximise metric × LMS (no hard constraint)."""
    return max([base, *points], key=lambda p: p["metrics"][key] * p["lms"])


SELECTORS: dict[str, Selector] = {"lms": lms_constraint(0.99), "perplexity": perplexity_constraint(0.02),
                                  "product": metric_times_lms}


def resolve_selector(selector: str | Selector | None) -> Selector:
    if selector is None:
        return SELECTORS["lms"]
    if isinstance(selector, str):
        name, _, arg = selector.partition(":")
        if arg and name in ("lms", "perplexity"):  # "perplexity:0.01" = at most +1% perplexity
            try:
                value = float(arg)
            except ValueError:
                raise ValueError(f"selector {selector!r}: {arg!r} is not a number") from None
            return lms_constraint(value) if name == "lms" else perplexity_constraint(value)
        try:
            return SELECTORS[selector]
        except KeyError:
            raise ValueError(f"unknown selector {selector!r}; use one of {list(SELECTORS)}, 'lms:RATIO', "
                             "'perplexity:MAX_INCREASE' or a callable") from None
    if not callable(selector):
        raise TypeError("selector must be a name, a callable(points, key, base) or None")
    return selector


@dataclass
class Selection:
    """The configuration chosen for one (class, direction)."""

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

    @property
    def ratio(self) -> float:
        """value / base_value (how many times the metric moved)."""
        return self.value / self.base_value if self.base_value else float("inf")


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

    def to_frame(self) -> Any:
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
        from ..viz.plots import plot_decoder

        fig = plot_decoder(self, ax=ax)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig
