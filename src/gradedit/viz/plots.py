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


def _as_runs(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed run dicts (``Trainer.training_runs``) from either runs or a flat evaluation history."""
    if all("history" in h for h in history):
        return [dict(h) for h in history]
    seeds = sorted({h.get("seed", 0) for h in history})
    return [{"seed": s, "history": [h for h in history if h.get("seed", 0) == s]} for s in seeds]


def plot_convergence(history: Sequence[dict[str, Any]], threshold: float | None = None, ax: Any = None) -> Any:
    """Validation |r| (left axis) and training loss (right axis, log) per step, one colour per seed.

    ``history``: ``Trainer.training_runs()`` (per seed: ``history``, ``best_step``, ``step_losses``,
    ``stopped_early``, ``last_step``) or a flat list of evaluations with a ``seed`` key. The kept
    (best) step is marked with a star and a dotted vertical line; an early stop with a cross.
    """
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
    else:
        fig = ax.figure
    loss_ax = ax.twinx()
    runs = _as_runs(history)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    losses_seen: list[float] = []
    for i, run in enumerate(runs):
        c, seed, evals = colors[i % len(colors)], run.get("seed", 0), run["history"]
        steps = [h["step"] for h in evals]
        ax.plot(steps, [abs(h["correlation"]) for h in evals], marker="o", color=c,
                label=f"validation |r| (seed {seed})")
        per_step = run.get("step_losses") or []
        if per_step:
            xs, ys = [p[0] for p in per_step], [p[1] for p in per_step]
            loss_ax.plot(xs, ys, color=c, linestyle="--", linewidth=0.8, alpha=0.6,
                         label=f"training loss per step (seed {seed})")
        else:
            xs, ys = steps, [h["loss"] for h in evals]
            loss_ax.plot(xs, ys, color=c, linestyle="--", alpha=0.6,
                         label=f"training loss, mean since last evaluation (seed {seed})")
        losses_seen += ys
        best = run.get("best_step")
        if best in steps:
            r_best = abs(evals[steps.index(best)]["correlation"])
            ax.axvline(best, color=c, linestyle=":", linewidth=1)
            ax.plot([best], [r_best], marker="*", markersize=16, color=c, markeredgecolor="black", linestyle="none",
                    label=f"kept model: step {best}, |r| = {r_best:.3f}")
        if run.get("stopped_early") and steps:
            ax.plot([steps[-1]], [abs(evals[-1]["correlation"])], marker="X", markersize=10, color="black",
                    linestyle="none", label=f"early stop at step {steps[-1]} (no gain for patience)")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":",
                   label=f"convergence threshold |r| = {threshold:g}")
    ax.set_xlabel("training step (optimiser updates)")
    ax.set_ylabel("validation |Pearson r| (encoded value vs label)")
    ax.set_ylim(0, 1.05)
    loss_ax.set_ylabel("training loss (MSE of the reconstructed gradient)")
    if any(v > 0 for v in losses_seen):
        loss_ax.set_yscale("log")
    handles = ax.get_legend_handles_labels()
    more = loss_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="lower right", fontsize=7)
    ax.set_title("GRADIEND training: validation correlation and loss", fontsize=10)
    return fig


def _tok(tokens: Any) -> str:
    return " / ".join(repr(t) for t in tokens) if tokens else "?"


def _shown(key: str) -> Any:
    """Grid metric -> plotted value: the bias for "debias" (metric = −bias), P(C) for "C_weaken"
    (metric = 1 − P(C)), the metric itself otherwise."""
    if key == "debias":
        return lambda v: -v
    if key.endswith("_weaken"):
        return lambda v: 1.0 - v
    return lambda v: v


def metric_label(key: str, info: dict[str, Any]) -> str:
    """Axis label of a decoder metric for a reader: which probability, on which rows."""
    toks = info.get("class_tokens") or {}
    classes = list(toks) or list(info.get("classes") or [])
    if key == "debias":
        a, b = (classes + ["A", "B"])[:2]
        return f"mean |log P({_tok(toks.get(a))}) - log P({_tok(toks.get(b))})|\non neutral prompts (0 = balanced)"
    if key.endswith("_weaken"):
        c = key[:-7]
        return f"mean P({_tok(toks.get(c))}) on {c} rows (lower = weaker)"
    other = next((o for o in classes if o != key), "other-class")
    return f"mean P({_tok(toks.get(key))}) on {other} rows"


def plot_decoder(results: Any, ax: Any = None) -> Any:
    """The decoder figure: each selected metric vs learning rate (log x), one line per feature factor,
    the constrained measure (LMS or perplexity) dotted on a twin axis with the bound the selector
    actually used (labelled; none for selectors without a bound), and the selected points marked."""
    plt = pyplot()
    keys = list(results.selections) or sorted(results.base["metrics"])
    if ax is None:
        fig, axes = plt.subplots(1, len(keys), figsize=(7.5 * len(keys), 5.2), squeeze=False)
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
        shown = _shown(key)  # what is drawn: the probability itself (weaken) or the bias (debias)
        for ff in ffs:
            pts = sorted((p for p in grid if p["feature_factor"] == ff and key in p["metrics"]),
                         key=lambda p: p["learning_rate"])
            xs = [p["learning_rate"] for p in pts]
            a.plot(xs, [shown(p["metrics"][key]) for p in pts], marker="o", label=f"feature factor {ff:+g}")
            side.plot(xs, [p[measure] for p in pts], linestyle=":", alpha=0.6, label=f"{name}, feature factor {ff:+g}")
        a.axhline(shown(results.base["metrics"][key]), color="grey", linewidth=0.8, label="base model")
        if constraint.get("measure") == measure and constraint.get("factor") is not None:
            side.axhline(constraint["factor"] * results.base[measure], color="red", linewidth=0.8, linestyle="--",
                         label=f"selection bound: {constraint['label']}")
        if key in results.selections:
            s = results.selections[key]
            a.scatter([s.learning_rate], [shown(s.value)], s=120, facecolors="none", edgecolors="black", zorder=5,
                      label="selected" if getattr(s, "admissible", True) else "no admissible point (base)")
        a.set_xscale("log")
        a.ticklabel_format(axis="y", useOffset=False)
        a.set_xlabel("learning rate (size of the weight change)")
        a.set_ylabel(metric_label(key, results.info), fontsize=8)
        side.set_ylabel(f"{name} on neutral text (dotted)", fontsize=8)
        rule = constraint.get("label", results.info.get("selector", ""))
        what = {"debias": "debias"}.get(key, f"weaken {key[:-7]}" if key.endswith("_weaken") else f"strengthen {key}")
        a.set_title(f"decoder sweep: {what}" + (f" ({split} rows)" if split and key != "debias" else "")
                    + (f"\nselection rule: {rule}" if rule else ""), fontsize=9)
        h1, l1 = a.get_legend_handles_labels()
        h2, l2 = side.get_legend_handles_labels()
        a.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    return fig
