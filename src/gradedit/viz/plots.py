"""Matplotlib figures. Every function takes ``ax=`` (or creates a figure) and returns the figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or an ImportError naming the ``plot`` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'gradedit[plot]'") from err
    return plt


def plot_convergence(history: Sequence[dict[str, Any]], threshold: float | None = None, ax: Any = None) -> Any:
    """Validation |r| (left axis) and training loss (right axis, log) per step, one line per seed."""
    plt = pyplot()
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


def plot_decoder(results: Any, ax: Any = None) -> Any:
    """The decoder figure: each selected metric vs learning rate (log x), one line per feature factor,
    the constrained measure (LMS or perplexity) dotted on a twin axis with the bound the selector
    actually used (labelled; none for selectors without a bound), and the selected points marked."""
    plt = pyplot()
    keys = list(results.selections) or sorted(results.base["metrics"])
    if ax is None:
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
        axes = list(axes[0])
    else:
        fig, axes = ax.figure, [ax] * len(keys)
    grid = list(results.grid)
    ffs = sorted({p["feature_factor"] for p in grid})
    constraint = results.info.get("constraint") or {}
    measure = constraint.get("measure") if constraint.get("measure") in ("lms", "perplexity") else "lms"
    name = "LMS" if measure == "lms" else "perplexity"
    split = results.info.get("split")
    for a, key in zip(axes, keys):
        side = a.twinx()
        for ff in ffs:
            pts = sorted((p for p in grid if p["feature_factor"] == ff), key=lambda p: p["learning_rate"])
            xs = [p["learning_rate"] for p in pts]
            a.plot(xs, [p["metrics"][key] for p in pts], marker="o", label=f"ff={ff:+g}")
            side.plot(xs, [p[measure] for p in pts], linestyle=":", alpha=0.6, label=f"{name} ff={ff:+g}")
        a.axhline(results.base["metrics"][key], color="grey", linewidth=0.8, label="base")
        if constraint.get("measure") == measure and constraint.get("factor") is not None:
            side.axhline(constraint["factor"] * results.base[measure], color="red", linewidth=0.8, linestyle="--",
                         label=f"selection bound: {constraint['label']}")
            side.legend(fontsize=7, loc="upper right")
        if key in results.selections:
            s = results.selections[key]
            a.scatter([s.learning_rate], [s.value], s=120, facecolors="none", edgecolors="black", zorder=5,
                      label="selected" if getattr(s, "admissible", True) else "no admissible point (base)")
        a.set_xscale("log")
        a.set_xlabel("learning rate")
        a.set_ylabel(key if not key.endswith("_weaken") else f"1 - P({key[:-7]})")
        side.set_ylabel(f"{name} (dotted)")
        rule = constraint.get("label", results.info.get("selector", ""))
        a.set_title(f"decoder sweep: {key}" + (f" ({split} rows)" if split else "") + (f"\n{rule}" if rule else ""),
                    fontsize=9)
        a.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
