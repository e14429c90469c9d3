"""A self-contained, searchable HTML page of a decomposition's components (``components.json``).

One table row per component: module, index, firing frequency, mean importance, selectivity per
text set, the automatic label, the output-token lens and the top contexts (marked token
highlighted). A search box filters rows by token or label text (the same text and matching as
:meth:`ComponentLabels.select`: case-insensitive substring, spaces kept so ``' der'`` finds the token),
a select box and the column headers sort.
Everything is inline (CSS, one small script allowed by its hash in a Content-Security-Policy, no
external URL); all corpus text, token and set names are HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import write_text_atomic
from ..decompose.labels_io import ComponentLabels, search_text, show_token
from .html import CSS

logger = logging.getLogger(__name__)

__all__ = ["components_page_html", "write_components_page"]

PAGE_CSS = """
body{max-width:none}
.gx-controls{position:sticky;top:0;background:#fff;padding:0.5em 0;z-index:5;display:flex;gap:1em;align-items:center}
#gx-search{font-size:15px;padding:4px 8px;width:28em}
table.gx-comps td,table.gx-comps th{vertical-align:top;text-align:left}
table.gx-mods td:last-child,table.gx-mods th:last-child{text-align:left}
table.gx-comps td.gx-n{text-align:right;white-space:nowrap}
table.gx-comps th[data-key]{cursor:pointer;user-select:none}
table.gx-comps th[data-key]:hover{background:#e8eef8}
.gx-ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;margin:1px 0}
.gx-ctx mark{background:#ffd54f;font-weight:600;border-radius:2px}
.gx-set{color:#fff;background:#5a6c8a;border-radius:3px;padding:0 4px;margin-right:4px;font-size:11px}
.gx-num{color:#777;font-size:11px;margin-left:6px}
.gx-tokl{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap}
.gx-label{font-weight:600}
.gx-dead{color:#999}
.gx-note{color:#555;font-size:13px}
"""

SCRIPT = """(function(){
var q=document.getElementById('gx-search'),body=document.getElementById('gx-body'),
count=document.getElementById('gx-count'),sel=document.getElementById('gx-sort');
var rows=Array.prototype.slice.call(body.rows),dir={};
function filter(){var s=q.value.toLowerCase(),all=!s.trim(),n=0;
rows.forEach(function(r){var ok=all||r.getAttribute('data-search').indexOf(s)>=0;r.hidden=!ok;if(ok)n++;});
count.textContent=n+' of '+rows.length+' components shown';}
function sortBy(key,asc){rows.sort(function(a,b){var x=a.getAttribute('data-'+key),y=b.getAttribute('data-'+key),
fx=parseFloat(x),fy=parseFloat(y),c=(isNaN(fx)||isNaN(fy))?x.localeCompare(y):(fx<fy?-1:(fx>fy?1:0));
return asc?c:-c;});rows.forEach(function(r){body.appendChild(r);});}
q.addEventListener('input',filter);
sel.addEventListener('change',function(){sortBy(sel.value,false);});
Array.prototype.forEach.call(document.querySelectorAll('th[data-key]'),function(th){
th.addEventListener('click',function(){var k=th.getAttribute('data-key');dir[k]=!dir[k];sortBy(k,!dir[k]);});});
filter();})();"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}"


def _ratio_value(sel: Mapping[str, Any]) -> float:
    if sel["ratio"] is None:
        return math.inf if sel["mean_importance"] > 0 else 0.0
    return float(sel["ratio"])


def _context_html(ctx: Mapping[str, Any]) -> str:
    return (f'<div class="gx-ctx"><span class="gx-set">{_e(ctx["set"])}</span>{_e("".join(ctx["left"]))}'
            f'<mark>{_e(ctx["token"])}</mark>{_e("".join(ctx["right"]))}'
            f'<span class="gx-num">g {ctx["importance"]:.3f} · Vx {ctx["activation"]:+.3g}</span></div>')


def _lens_html(lens: Mapping[str, Any] | None, n: int) -> str:
    if not lens:
        return '<span class="gx-note">no lens</span>'
    approx = " (≈ linear, via the MLP output layer)" if lens["kind"] == "via_down" else ""
    plus = " ".join(show_token(t) for t, _ in lens["promotes"][:n])
    minus = " ".join(show_token(t) for t, _ in lens["suppresses"][:n])
    return (f'<div class="gx-tokl" title="sign of U_c where it fires: {lens["sign"]:+d}{_e(approx)}">'
            f'+ {_e(plus)}</div><div class="gx-tokl">− {_e(minus)}</div>')


def _row_html(rec: Mapping[str, Any], sets: Sequence[str], n_contexts: int, n_lens: int) -> str:
    sel_cells, sel_attrs = [], []
    for i, s in enumerate(sets):
        sel = rec["selectivity"][s]
        r = _ratio_value(sel)
        shown = "only" if math.isinf(r) else f"{r:.2f}×"
        sel_cells.append(f'<td class="gx-n" title="mean importance {sel["mean_importance"]:.4g} on {_e(s)}, '
                         f'{_e(_num(sel["difference"]))} above the other sets">{shown}</td>')
        sel_attrs.append(f' data-sel{i}="{"Infinity" if math.isinf(r) else r}"')
    ctxs = rec["contexts"]
    ctx_html = "".join(_context_html(c) for c in ctxs[:n_contexts])
    if len(ctxs) > n_contexts:
        ctx_html += (f"<details><summary>{len(ctxs) - n_contexts} more</summary>"
                     + "".join(_context_html(c) for c in ctxs[n_contexts:]) + "</details>")
    label_cls = "gx-label" if rec["alive"] else "gx-label gx-dead"
    return (f'<tr class="gx-row" data-search="{_e(search_text(rec))}" data-module="{_e(rec["module"])}" '
            f'data-index="{rec["index"]}" data-freq="{rec["firing_frequency"]}" '
            f'data-importance="{rec["mean_importance"]}"{"".join(sel_attrs)}>'
            f'<td>{_e(rec["module"])}</td><td class="gx-n">{rec["index"]}</td>'
            f'<td class="gx-n">{rec["firing_frequency"]:.3f}</td><td class="gx-n">{rec["mean_importance"]:.3f}</td>'
            f'{"".join(sel_cells)}<td class="{label_cls}">{_e(rec["label"])}</td>'
            f'<td>{_lens_html(rec["lens"], n_lens)}</td><td>{ctx_html}</td></tr>')


def _summary_html(labels: ComponentLabels) -> str:
    d = labels.data
    sets = ", ".join(f"{_e(s)} ({v['texts']} texts, {v['tokens']} tokens)" for s, v in d["texts"]["sets"].items())
    mods = "".join(f'<tr><td>{_e(n)}</td><td>{m["C"]}</td><td>{m["alive"]}</td><td>{m["mean_l0"]:.2f}</td>'
                   f'<td>{_e(d["lens"]["modules"][n]["note"])}</td></tr>' for n, m in d["modules"].items())
    norm = d["lens"]["final_norm"]
    thr = d["settings"]["threshold"]
    return (f'<p>Model <b>{_e(d["model"])}</b>; text sets: {sets}. Source: {_e(d["texts"]["source"])}. '
            f'Special tokens are left out.</p>'
            f'<table class="gx-table gx-mods"><thead><tr><th>module</th><th>C</th><th>alive</th><th>mean L0</th>'
            f'<th>output-token lens</th></tr></thead><tbody>{mods}</tbody></table>'
            f'<p class="gx-note"><b>freq</b>: share of tokens where the component fires (importance g &gt; {thr:g}); '
            f'<b>importance</b>: mean g over all tokens; <b>SET ×</b>: mean g on that set divided by mean g on the '
            f'other sets (hover for the difference; "only": never important elsewhere); <b>label</b>: preferred set, '
            f'tokens it reads (top contexts), tokens it writes; <b>writes</b>: output-token lens, tokens its write '
            f'vector promotes (+) and suppresses (−) through the unembedding, on the side it writes where it fires '
            f'(final norm: {_e(norm["gain"])}); <b>top contexts</b>: tokens with the largest g (marked), '
            f'with g and the inner activation V·x. Click a column header to sort.</p>')


def components_page_html(labels: ComponentLabels, *, title: str | None = None, module: str | None = None,
                         search: str | None = None, sort: str = "freq", alive_only: bool = True,
                         n_contexts: int = 3, n_lens: int = 5) -> str:
    """The complete page as a string. Rows: components of ``module`` (pattern or substring; all when
    None), dead ones only when not ``alive_only``, ordered by ``sort`` (see
    :meth:`ComponentLabels.select`); ``search`` pre-fills the search box (applied on load)."""
    sets = labels.sets
    recs = labels.select(module=module, sort=sort, alive_only=alive_only)
    title = title or f"Components of {labels.data['model']}"
    sort_opts = [("freq", "firing frequency"), ("importance", "mean importance")]
    sort_opts += [(f"sel{i}", f"selectivity: {s}") for i, s in enumerate(sets)]
    chosen = "importance" if sort == "importance" else (f"sel{sets.index(sort.split(':', 1)[1])}"
                                                        if sort.startswith("selectivity:") else "freq")
    options = "".join(f'<option value="{k}"{" selected" if k == chosen else ""}>{_e(v)}</option>' for k, v in sort_opts)
    head = ('<tr><th data-key="module">module</th><th data-key="index">c</th><th data-key="freq">freq</th>'
            '<th data-key="importance">importance</th>'
            + "".join(f'<th data-key="sel{i}">{_e(s)} ×</th>' for i, s in enumerate(sets))
            + "<th>label</th><th>writes (lens)</th><th>top contexts</th></tr>")
    body = "\n".join(_row_html(r, sets, n_contexts, n_lens) for r in recs)
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f"<title>{_e(title)}</title><style>{CSS}{PAGE_CSS}</style></head>\n<body>\n"
            f"<h1>{_e(title)}</h1>{_summary_html(labels)}"
            f'<div class="gx-controls"><input id="gx-search" type="search" value="{_e(search or "")}" '
            f'placeholder="search a token or label text" aria-label="search"><label>sort '
            f'<select id="gx-sort">{options}</select></label><span id="gx-count">{len(recs)} components</span></div>'
            f'<table class="gx-table gx-comps"><thead>{head}</thead><tbody id="gx-body">\n{body}\n</tbody></table>'
            f"<script>{SCRIPT}</script>\n</body></html>\n")


def write_components_page(path: str | Path, labels: ComponentLabels, **options: Any) -> Path:
    """Write :func:`components_page_html` to ``path`` (atomic); returns the path."""
    path = Path(path)
    write_text_atomic(path, components_page_html(labels, **options))
    logger.info("components page written to %s", path)
    return path
