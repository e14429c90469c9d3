"""Pareto plot: on-target effect vs off-target damage, one line per editing method, front highlighted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .plots import pyplot

if TYPE_CHECKING:
    import pandas as pd

#: axis labels for the columns ``pareto_sweep`` writes
LABELS = {
    "on_target": "on-target effect (nats)",
    "off_target": "off-target damage: max |ΔCE| over other corpora (nats)",
    "off_target_kl": "mean off-target KL(base ‖ edit) (nats)",
    "surrounding_kl": "mean KL at surrounding positions (nats)",
}


def _label(col: str) -> str:
    if col in LABELS:
        return LABELS[col]
    if col.startswith("control_") and col[8:] in LABELS:
        return "control " + LABELS[col[8:]]
    return f"{col} (nats)"


def plot_pareto(frames: Mapping[str, pd.DataFrame], x: str = "on_target", y: str = "off_target",
                ax: Any = None, *, maximize_x: bool = True, minimize_y: bool = True) -> Any:
    """One line with markers per method (rows in ``value`` order), each method's Pareto front
    circled, and the front over all methods as a dashed line.

    Args:
        frames: ``{method: pareto_sweep(...) frame}``.
        x, y: columns to plot; "good" is large ``x`` and small ``y`` unless told otherwise.

    Raises:
        ValueError: ``frames`` is empty. KeyError: a column is missing.
    """
    import pandas as pd

    from ..blast import pareto_front

    if not frames:
        raise ValueError("frames is empty; pass {method: pareto_sweep(...)}")
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 5))
    else:
        fig = ax.figure
    fronts = []
    for method, frame in frames.items():
        for col in (x, y):
            if col not in frame.columns:
                raise KeyError(f"{method}: column {col!r} missing; columns: {list(frame.columns)}")
        rows = frame.sort_values("value") if "value" in frame.columns else frame
        (line,) = ax.plot(rows[x], rows[y], marker="o", markersize=4, alpha=0.8, label=method)
        front = pareto_front(frame, x, y, maximize_x=maximize_x, minimize_y=minimize_y)
        ax.scatter(front[x], front[y], s=90, facecolors="none", edgecolors=line.get_color(), linewidths=1.5,
                   zorder=4)
        fronts.append(front)
    overall = pareto_front(pd.concat(fronts, ignore_index=True), x, y, maximize_x=maximize_x,
                           minimize_y=minimize_y)
    ax.plot(overall[x], overall[y], linestyle="--", color="black", linewidth=1, label="Pareto front (all)")
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.axvline(0.0, color="grey", linewidth=0.6)
    ax.set_xlabel(_label(x))
    ax.set_ylabel(_label(y))
    ax.set_title("on-target effect vs off-target damage (circled: Pareto front)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
