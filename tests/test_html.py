"""Self-contained HTML reports: escaping, no external URLs, and a real hover in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import gradedit as ge
from chromium import external, guarded_page
from gradedit.blast import BlastReport, blast_radius
from gradedit.viz.html import render_tokens, token_heatmap_html, write_html_report

NASTY = 'Tom said <b> & "x" here'  # tiny-gpt2 tokens: ..., '<', 'b', '>', ' &', ' ', '"', 'x', '"', ...

_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")
_EXTERNAL = [re.compile(p, re.I) for p in (
    r"https?:", r"""(src|href|action)\s*=\s*["']?\s*//""", r"url\(\s*['\"]?\s*(?!data:)", r"@import",
    r"<script[^>]*\bsrc", r"<link\b", r"<iframe\b", r"ftp:")]


def _external_refs(page: str) -> list[str]:
    """Every pattern that would make the page load something from outside (data: URIs are inline)."""
    stripped = _DATA_URI.sub("data:", page)
    return [p.pattern for p in _EXTERNAL if p.search(stripped)]


@pytest.fixture(scope="module")
def report(tiny_gpt2: ge.LanguageModel) -> BlastReport:
    name = "transformer.h.0.mlp.c_fc.weight"
    p = dict(tiny_gpt2.model.named_parameters())[name]
    edit = ge.WeightEdit.dense({name: torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5})
    return blast_radius(tiny_gpt2, edit, {"en": [NASTY, "He said that she would be late."]}, control=False, topk=3)


def test_render_tokens_escapes_and_colours() -> None:
    frag = render_tokens(["<b>", " & ", '"q"', "x"], [0.0, 1.0, -0.5, None],
                         ["<script>alert(1)</script>", None, "a & b", None], title="<i>t</i>")
    assert "<b>" not in frag and "<script>" not in frag and "<i>" not in frag
    assert "&lt;b&gt;" in frag and "&lt;script&gt;" in frag and "&amp;" in frag and "&quot;q&quot;" in frag
    spans = re.findall(r'<span class="gx-tok"[^>]*>', frag)
    assert len(spans) == 4
    assert "background" not in spans[3], "a None value must stay uncoloured"
    assert "rgb(255,255,255)" in spans[0]  # 0 on a signed scale is white
    assert spans[1] != spans[2] and "background" in spans[2]
    assert "value: 1" in frag  # the default tooltip names the value
    with pytest.raises(ValueError, match="same length"):
        render_tokens(["a", "b"], [1.0])


def test_heatmap_values_and_errors(report: BlastReport) -> None:
    frag = token_heatmap_html(report, "en", 0)
    rec = report.tokens["en"][0]  # type: ignore[index]
    assert frag.count('class="gx-tok"') == len(rec["tokens"])
    assert f"KL(base ‖ edit): {rec['kl'][0]:.4g} nats" in frag
    assert "&lt;" in frag and "<b>" not in frag
    assert "Δ log p" in token_heatmap_html(report, "en", 1, value="dlogprob")
    with pytest.raises(ValueError, match="no per-token values for 'de'"):
        token_heatmap_html(report, "de")
    with pytest.raises(IndexError, match="out of range"):
        token_heatmap_html(report, "en", 5)
    with pytest.raises(ValueError, match="'kl' or 'dlogprob'"):
        token_heatmap_html(report, "en", value="p")
    bare = BlastReport(**{**report.__dict__, "tokens": None})
    with pytest.raises(ValueError, match="keep_tokens=True"):
        token_heatmap_html(bare, "en")


def test_report_is_self_contained(report: BlastReport, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = tmp_path / "plot.png"
    fig.savefig(png)
    frame = pd.DataFrame({"lang": ["<en>"], "ce": [1.5]})
    out = write_html_report(tmp_path / "r" / "report.html", "R & <D>", [
        ("summary", "<p>hello</p>"), ("figure", fig), ("image", png), ("table", frame),
        ("heatmap", token_heatmap_html(report, "en", 0)),
    ])
    plt.close(fig)
    page = out.read_text(encoding="utf-8")
    assert _external_refs(page) == []
    assert page.count("data:image/png;base64,") == 2
    assert "<title>R &amp; &lt;D&gt;</title>" in page and "&lt;en&gt;" in page
    assert not [p for p in out.parent.iterdir() if p.name != "report.html"], "temp files left behind"
    assert _external_refs('<img src="//cdn.example/x.png">') and _external_refs("<a href='https://x'>")  # the check bites
    with pytest.raises(FileNotFoundError):
        write_html_report(tmp_path / "x.html", "x", [("missing", tmp_path / "none.png")])
    with pytest.raises(TypeError, match="a section is"):
        write_html_report(tmp_path / "x.html", "x", [("bad", 3)])


def test_hover_shows_tooltip_in_chromium(report: BlastReport, tmp_path: Path) -> None:
    from PIL import Image

    path = write_html_report(tmp_path / "report.html", "hover test", [("en", token_heatmap_html(report, "en", 0))])
    rec = report.tokens["en"][0]  # type: ignore[index]
    pos = rec["tokens"].index("<")  # an escaped token
    j = rec["positions"].index(pos)
    requests: list[str] = []
    with guarded_page(requests) as page:
        page.goto(path.as_uri())
        tok = page.locator(f'.gx-tok[data-i="{pos}"]')
        tip = tok.locator(".gx-tip")
        assert not tip.is_visible(), "the tooltip must be hidden until hover"
        assert tok.inner_text().startswith("<")  # escaped in the file, '<' on screen
        tok.hover()
        page.wait_for_timeout(100)
        assert tip.is_visible()
        text = tip.inner_text()
        shot = tmp_path / "hover.png"
        page.screenshot(path=str(shot))
        box = tip.bounding_box()
    assert f"KL(base ‖ edit): {rec['kl'][j]:.4g} nats" in text
    assert f"Δ log p(token): {rec['dlogprob'][j]:+.4g}" in text
    assert "top-3 before:" in text and "largest Δp:" in text
    assert repr(rec["top_after"][j][0][0]) in text
    # the tooltip is really painted: its box on the screenshot is the dark tooltip background
    assert box is not None and box["width"] > 100 and box["height"] > 40
    img = Image.open(shot).convert("L")
    crop = img.crop((int(box["x"]) + 2, int(box["y"]) + 2, int(box["x"] + box["width"]) - 2,
                     int(box["y"] + box["height"]) - 2))
    hist = crop.histogram()  # 256 grey levels
    dark = sum(hist[:80]) / sum(hist)
    assert dark > 0.5, f"tooltip area is not dark on the screenshot ({dark:.0%} dark pixels)"
    assert external(requests) == [], f"the page requested external resources: {external(requests)}"
    assert any(u.startswith("file://") for u in requests), "request recording did not work"


def test_shared_colour_scale_and_hover_hint(report: BlastReport) -> None:
    from gradedit.viz.html import HOVER_HINT, heatmap_vmax

    frag = render_tokens(["a", "b"], [0.05, 0.1], vmax=0.2)
    spans = re.findall(r'<span class="gx-tok"[^>]*>', frag)
    assert "rgb(245,168,162)" in spans[1]  # 0.1 of 0.2: half-way from white to red (235,80,70)
    assert "<span>0.2</span>" in frag and html_escape(HOVER_HINT) in frag
    own = render_tokens(["a", "b"], [0.05, 0.1])
    assert "rgb(235,80,70)" in re.findall(r'<span class="gx-tok"[^>]*>', own)[1]  # own max = full colour
    # two heatmaps with one vmax colour the same KL the same
    vmax = heatmap_vmax([report], ["en"])
    kls = [v for rec in report.tokens["en"] for v in rec["kl"]]  # type: ignore[index]
    assert vmax is not None and min(kls) <= vmax <= max(kls)
    a, b = token_heatmap_html(report, "en", 0, vmax=vmax), token_heatmap_html(report, "en", 1, vmax=vmax)
    assert f"<span>{vmax:.4g}</span>" in a and f"<span>{vmax:.4g}</span>" in b
    assert heatmap_vmax([report], ["xx"]) is None


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_tables_have_no_index_column_and_one_precision_per_column(tmp_path: Path) -> None:
    from gradedit.viz.html import format_frame

    frame = pd.DataFrame({"language": ["en", "de"], "CE change (nats)": [0.0271234, -0.1],
                          "KL": [0.00012, 0.0101], "tokens": [10, 20]})
    shown = format_frame(frame)
    assert shown["CE change (nats)"].tolist() == ["0.0271", "-0.1000"]
    assert shown["KL"].tolist() == ["0.00012", "0.01010"]
    assert shown["tokens"].tolist() == [10, 20]
    named = format_frame(frame.set_index("language"))
    assert list(named.columns)[0] == "language"  # a meaningful index becomes a column
    page = write_html_report(tmp_path / "t.html", "t", [("t", frame)]).read_text()
    head = re.search(r"<thead>.*?</thead>", page, re.S).group(0)  # type: ignore[union-attr]
    assert re.findall(r"<th>([^<]*)</th>", head) == ["language", "CE change (nats)", "KL", "tokens"]
    assert "<th></th>" not in page and "0.0271" in page
