"""Safe artefacts and reports (issue 18.3): a name from user data never becomes a path outside its
folder (``_files.safe_name`` / ``safe_join``; class ids are checked when data loads), and hostile
tokens — ``<img src=x onerror=alert(1)>`` and ``</script>`` as single tokens of the vocabulary and
inside corpus text — render as text in the blast heatmap and the components page in headless
Chromium: no dialog, no element injected, no request but the page itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from chromium import guarded_page
from gradedit._files import safe_join, safe_name
from gradedit.blast import blast_radius
from gradedit.data.schema import PairDataset
from gradedit.decompose import decompose, label_components
from gradedit.errors import DataError, UnsafeName
from gradedit.viz.components_page import write_components_page
from gradedit.viz.html import token_heatmap_html, write_html_report
from pronoun_rows import pronoun_records

IMG = "<img src=x onerror=alert(1)>"
END = "</script>"
HOSTILE_TEXT = f"He said {IMG} and {END}<script>alert(2)</script> then left."


@pytest.mark.parametrize("name,problem", [("../x", "holds '/'"), ("a/b", "holds '/'"), ("a\x00b", "holds '\\x00'"),
                                          ("..", "is '.' or '..'"), (".", "is '.' or '..'"), ("", "is empty"),
                                          ("a\\b", "holds '\\\\'"), ("x" * 300, "is longer than 255 bytes"),
                                          ("tab\there", "holds '\\t'")])
def test_unsafe_names_are_refused(name: str, problem: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeName, match="^class id .* " + re.escape(problem) + ", so it cannot name a file"):
        safe_name(name, "class id")
    with pytest.raises(UnsafeName):
        safe_join(tmp_path, name, "class id")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["masc", "fem ü", "de-articles", "a.b", "...x", "1"])
def test_safe_names_stay_inside_their_folder(name: str, tmp_path: Path) -> None:
    path = safe_join(tmp_path, name, "class id")
    assert path.parent == tmp_path and path.name == name
    path.write_text("x")
    assert path.resolve().parent == tmp_path.resolve()


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\x00b", ".."])
def test_pair_data_refuses_class_ids_that_would_escape_a_folder(bad: str) -> None:
    rows = [dict(r, label=0) for r in pronoun_records(["The man"], ["said that"])]
    rows[0]["factual_class"] = rows[1]["alternative_class"] = bad
    with pytest.raises(DataError, match=r"^row 0: class id cannot name a file or folder"):
        PairDataset.from_records(rows)


# -- hostile tokens in the HTML reports ------------------------------------------------------------------------
def _with_hostile_tokens(name: str) -> ge.LanguageModel:
    """A fresh tiny model whose vocabulary has the hostile strings as single tokens."""
    lm = ge.load_model(name)
    lm.tokenizer.add_tokens([IMG, END])
    lm.model.resize_token_embeddings(len(lm.tokenizer))
    ids = lm.tokenizer(HOSTILE_TEXT)["input_ids"]
    assert lm.tokenizer.convert_tokens_to_ids(IMG) in ids and lm.tokenizer.convert_tokens_to_ids(END) in ids
    return lm


def _open_and_check(path: Path, expect_texts: list[str]) -> str:
    """Open ``path`` in Chromium; assert no dialog, no injected element, no request but the file; return body text."""
    requests: list[str] = []
    dialogs: list[str] = []
    with guarded_page(requests) as page:
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(path.as_uri())
        page.wait_for_timeout(300)
        # hover every token: a tooltip that rendered markup would fire here
        for tok in page.locator(".gx-tok").all()[:80]:
            tok.hover()
        body = page.inner_text("body")
        n_img = page.locator("img:not([src^='data:'])").count()
        n_scripts = page.evaluate("document.scripts.length")
        fired = page.evaluate("typeof window.__gx_pwned")
    assert dialogs == [], f"a dialog opened: {dialogs}"
    assert n_img == 0, "an <img> from the text became an element"
    assert fired == "undefined"
    assert all(u == path.as_uri() or u.startswith("data:") for u in requests), requests
    for text in expect_texts:
        assert text in body, f"{text!r} is not shown as text"
    return str(n_scripts)


def test_blast_heatmap_shows_hostile_tokens_as_text_in_chromium(tmp_path: Path) -> None:
    lm = _with_hostile_tokens("tiny-gpt2")
    name = "transformer.h.0.mlp.c_fc.weight"
    p = dict(lm.model.named_parameters())[name]
    edit = ge.WeightEdit.dense({name: torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5})
    report = blast_radius(lm, edit, {"en": [HOSTILE_TEXT]}, control=False, topk=3)
    rec: Any = report.tokens["en"][0]  # type: ignore[index]
    assert IMG in rec["tokens"] and END in rec["tokens"]  # single tokens of the text
    path = write_html_report(tmp_path / "report.html", f"report {END}{IMG}",
                             [(f"en {IMG}", token_heatmap_html(report, "en", 0))])
    page = path.read_text(encoding="utf-8")
    assert IMG not in page and page.count("</script>") == page.count("<script")  # only the page's own scripts
    _open_and_check(path, [IMG, END, "<script>alert(2)</script>"])


def test_components_page_shows_hostile_tokens_as_text_in_chromium(tmp_path: Path) -> None:
    lm = _with_hostile_tokens("tiny-llama")
    from gradedit.models.zoo.tiny import tiny_corpus

    texts = [*tiny_corpus(0)[:40], HOSTILE_TEXT] * 2
    dec = decompose(lm, ["model.layers.0.mlp.up_proj"], 8, texts, steps=4, batch_size=8, seq_len=16, seed=0,
                    out=tmp_path / "dec")
    sets = {"plain": tiny_corpus(1)[:8], f"set {IMG}{END}": [HOSTILE_TEXT] * 3}
    labels = label_components(lm, dec, sets, top_k=4, window=3, batch_size=4)
    contexts = [c for r in labels.components for c in r["contexts"]]
    shown = str(contexts)
    assert IMG in shown or END in shown, "no top context holds a hostile token: the test would prove nothing"
    path = write_components_page(tmp_path / "components.html", labels)
    page = path.read_text(encoding="utf-8")
    assert IMG not in page and page.count("<script") == 1 and page.count("</script>") == 1
    _open_and_check(path, [f"set {IMG}{END}"])
