"""A clustered heatmap of a model-by-model similarity matrix, with a dendrogram on top and a side bar
of one number per model (e.g. each feature model's encoder r).

The clustering is average linkage (UPGMA) on the distance ``1 - similarity``, done here in numpy
(a few dozen models at most, so the O(m³) loop is instant and no scipy is needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .plots import pyplot

__all__ = ["average_linkage", "leaf_order", "plot_clustered_heatmap"]


def average_linkage(dist: np.ndarray) -> list[tuple[int, int, float, int]]:
    """UPGMA merges of a symmetric distance matrix ``[m, m]``, like scipy's linkage matrix: one
    ``(cluster_a, cluster_b, distance, size)`` per merge, clusters ``0..m-1`` being the leaves and
    ``m + t`` the cluster made by merge ``t``. Ties merge the pair with the smallest ids first;
    non-finite distances count as the largest finite one plus 1."""
    d = np.array(dist, dtype=np.float64)
    m = d.shape[0]
    if d.shape != (m, m):
        raise ValueError(f"dist must be square, got {d.shape}")
    finite = d[np.isfinite(d)]
    d[~np.isfinite(d)] = (finite.max() if finite.size else 0.0) + 1.0
    active = {i: (i, 1) for i in range(m)}  # position in d -> (cluster id, size)
    merges: list[tuple[int, int, float, int]] = []
    full = np.full((2 * m, 2 * m), np.inf)
    full[:m, :m] = d
    for t in range(m - 1):
        keys = sorted(active)
        best: tuple[float, int, int] | None = None
        for x in range(len(keys)):
            for y in range(x + 1, len(keys)):
                a, b = keys[x], keys[y]
                cand = (full[a, b], min(active[a][0], active[b][0]), max(active[a][0], active[b][0]))
                if best is None or cand < best:
                    best, pair = cand, (a, b)
        assert best is not None
        a, b = pair
        (ida, na), (idb, nb) = active.pop(a), active.pop(b)
        new = m + t
        for c in active:
            full[new, c] = full[c, new] = (na * full[a, c] + nb * full[b, c]) / (na + nb)
        active[new] = (new, na + nb)
        merges.append((min(ida, idb), max(ida, idb), float(best[0]), na + nb))
    return merges


def leaf_order(merges: Sequence[tuple[int, int, float, int]], m: int) -> list[int]:
    """The left-to-right leaf order of a dendrogram built from :func:`average_linkage`'s merges."""
    if m == 1:
        return [0]
    children = {m + t: (a, b) for t, (a, b, _, _) in enumerate(merges)}

    def walk(c: int) -> list[int]:
        return [c] if c < m else walk(children[c][0]) + walk(children[c][1])

    return walk(m + len(merges) - 1)


def _dendrogram(ax: Any, merges: Sequence[tuple[int, int, float, int]], order: list[int]) -> None:
    m = len(order)
    x = {leaf: float(i) for i, leaf in enumerate(order)}
    y = dict.fromkeys(range(m), 0.0)
    for t, (a, b, h, _) in enumerate(merges):
        for c in (a, b):
            ax.plot([x[c], x[c]], [y[c], h], color="#555", linewidth=1)
        ax.plot([x[a], x[b]], [h, h], color="#555", linewidth=1)
        x[m + t], y[m + t] = (x[a] + x[b]) / 2, h
    ax.set_xlim(-0.5, m - 0.5)
    ax.set_ylim(0, max([h for _, _, h, _ in merges], default=1.0) * 1.05 or 1.0)
    ax.axis("off")


def plot_clustered_heatmap(matrix: np.ndarray, names: Sequence[str], *, side: Sequence[float | None] | None = None,
                           side_label: str = "encoder r", title: str = "", vmin: float | None = None,
                           vmax: float | None = None, cmap: str = "viridis", cluster: bool = True,
                           fmt: str = "{:.2f}") -> Any:
    """Heatmap of ``matrix [m, m]`` with rows and columns in dendrogram order (average linkage on
    ``1 - matrix``; ``cluster=False`` keeps the given order) and each cell's value written in it.

    ``side``: one value per model drawn as horizontal bars right of the rows (``None`` = unknown, drawn
    as "n/a"). Returns the figure.
    """
    plt = pyplot()
    mat = np.asarray(matrix, dtype=np.float64)
    m = len(names)
    if mat.shape != (m, m):
        raise ValueError(f"matrix is {mat.shape} but there are {m} names")
    merges = average_linkage(1.0 - np.nan_to_num(mat, nan=0.0)) if cluster and m > 1 else []
    order = leaf_order(merges, m) if merges else list(range(m))
    sub = mat[np.ix_(order, order)]
    size = max(4.0, 0.55 * m + 2.5)
    widths = [size] + ([1.6] if side is not None else []) + [0.22]
    fig = plt.figure(figsize=(sum(widths) + 0.6, size + 0.8))
    grid = fig.add_gridspec(2, len(widths), height_ratios=[1, 4], width_ratios=widths, hspace=0.02, wspace=0.08)
    ax = fig.add_subplot(grid[1, 0], label="heatmap")
    im = ax.imshow(sub, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    labels = [names[i] for i in order]
    ax.set_xticks(range(m), labels, rotation=60, ha="right")
    ax.set_yticks(range(m), labels)
    for i in range(m):
        for j in range(m):
            v = sub[i, j]
            if np.isfinite(v):
                r, g, b, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    if merges:
        _dendrogram(fig.add_subplot(grid[0, 0], label="dendrogram"), merges, order)
    if side is not None:
        sax = fig.add_subplot(grid[1, 1], sharey=ax, label="side")
        vals = [None if side[i] is None or not np.isfinite(float(side[i])) else float(side[i])  # type: ignore[arg-type]
                for i in order]
        finite = [v for v in vals if v is not None]
        sax.barh(range(m), [v if v is not None else 0.0 for v in vals], color="#a9c1e3")
        for i, v in enumerate(vals):
            neg = v is not None and v < 0
            sax.text(-0.02 if neg else 0.02, i, "n/a" if v is None else f"{v:+.2f}", va="center",
                     ha="right" if neg else "left", fontsize=8)
        bound = max([1.0] + [abs(v) for v in finite])
        sax.set_xlim(-bound if any(v < 0 for v in finite) else 0, bound)
        sax.set_xlabel(side_label)
        sax.tick_params(axis="y", left=False, labelleft=False)
    fig.colorbar(im, cax=fig.add_subplot(grid[1, -1], label="colorbar"))
    if title:
        fig.suptitle(title)
    return fig
