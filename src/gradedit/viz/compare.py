"""Plots of how several feature models' top-k parameter sets overlap, and where they sit.

``plot_overlap_sets`` draws a Venn diagram for 2 or 3 models and an UpSet-style chart for more: a
Venn diagram of 4 or more sets needs ellipses or non-convex shapes whose 15-63 regions are too small
and too tangled to read, so for 4-6 (or more) models the same exclusive-region counts are drawn as
bars, one per combination of models, with a dot matrix below naming the combination.

Inputs are plain data (the ``intersections`` dict of ``gradedit.gradiend.compare``: a tuple of model
names -> number of entries in exactly those models' sets), so these plots work for any set family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .plots import pyplot

__all__ = ["GROUP_BARS_MAX", "VENN_MAX", "plot_group_bars", "plot_group_heatmap", "plot_groups", "plot_overlap_sets",
           "plot_upset", "plot_venn"]

VENN_MAX = 3
"""Most sets drawn as a Venn diagram; more are drawn as an UpSet chart."""

GROUP_BARS_MAX = 6
"""Most models drawn as grouped bars per layer/module; more are drawn as a heatmap."""

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _sizes(regions: Mapping[tuple[str, ...], int], names: Sequence[str]) -> dict[str, int]:
    return {n: sum(c for combo, c in regions.items() if n in combo) for n in names}


def plot_venn(regions: Mapping[tuple[str, ...], int], names: Sequence[str], *, title: str = "", ax: Any = None) -> Any:
    """A Venn diagram of 2 or 3 sets (equal circles, NOT area-proportional), each region labelled with
    its count of entries in exactly those sets; set labels carry the set sizes. Returns the figure.

    Raises:
        ValueError: not 2 or 3 names.
    """
    m = len(names)
    if m not in (2, 3):
        raise ValueError(f"a Venn diagram here takes 2 or 3 sets, got {m}; use plot_upset for more")
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 5.5))
    fig = ax.figure
    sizes = _sizes(regions, names)
    if m == 2:
        centers = [(-0.55, 0.0), (0.55, 0.0)]
    else:
        centers = [(0.65 * math.cos(a), 0.65 * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    from matplotlib.patches import Circle

    for i, (c, name) in enumerate(zip(centers, names)):
        ax.add_patch(Circle(c, 1.0, alpha=0.3, color=_COLORS[i], linewidth=1.5))
        lx, ly = (c[0] * 2.35, c[1] * 2.35) if m == 3 else (c[0] * 1.6, 1.2)
        ax.text(lx, ly, f"{name}\n({sizes[name]:,})", ha="center", va="center", fontsize=10, color=_COLORS[i],
                fontweight="bold")
    for combo_idx in range(1, 2 ** m):
        members = [i for i in range(m) if combo_idx >> i & 1]
        count = regions.get(tuple(names[i] for i in members), 0)
        x = sum(centers[i][0] for i in members) / len(members)
        y = sum(centers[i][1] for i in members) / len(members)
        if len(members) == 1:
            scale = 1.9 if m == 3 else 1.55
            x, y = x * scale, y * scale
        elif len(members) == 2 and m == 3:
            x, y = x * 1.5, y * 1.5
        ax.text(x, y, f"{count:,}", ha="center", va="center", fontsize=11)
    ax.set_xlim(-2.3, 2.3)
    ax.set_ylim(-2.0 if m == 3 else -1.5, 2.3 if m == 3 else 1.8)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig


def plot_upset(regions: Mapping[tuple[str, ...], int], names: Sequence[str], *, max_bars: int = 30,
               title: str = "") -> Any:
    """An UpSet chart: one bar per non-empty combination of sets (entries in exactly those sets), the
    largest ``max_bars`` left to right; below, a dot matrix marks the sets of each combination; at the
    left, each set's size. Readable for any number of sets. Returns the figure."""
    plt = pyplot()
    combos = sorted(((c, n) for c, n in regions.items() if n > 0 and c), key=lambda cn: (-cn[1], len(cn[0]), cn[0]))
    shown = combos[:max_bars]
    m, b = len(names), max(1, len(shown))
    # layout in inches: [set sizes 1.3][names 1.1][bars/dots 0.38 per combination]; bars 2.4 high, dots 0.32/set
    left, label, right, top_h, dot_h, pad = 1.3, 1.1, max(2.0, 0.38 * b), 2.4, max(0.8, 0.32 * m), 0.5
    width, height = left + label + right + 2 * pad, top_h + dot_h + 2 * pad + 0.3
    fig = plt.figure(figsize=(width, height))

    def box(x: float, y: float, w: float, h: float) -> list[float]:
        return [x / width, y / height, w / width, h / height]

    dots = fig.add_axes(box(pad + left + label, pad, right, dot_h), label="matrix")
    bars = fig.add_axes(box(pad + left + label, pad + dot_h, right, top_h), sharex=dots, label="bars")
    sizes_ax = fig.add_axes(box(pad, pad, left, dot_h), sharey=dots, label="sizes")
    bars.bar(range(len(shown)), [n for _, n in shown], color="#333")
    for i, (_, n) in enumerate(shown):
        bars.text(i, n, f"{n:,}", ha="center", va="bottom", fontsize=7)
    bars.set_ylabel("entries in exactly\nthese top-k sets")
    bars.tick_params(axis="x", bottom=False, labelbottom=False)
    for s in ("top", "right"):
        bars.spines[s].set_visible(False)
    rows = {n: m - 1 - i for i, n in enumerate(names)}
    for i, (combo, _) in enumerate(shown):
        ys = [rows[n] for n in combo]
        dots.scatter([i] * m, list(rows.values()), color="#ddd", s=40, zorder=1)
        dots.scatter([i] * len(ys), ys, color="#333", s=40, zorder=2)
        if len(ys) > 1:
            dots.plot([i, i], [min(ys), max(ys)], color="#333", linewidth=1.5, zorder=1)
    dots.set_yticks(list(rows.values()), list(rows))
    dots.tick_params(axis="y", left=False, labelleft=False)
    dots.set_xticks([])
    dots.set_xlim(-0.6, len(shown) - 0.4)
    dots.set_ylim(-0.6, m - 0.4)
    for s in dots.spines.values():
        s.set_visible(False)
    sizes = _sizes(regions, names)
    sizes_ax.barh([rows[n] for n in names], [sizes[n] for n in names], color="#888")
    sizes_ax.invert_xaxis()
    sizes_ax.set_yticks([rows[n] for n in names], list(names))
    sizes_ax.yaxis.tick_right()
    sizes_ax.tick_params(axis="y", right=False, pad=8)
    sizes_ax.set_xlabel("set size")
    for s in ("top", "left"):
        sizes_ax.spines[s].set_visible(False)
    if len(combos) > len(shown):
        bars.set_title(f"largest {len(shown)} of {len(combos)} combinations", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_overlap_sets(regions: Mapping[tuple[str, ...], int], names: Sequence[str], *, title: str = "") -> Any:
    """Venn diagram for 2-3 sets, UpSet chart for 4 or more (see the module docstring for why)."""
    if len(names) < 2:
        raise ValueError("an overlap plot needs at least 2 sets")
    if len(names) <= VENN_MAX:
        return plot_venn(regions, names, title=title)
    return plot_upset(regions, names, title=title)


def plot_group_bars(table: Any, *, ylabel: str = "share of top-k entries", title: str = "", ax: Any = None) -> Any:
    """Grouped bars of a ``group_table`` (rows = groups such as layers, columns = models): one colour
    per model, one cluster of bars per group. Returns the figure."""
    plt = pyplot()
    groups, models = [str(g) for g in table.index], [str(c) for c in table.columns]
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.18 * len(groups) * len(models) + 2.5)), 4.0))
    fig = ax.figure
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
        ax.bar(xs, table[table.columns[j]].to_numpy(float), width=width, label=model,
               color=_COLORS[j % len(_COLORS)])
    ax.set_xticks(range(len(groups)), groups, rotation=45 if max(map(len, groups), default=0) > 3 else 0,
                  ha="right" if max(map(len, groups), default=0) > 3 else "center")
    ax.set_xlabel(str(table.index.name or "group"))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    if title:
        ax.set_title(title)
    return fig


def plot_group_heatmap(table: Any, *, label: str = "share of top-k entries", title: str = "", ax: Any = None) -> Any:
    """A ``group_table`` as a heatmap: rows = models, columns = groups, colour and number = share.
    Readable for many models, where grouped bars are not. Returns the figure."""
    plt = pyplot()
    groups, models = [str(g) for g in table.index], [str(c) for c in table.columns]
    values = table.to_numpy(float).T  # [models, groups]
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(18.0, 0.55 * len(groups) + 3.0), 0.4 * len(models) + 1.8))
    fig = ax.figure
    im = ax.imshow(values, cmap="Blues", vmin=0, aspect="auto")
    ax.set_xticks(range(len(groups)), groups, rotation=45 if max(map(len, groups), default=0) > 3 else 0,
                  ha="right" if max(map(len, groups), default=0) > 3 else "center")
    ax.set_yticks(range(len(models)), models)
    top = float(values.max()) if values.size else 1.0
    for i in range(len(models)):
        for j in range(len(groups)):
            v = values[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 * top else "black")
    ax.set_xlabel(str(table.index.name or "group"))
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label=label)
    if title:
        ax.set_title(title)
    return fig


def plot_groups(table: Any, *, title: str = "") -> Any:
    """Grouped bars for up to :data:`GROUP_BARS_MAX` models, a models × groups heatmap for more."""
    if len(table.columns) <= GROUP_BARS_MAX:
        return plot_group_bars(table, title=title)
    return plot_group_heatmap(table, title=title)
