"""The comparison plots: clustering order (UPGMA by hand), Venn and UpSet contents, the HTML page."""

from __future__ import annotations

import numpy as np
import pytest

from gradedit.viz.compare import plot_group_bars, plot_overlap_sets, plot_upset, plot_venn
from gradedit.viz.compare_heatmap import average_linkage, leaf_order, plot_clustered_heatmap
from gradedit.viz.plots import pyplot


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    pyplot().close("all")


def test_average_linkage_by_hand() -> None:
    # 0-2 closest (0.1), then 1-3 (0.2); then UPGMA: d({0,2},{1,3}) = mean(.8, .6, .7, .9) = 0.75
    d = np.array([[0, .8, .1, .7],
                  [.8, 0, .6, .2],
                  [.1, .6, 0, .9],
                  [.7, .2, .9, 0]])
    merges = average_linkage(d)
    assert [(a, b) for a, b, _, _ in merges] == [(0, 2), (1, 3), (4, 5)]
    np.testing.assert_allclose([h for _, _, h, _ in merges], [0.1, 0.2, 0.75])
    assert [s for *_, s in merges] == [2, 2, 4]
    assert leaf_order(merges, 4) == [0, 2, 1, 3]


def test_average_linkage_weights_by_cluster_size() -> None:
    # {0,1} merge first (0.1); then 2 joins at mean(d02, d12) = mean(.3, .5) = .4 < d(2,3) = .45? no: 3 is
    # .9 from 0 and 1; so merge ({0,1}, 2) at .4, then 3 at mean(.9, .9, .45) = .75 (size-weighted mean)
    d = np.array([[0, .1, .3, .9], [.1, 0, .5, .9], [.3, .5, 0, .45], [.9, .9, .45, 0]])
    merges = average_linkage(d)
    np.testing.assert_allclose([h for _, _, h, _ in merges], [0.1, 0.4, 0.75])
    assert merges[-1][:2] == (3, 5) and merges[-1][3] == 4


def test_venn_labels_every_region() -> None:
    regions = {("A",): 1, ("C",): 2, ("A", "B"): 3, ("B", "C"): 1}
    fig = plot_venn(regions, ["A", "B", "C"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    # 7 regions (empty ones show 0) + 3 set labels with their sizes |A| = 4, |B| = 4, |C| = 3
    assert sorted(t for t in texts if "\n" not in t) == sorted(["1", "0", "2", "3", "0", "1", "0"])
    assert {"A\n(4)", "B\n(4)", "C\n(3)"} <= set(texts)
    with pytest.raises(ValueError, match="2 or 3"):
        plot_venn(regions, ["A", "B", "C", "D"])


def test_more_than_three_sets_become_an_upset_chart() -> None:
    names = ["a", "b", "c", "d", "e"]
    regions = {("a",): 5, ("a", "b"): 7, ("c", "d", "e"): 2, ("b", "e"): 1}
    fig = plot_overlap_sets(regions, names)
    axes = {a.get_label(): a for a in fig.axes}
    heights = [p.get_height() for p in axes["bars"].patches]
    assert heights == [7, 5, 2, 1]  # one bar per combination, largest first
    sizes = [p.get_width() for p in axes["sizes"].patches]
    assert sizes == [12, 8, 2, 2, 3]  # |a| = 5+7, |b| = 7+1, |c| = 2, |d| = 2, |e| = 2+1
    fig2 = plot_upset(regions, names, max_bars=2)
    assert len(next(a for a in fig2.axes if a.get_label() == "bars").patches) == 2


def test_clustered_heatmap_orders_rows_and_draws_side_bar() -> None:
    sim = np.array([[1, .2, .9], [.2, 1, .1], [.9, .1, 1]])
    fig = plot_clustered_heatmap(sim, ["x", "y", "z"], side=[0.5, None, -0.8])
    axes = {a.get_label(): a for a in fig.axes}
    heat = axes["heatmap"]
    # x and z merge first (cluster 3); the last merge is (y=1, 3): the smaller id is drawn on the left
    assert [t.get_text() for t in heat.get_yticklabels()] == ["y", "x", "z"]
    side = axes["side"]
    assert [round(p.get_width(), 3) for p in side.patches] == [0.0, 0.5, -0.8]
    assert "n/a" in [t.get_text() for t in side.texts]


def test_group_bars_one_bar_per_model_and_group() -> None:
    import pandas as pd

    table = pd.DataFrame({"A": [0.75, 0.25, 0.0], "B": [0.5, 0.25, 0.25]}, index=pd.Index(["0", "1", "other"],
                                                                                         name="layer"))
    fig = plot_group_bars(table)
    assert [round(p.get_height(), 2) for p in fig.axes[0].patches] == [0.75, 0.25, 0.0, 0.5, 0.25, 0.25]


def test_many_models_get_a_group_heatmap() -> None:
    import pandas as pd

    from gradedit.viz.compare import GROUP_BARS_MAX, plot_groups

    models = [f"m{i}" for i in range(GROUP_BARS_MAX + 1)]
    table = pd.DataFrame({m: [0.5 + 0.01 * i, 0.5 - 0.01 * i] for i, m in enumerate(models)},
                         index=pd.Index(["0", "1"], name="layer"))
    fig = plot_groups(table)
    heat = fig.axes[0]
    assert heat.images and heat.images[0].get_array().shape == (len(models), 2)  # rows = models
    assert [t.get_text() for t in heat.get_yticklabels()] == models
    fig_bars = plot_groups(table[models[:2]])
    assert len(fig_bars.axes[0].patches) == 4 and not fig_bars.axes[0].images
