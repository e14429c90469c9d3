"""The comparison report: one self-contained HTML page (figures inlined as ``data:`` URIs, no scripts,
no network) plus each figure as a PNG beside it.

Input is plain data (``Comparison.report_data()`` of ``gradedit.gradiend.compare``): names, the
summary table, the matrices as DataFrames, the top-k exclusive regions, the layer/module tables and,
optionally, the cross-encoding tables.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .compare import VENN_MAX, plot_groups, plot_overlap_sets
from .compare_heatmap import plot_clustered_heatmap
from .html import write_html_report
from .plots import pyplot

logger = logging.getLogger(__name__)

__all__ = ["FIGURES", "compare_figures", "write_compare_report"]

FIGURES = ("overlap_sets", "heatmap_overlap", "heatmap_cosine", "heatmap_spearman", "layers", "modules", "cross")
"""File stems of the figures the report writes (``cross`` only with cross-encoding)."""

MATRIX_TEXT = {
    "overlap_counts": "|A ∩ B|: entries in both top-k sets (diagonal: the set size).",
    "overlap_min": "|A ∩ B| / min(|A|, |B|): 1 when the smaller top-k set lies inside the larger.",
    "jaccard": "|A ∩ B| / |A ∪ B|.",
    "mass_overlap": "Row model's share of its top-k importance mass on entries also in the column model's "
                    "top-k set (directed: not symmetric).",
    "cosine": "Cosine of the signed part values on the union of the models' supports (0 outside a support).",
    "cosine_abs": "Cosine of the absolute part values: do the models put magnitude on the same entries, "
                  "whatever the signs?",
    "spearman": "Spearman rank correlation of the signed part values on the union of supports.",
}


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def compare_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The report's matplotlib figures by stem (see :data:`FIGURES`)."""
    names, r = data["names"], data["encoder_r"]
    mats = data["matrices"]
    kind = "Venn diagram" if len(names) <= VENN_MAX else "UpSet chart"
    figs: dict[str, Any] = {
        "overlap_sets": plot_overlap_sets(data["regions"], names, title=f"top-k entries ({data['part']}): {kind}"),
        "heatmap_overlap": plot_clustered_heatmap(mats["overlap_min"].to_numpy(), names, side=r, vmin=0, vmax=1,
                                                  title="top-k overlap |A∩B| / min(|A|,|B|)"),
        "heatmap_cosine": plot_clustered_heatmap(mats["cosine"].to_numpy(), names, side=r, vmin=-1, vmax=1,
                                                 cmap="RdBu_r", title=f"cosine of {data['part']} values"),
        "heatmap_spearman": plot_clustered_heatmap(mats["spearman"].to_numpy(), names, side=r, vmin=-1, vmax=1,
                                                   cmap="RdBu_r", title=f"Spearman of {data['part']} values"),
        "layers": plot_groups(data["layers"], title="where the top-k entries sit, by layer"),
        "modules": plot_groups(data["modules"], title="where the top-k entries sit, by module type"),
    }
    cross = data.get("cross")
    if cross is not None:
        corr = cross["correlation"]
        figs["cross"] = plot_clustered_heatmap(corr.to_numpy(), names, side=r, vmin=-1, vmax=1, cmap="RdBu_r",
                                               cluster=False, title="cross-encoding r (rows: encoder, columns: data)")
    return figs


def write_compare_report(out: str | Path, data: dict[str, Any], *, title: str = "Feature-model comparison") -> Path:
    """Write the figures as ``<stem>.png`` and ``report.html`` into ``out``; returns the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    figs = compare_figures(data)
    paths = {}
    try:
        for stem, fig in figs.items():
            paths[stem] = out / f"{stem}.png"
            fig.savefig(paths[stem], dpi=110, bbox_inches="tight", metadata={"Software": None})
    finally:
        for fig in figs.values():
            plt.close(fig)
    m, k = len(data["names"]), data["k"]
    k_text = f"the top {k:,} entries" if isinstance(k, (int, np.integer)) else f"the top {k:.2%} of each model's entries"
    sets = ("a Venn diagram (equal circles, not area-proportional)" if m <= VENN_MAX else
            "an UpSet chart (a Venn diagram of more than 3 sets is unreadable): one bar per combination of models")
    mats = data["matrices"]
    sections: list[tuple[str, Any]] = [
        ("Models", _p(f"{m} feature models compared on {k_text} by {data['part']} importance, in base-model "
                      "coordinates (parameter name and flat index), so differently pruned models compare. "
                      "Encoder r: the held-out test r when evaluated, else the validation r of training.")),
        ("", data["summary"]),
        ("Shared top-k entries", _p(f"Entries in exactly each combination of top-k sets, as {sets}.")),
        ("", paths["overlap_sets"]),
        ("", _p(MATRIX_TEXT["overlap_min"] + " Rows and columns clustered (average linkage on 1 − value); the "
                "side bar is each model's encoder r.")),
        ("", paths["heatmap_overlap"]),
        ("", _p(MATRIX_TEXT["overlap_counts"])), ("", mats["overlap_counts"].reset_index()),
        ("", _p(MATRIX_TEXT["mass_overlap"])), ("", mats["mass_overlap"].reset_index()),
        ("", _p(MATRIX_TEXT["jaccard"])), ("", mats["jaccard"].reset_index()),
        ("Similarity of the directions", _p(MATRIX_TEXT["cosine"])), ("", paths["heatmap_cosine"]),
        ("", _p(MATRIX_TEXT["cosine_abs"])), ("", mats["cosine_abs"].reset_index()),
        ("", _p(MATRIX_TEXT["spearman"])), ("", paths["heatmap_spearman"]),
        ("Layers and modules", _p("Share of each model's top-k entries per layer ('other': outside the blocks) "
                                  "and per module type.")),
        ("", paths["layers"]), ("", data["layers"].reset_index()),
        ("", _p("The same per layer, weighted by importance:")), ("", data["layers_mass"].reset_index()),
        ("", paths["modules"]), ("", data["modules"].reset_index()),
    ]
    cross = data.get("cross")
    if cross is not None:
        rows = ", ".join(f"{n} {c}" for n, c in cross["rows"].items())
        sections += [
            ("Cross-encoding", _p(f"Encoder of the row model applied to the column model's {cross['split']} rows "
                                  f"(rows encoded: {rows}); Pearson r with the column model's labels (+1: its "
                                  "first class). The diagonal is each model's own encoder r.")),
            ("", paths["cross"]), ("", cross["correlation"].reset_index()),
            ("", _p("Mean encoding per factual class (rows: encoder): which side of each feature every class falls on.")),
            ("", cross["class_means"].reset_index()),
        ]
    else:
        sections.append(("Cross-encoding", _p("Not computed (no base model given).")))
    sections += [("Top entries", _p("The 10 most important entries of each model (all top-k entries: topk.csv, "
                                    "topk.json). row/col index the parameter as stored.")),
                 ("", data["topk_head"])]
    return write_html_report(out / "report.html", title, sections)
