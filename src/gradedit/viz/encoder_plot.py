"""The encoder figure: distribution of encoded values per class and neutral data type."""

from __future__ import annotations

from typing import Any

import numpy as np

from .plots import pyplot

#: order of the non-class groups, below the two classes
NEUTRAL_GROUPS = ("identity", "neutral_masked", "neutral")


#: how the plot names each non-class group
GROUP_LABELS = {"identity": "identity rows (factual = alternative)",
                "neutral_masked": "feature contexts, another word masked",
                "neutral": "neutral text, a word masked"}


def encoder_groups(results: Any) -> list[tuple[str, np.ndarray]]:
    """``[(label, encoded values [n]), ...]`` top to bottom: class A, class B rows (of the evaluated
    split), then identity, neutral_masked and neutral (those present)."""
    rows = results.rows
    split = results.info.get("split") or "evaluated"
    out = []
    for cls in results.classes:
        sel = (rows["data_type"] == "training") & (rows["class"] == cls)
        if sel.any():
            out.append((f"{cls} rows ({split} split)", rows.loc[sel, "encoded"].to_numpy(float)))
    for dt in NEUTRAL_GROUPS:
        sel = rows["data_type"] == dt
        if sel.any():
            out.append((GROUP_LABELS[dt], rows.loc[sel, "encoded"].to_numpy(float)))
    return out


def plot_encoder_distribution(results: Any, ax: Any = None) -> Any:
    """Encoded values (x, −1…1) per group (y, class A on top): jittered points, a 25–75 % bar, a 5–95 %
    whisker and the median; dashed lines at ±0.5 (the ternary-accuracy thresholds).

    Works for constant groups too (e.g. ``source="diff"`` neutral rows, all exactly ``tanh(b_e)``).
    """
    plt = pyplot()
    groups = encoder_groups(results)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 1.0 + 0.7 * max(1, len(groups))))
    else:
        fig = ax.figure
    rng = np.random.default_rng(0)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    labels = []
    for i, (name, values) in enumerate(groups):
        y = len(groups) - 1 - i
        color = colors[i % len(colors)]
        q05, q25, q50, q75, q95 = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
        ax.scatter(values, y + rng.uniform(-0.18, 0.18, size=values.size), s=10, alpha=0.45, color=color,
                   edgecolors="none")
        ax.hlines(y, q05, q95, color="black", linewidth=1)
        ax.hlines(y, q25, q75, color=color, linewidth=7, alpha=0.8)
        ax.plot([q50], [y], marker="|", markersize=14, color="black")
        labels.append(f"{name}\nn={values.size}, mean {values.mean():+.2f}")
    for x in (-0.5, 0.5):
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.5)
    ax.set_yticks(range(len(groups) - 1, -1, -1))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_xlabel("encoded value h (feature neuron; class A expected near +1, class B near -1)")
    split, source = results.info.get("split"), results.info.get("source")
    where = ", ".join(x for x in (f"{split} split" if split else "", f"{source} gradient" if source else "") if x)
    ax.set_title(f"GRADIEND encoder{f' ({where})' if where else ''}: Pearson r = {results.correlation:+.3f}, "
                 f"accuracy = {results.accuracy:.2f} (binary {results.accuracy_binary:.2f})", fontsize=10)
    fig.tight_layout()
    return fig
