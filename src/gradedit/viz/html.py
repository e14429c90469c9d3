"""Self-contained HTML: token heatmaps with hover tooltips and single-file run reports.

Everything is inline (CSS in a ``<style>`` block, images as base64 ``data:`` URIs, no scripts, no
fonts, no external URLs), so a report opens offline and can be mailed as one file. Tooltips are
pure CSS (``:hover`` / ``:focus``). All text is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import write_text_atomic

if TYPE_CHECKING:
    from ..blast import BlastReport

logger = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
  color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table.gx-table{border-collapse:collapse;font-size:13px}
table.gx-table td,table.gx-table th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
img.gx-img{max-width:100%}
.gx-heat{margin:0.5em 0 1em}.gx-title{font-weight:600;margin-bottom:0.3em}
.gx-tokens{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:2.1;overflow-wrap:anywhere}
.gx-tok{position:relative;white-space:pre-wrap;padding:2px 0;border-radius:2px;cursor:default;outline:none}
.gx-tok .gx-tip{display:none;position:absolute;left:0;top:1.9em;z-index:10;background:#222;color:#fff;
  font-size:12px;line-height:1.35;padding:6px 8px;border-radius:4px;white-space:pre;
  box-shadow:0 2px 6px rgba(0,0,0,.3)}
.gx-tok:hover .gx-tip,.gx-tok:focus .gx-tip{display:block}
.gx-tok:hover,.gx-tok:focus{outline:1px solid #333}
.gx-legend{display:flex;align-items:center;gap:6px;font-size:12px;margin-top:0.3em}
.gx-bar{width:180px;height:10px;border:1px solid #ccc}
.gx-hint{color:#666;margin-left:1em;font-style:italic}
.gx-conclusion{background:#f4f8ff;border:1px solid #c9d8f0;border-radius:6px;padding:0.6em 1em}
.gx-conclusion p{margin:0.4em 0}
.gx-ok{color:#17702a;font-weight:600}.gx-no{color:#a11;font-weight:600}
table.gx-table th{background:#f6f6f6}
table.gx-table td:first-child,table.gx-table th:first-child{text-align:left}
table.gx-conclusion-table{margin-top:0.8em}
table.gx-conclusion-table td,table.gx-conclusion-table th{text-align:left;vertical-align:top}
"""

_WHITE = (255, 255, 255)
_RED = (235, 80, 70)
_BLUE = (70, 130, 220)


def _mix(c: tuple[int, int, int], t: float) -> str:
    """Colour ``t`` of the way from white to ``c`` (t in [0, 1]), as ``rgb(...)``."""
    t = min(max(t, 0.0), 1.0)
    r, g, b = (round(w + (x - w) * t) for w, x in zip(_WHITE, c))
    return f"rgb({r},{g},{b})"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _scale(values: Sequence[float | None], vmax: float | None = None) -> tuple[bool, float]:
    """(signed?, magnitude of the colour scale's end) from the finite values (``vmax`` fixes the end)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    signed = any(v < 0 for v in finite)
    top = vmax if vmax is not None else max((abs(v) for v in finite), default=0.0)
    return signed, top if top > 0 else 1.0


HOVER_HINT = "Hover over (or tab to) a token to see its details."


def render_tokens(tokens: Sequence[str], values: Sequence[float | None], tooltips: Sequence[str | None] | None = None,
                  title: str | None = None, *, label: str = "value", vmax: float | None = None) -> str:
    """An HTML fragment: tokens coloured by value, a legend, and a hover tooltip per token.

    Non-negative values run white → red; values of both signs run blue (negative) → white → red.
    ``None`` or non-finite values are left uncoloured. Tooltips are plain text (escaped; newlines
    kept). Works for any per-token quantity: KL, Δlog p, component activations. ``vmax`` fixes the
    value of full colour (share it between heatmaps to make their colours comparable; larger values
    are clipped to full colour); default: the largest |value| of this fragment.

    Raises:
        ValueError: ``tokens``, ``values`` and ``tooltips`` differ in length.
    """
    if len(values) != len(tokens) or (tooltips is not None and len(tooltips) != len(tokens)):
        raise ValueError(f"tokens ({len(tokens)}), values ({len(values)}) and tooltips "
                         f"({len(tooltips) if tooltips is not None else '-'}) must have the same length")
    signed, top = _scale(values, vmax)
    spans = []
    for i, (tok, v) in enumerate(zip(tokens, values)):
        if v is not None and math.isfinite(v):
            colour = _mix(_RED if v >= 0 else _BLUE, abs(v) / top)
            style = f' style="background:{colour}"'
            head = f"{label}: {_fmt(v)}"
        else:
            style, head = "", f"{label}: not scored"
        own_tip = tooltips[i] if tooltips is not None else None
        tip = own_tip if own_tip is not None else head
        spans.append(f'<span class="gx-tok" tabindex="0" data-i="{i}"{style}>{html.escape(tok)}'
                     f'<span class="gx-tip" role="tooltip">{html.escape(tip)}</span></span>')
    lo = -top if signed else 0.0
    grad = (f"linear-gradient(to right,{_mix(_BLUE, 1)},{_mix(_BLUE, 0)},{_mix(_RED, 1)})" if signed
            else f"linear-gradient(to right,{_mix(_RED, 0)},{_mix(_RED, 1)})")
    legend = (f'<div class="gx-legend"><span>{html.escape(label)}:</span><span>{_fmt(lo)}</span>'
              f'<span class="gx-bar" style="background:{grad}"></span><span>{_fmt(top)}</span>'
              f'<span class="gx-hint">{html.escape(HOVER_HINT)}</span></div>')
    head_html = f'<div class="gx-title">{html.escape(title)}</div>' if title else ""
    return f'<div class="gx-heat">{head_html}<div class="gx-tokens">{"".join(spans)}</div>{legend}</div>'


def _pairs_text(pairs: Sequence[Sequence[Any]], signed: bool = False) -> str:
    fmt = "{:+.4f}" if signed else "{:.4f}"
    return ", ".join(f"{tok!r} {fmt.format(p)}" for tok, p in pairs)


def token_heatmap_html(report: BlastReport, lang: str, text_index: int = 0, value: str = "kl",
                       vmax: float | None = None, title: str | None = None) -> str:
    """Heatmap fragment of one text of a ``BlastReport``: tokens coloured by ``value`` (``"kl"``, the
    per-token KL(base ‖ edit), or ``"dlogprob"``, the change of log P of the actual token); hover shows
    the values, top-k before/after and the largest probability shifts. ``vmax``: the value of full
    colour (pass the same one to every heatmap of a page, see :func:`heatmap_vmax`); ``title``
    replaces the default one.

    Raises:
        ValueError: no per-token values in the report, unknown ``lang`` or ``value``.
        IndexError: ``text_index`` out of range.
    """
    if value not in ("kl", "dlogprob"):
        raise ValueError(f"value must be 'kl' or 'dlogprob', got {value!r}")
    if not report.tokens:
        raise ValueError("the report has no per-token values; run blast_radius(..., keep_tokens=True)")
    if lang not in report.tokens:
        raise ValueError(f"no per-token values for {lang!r}; the report has {sorted(report.tokens)}")
    texts = report.tokens[lang]
    if not -len(texts) <= text_index < len(texts):
        raise IndexError(f"text_index {text_index} out of range: {lang!r} has {len(texts)} texts")
    rec = texts[text_index]
    n = len(rec["tokens"])
    values: list[float | None] = [None] * n
    tips: list[str | None] = [None] * n
    for j, pos in enumerate(rec["positions"]):
        values[pos] = rec[value][j]
        tips[pos] = "\n".join([
            f"token {rec['tokens'][pos]!r} (position {pos})",
            f"KL(base ‖ edit): {rec['kl'][j]:.4g} nats",
            f"Δ log p(token): {rec['dlogprob'][j]:+.4g}",
            f"top-{len(rec['top_before'][j])} before: {_pairs_text(rec['top_before'][j])}",
            f"top-{len(rec['top_after'][j])} after:  {_pairs_text(rec['top_after'][j])}",
            f"largest Δp: {_pairs_text(rec['shifts'][j], signed=True)}",
        ])
    for pos in range(n):
        if tips[pos] is None:
            tips[pos] = f"token {rec['tokens'][pos]!r} (position {pos}): not scored"
    label = "KL (nats)" if value == "kl" else "Δ log p"
    title = title or f"{lang}, text {text_index} ({report.model})"
    return render_tokens(rec["tokens"], values, tips, title, label=label, vmax=vmax)


def heatmap_vmax(reports: Sequence[BlastReport], langs: Sequence[str], value: str = "kl",
                 quantile: float = 0.99) -> float | None:
    """One colour-scale end for many heatmaps: the ``quantile`` of |value| over every scored token of
    ``langs`` in ``reports`` (a high quantile, so one outlier does not wash out every other token).
    ``None`` when no report has per-token values."""
    vals = sorted(abs(float(v)) for rep in reports if rep.tokens for lang in langs
                  for rec in rep.tokens.get(lang, []) for v in rec[value])
    if not vals:
        return None
    return vals[min(len(vals) - 1, int(quantile * (len(vals) - 1)))] or None


def format_frame(frame: Any) -> Any:
    """A copy of a DataFrame for display: a non-default index becomes columns, and each float column
    gets one number of decimals for all its cells (about 4 significant digits of its largest |value|)."""
    out = frame.reset_index() if not _is_range_index(frame.index) else frame.copy()
    for col in out.columns:
        if out[col].dtype.kind != "f":
            continue
        finite = [abs(float(v)) for v in out[col] if v == v and math.isfinite(float(v))]
        top = max(finite, default=0.0)
        decimals = 4 if top == 0 else max(0, min(6, 3 - math.floor(math.log10(top))))
        out[col] = [("" if not (v == v and math.isfinite(float(v))) else f"{float(v):.{decimals}f}") for v in out[col]]
    return out


def _is_range_index(index: Any) -> bool:
    return type(index).__name__ == "RangeIndex" and index.name is None


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml"}


def _section_html(content: Any) -> str:
    """One section body: str = trusted HTML fragment; Path = image file; Figure; DataFrame."""
    if isinstance(content, str):
        return content
    if isinstance(content, Path):
        mime = _MIME.get(content.suffix.lower())
        if mime is None:
            raise ValueError(f"{content}: not an image ({', '.join(_MIME)}); pass HTML as a str")
        if not content.is_file():
            raise FileNotFoundError(f"{content} does not exist; leave the section out or create the image")
        return f'<img class="gx-img" alt="{html.escape(content.name)}" src="{_data_uri(content.read_bytes(), mime)}">'
    if hasattr(content, "savefig"):
        buf = io.BytesIO()
        content.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        return f'<img class="gx-img" alt="figure" src="{_data_uri(buf.getvalue(), "image/png")}">'
    if hasattr(content, "to_html"):
        return str(format_frame(content).to_html(classes="gx-table", border=0, index=False, escape=True))
    raise TypeError(f"a section is HTML (str), an image Path, a matplotlib Figure or a DataFrame; "
                    f"got {type(content).__name__}")


def html_document(title: str, sections: Sequence[tuple[str, Any]]) -> str:
    """The complete page for ``write_html_report`` as a string."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for i, item in enumerate(sections):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"sections[{i}] must be a (heading, content) pair")
        heading, content = item
        head = f"<h2>{html.escape(str(heading))}</h2>" if heading else ""  # "" continues the previous section
        body.append(f"<section>{head}{_section_html(content)}</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_html_report(path: str | Path, title: str, sections: Sequence[tuple[str, Any]]) -> Path:
    """Write one self-contained HTML page (atomic); returns its path.

    ``sections`` are ``(heading, content)`` pairs; content is an HTML fragment (``str``, trusted, e.g.
    from :func:`token_heatmap_html`), a matplotlib Figure, an image ``Path`` (PNG/JPEG/GIF/SVG,
    embedded), or a pandas DataFrame (escaped table).
    """
    path = Path(path)
    write_text_atomic(path, html_document(title, sections))
    logger.info("HTML report written to %s", path)
    return path
