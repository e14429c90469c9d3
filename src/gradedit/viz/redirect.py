"""Plots and heatmaps of a redirect study: P(target) at fire positions against the damage elsewhere.

``plot_redirect_pareto`` draws two panels — P(target) vs KL on the surrounding positions, and vs KL
on unrelated text — one colour per method family, each family's Pareto front as a line (high
P(target), low KL). ``fire_heatmap_html`` colours one text's tokens by a per-token value and marks the
fire positions (underlined, and named in the tooltip).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .html import render_tokens
from .plots import pyplot

__all__ = ["FIRE_STYLE", "fire_heatmap_html", "plot_redirect_pareto", "redirect_front"]

#: inline style added to the span of a fire token
FIRE_STYLE = "border-bottom:3px solid #000;font-weight:700"
PANELS = (("surrounding_kl", "mean KL(base ‖ edit) at surrounding positions (nats)"),
          ("global_kl", "mean KL(base ‖ edit) on unrelated text (nats)"))
FLOOR = 1e-7


def redirect_front(rows: Sequence[Mapping[str, Any]], x: str, y: str = "p_target") -> list[Mapping[str, Any]]:
    """Rows not dominated by another (higher ``y`` and lower ``x`` are better), sorted by ``x``;
    rows with a missing or non-finite value are left out."""
    ok = [r for r in rows if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in (x, y))]
    front = [r for r in ok if not any(o[x] <= r[x] and o[y] >= r[y] and (o[x] < r[x] or o[y] > r[y]) for o in ok)]
    return sorted(front, key=lambda r: (r[x], r[y]))


def plot_redirect_pareto(rows: Sequence[Mapping[str, Any]], *, base_p: float | None = None, target: str = "target",
                         axes: Any = None, y: str = "p_target") -> Any:
    """Two panels (see the module docstring); ``rows`` need ``family``, ``y``, ``surrounding_kl`` and
    ``global_kl``. KL and P are drawn on log axes (values below 1e-7 at 1e-7). Returns the figure.

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("no points to plot")
    plt = pyplot()
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    fig = axes[0].figure
    families = list(dict.fromkeys(str(r["family"]) for r in rows))
    markers = "osD^vP*X"
    for ax, (x, label) in zip(axes, PANELS):
        for i, fam in enumerate(families):
            pts = [r for r in rows if r["family"] == fam]
            xs = [max(float(r[x]), FLOOR) for r in pts]
            ys = [max(float(r[y]), FLOOR) for r in pts]
            sc = ax.scatter(xs, ys, s=28, marker=markers[i % len(markers)], alpha=0.75, label=fam)
            front = redirect_front(pts, x, y)
            if len(front) > 1:
                ax.plot([max(float(r[x]), FLOOR) for r in front], [max(float(r[y]), FLOOR) for r in front],
                        color=sc.get_facecolor()[0], linewidth=1.2, alpha=0.9)
        if base_p is not None and base_p > 0:
            ax.axhline(base_p, color="grey", linestyle=":", linewidth=1, label="base model")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"P({target!r}) at held-out fire positions")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_title("on-target vs surrounding damage (lines: each family's Pareto front)", fontsize=10)
    axes[1].set_title("on-target vs global damage", fontsize=10)
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def fire_heatmap_html(record: Mapping[str, Any], value: str = "kl", *, title: str | None = None,
                      vmax: float | None = None, target: str = "target") -> str:
    """One text of ``record`` (tokens, fire flags, per-token ``kl`` / ``dlogp_target`` / ``p_target_*``,
    as :func:`gradedit.demo.redirect_eval.token_records` writes) as a heatmap of ``value``; fire tokens
    are underlined and bold, and every tooltip names the values of the prediction made after the token.

    Raises:
        ValueError: unknown ``value`` or lists of different lengths.
    """
    if value not in ("kl", "dlogp_target"):
        raise ValueError(f"value must be 'kl' or 'dlogp_target', got {value!r}")
    toks, fire = list(record["tokens"]), list(record["fire"])
    if len(fire) != len(toks) or len(record[value]) != len(toks):
        raise ValueError("tokens, fire flags and values must have the same length")
    tips = []
    for p, tok in enumerate(toks):
        if record["kl"][p] is None:
            tips.append(f"token {tok!r} (position {p}): last token, predicts nothing")
            continue
        tips.append("\n".join([
            f"token {tok!r} (position {p})" + (" — FIRE position" if fire[p] else ""),
            f"prediction after it: KL(base ‖ edit) {record['kl'][p]:.4g} nats",
            f"P({target!r}) {record['p_target_before'][p]:.4g} -> {record['p_target_after'][p]:.4g} "
            f"(Δ log P {record['dlogp_target'][p]:+.4g})"]))
    label = "KL (nats)" if value == "kl" else f"Δ log P({target!r})"
    frag = render_tokens(toks, list(record[value]), tips, title, label=label, vmax=vmax)
    for p in (i for i, f in enumerate(fire) if f):
        frag = _mark(frag, p)
    note = "<div class=\"gx-hint\">underlined bold: fire positions; each token is coloured by the change of the " \
           "prediction made after it</div>"
    return frag.replace('<div class="gx-legend">', note + '<div class="gx-legend">', 1) if fire else frag


def _mark(fragment: str, p: int) -> str:
    """Add :data:`FIRE_STYLE` to the span of token ``p`` (``data-i="p"``) of a ``render_tokens`` fragment."""
    pat = re.compile(rf'(<span class="gx-tok" tabindex="0" data-i="{p}")( style="([^"]*)")?>')

    def sub(m: re.Match[str]) -> str:
        old = m.group(3)
        style = f"{old};{FIRE_STYLE}" if old else FIRE_STYLE
        return f'{m.group(1)} data-fire="1" style="{html.escape(style, quote=True)}">'

    out, n = pat.subn(sub, fragment, count=1)
    if n != 1:
        raise ValueError(f"token {p} not found in the heatmap fragment")
    return out
