"""Matplotlib figures. Every function takes ``ax=`` (or creates a figure) and returns the figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'gradedit[plot]'") from err
    return plt


def plot_convergence(history: Sequence[dict[str, Any]], threshold: float | None = None, ax: Any = None) -> Any:
    """Validation |r| (left axis) and training loss (right axis, log) per step, one line per seed."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    loss_ax = ax.twinx()
    seeds = sorted({h.get("seed", 0) for h in history})
    for seed in seeds:
        rows = [h for h in history if h.get("seed", 0) == seed]
        steps = [h["step"] for h in rows]
        ax.plot(steps, [abs(h["correlation"]) for h in rows], marker="o", label=f"|r| seed {seed}")
        loss_ax.plot(steps, [h["loss"] for h in rows], linestyle="--", alpha=0.5, label=f"loss seed {seed}")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":", label="convergence threshold")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation |correlation|")
    ax.set_ylim(0, 1.02)
    loss_ax.set_ylabel("reconstruction loss (MSE)")
    if any(h["loss"] > 0 for h in history):
        loss_ax.set_yscale("log")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("GRADIEND training convergence")
    return fig
