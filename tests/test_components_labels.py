"""Component statistics and labels (gradedit.decompose.labels), ``gradedit components label|show`` and
the searchable HTML page — against hand-computed oracles on a small decomposition of tiny-llama."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from chromium import external, guarded_page
from gradedit.cli import main
from gradedit.decompose import ComponentLabels, Decomposition, decompose, label_components
from gradedit.decompose.labels_io import LABELS_FILE, search_text
from gradedit.decompose.labels_lens import token_pieces, vocab_piece
from gradedit.decompose.stats import component_stats
from gradedit.errors import DecompositionError
from gradedit.models.zoo.tiny import tiny_corpus
from gradedit.viz.components_page import write_components_page

MODULES = ["model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj", "model.layers.1.mlp.down_proj"]
NASTY = "<script>window.__pwned=1</script>"  # a text-set name: shown on the page, must stay text


def _sets() -> dict[str, list[str]]:
    corpus = tiny_corpus(1)
    de = [s for s in corpus if re.search(r"\b(sagte|der|die|ist)\b", s)][:24]
    en = [s for s in corpus if re.search(r"\b(said|thinks|the)\b", s) and s not in de][:24]
    return {"de": de, "en": en, NASTY: ['Tom said <b> & "x" here <img src=x onerror="window.__pwned=2">']}


@pytest.fixture(scope="module")
def dec_dir(tiny_llama: ge.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dec")
    decompose(tiny_llama, MODULES, 32, tiny_corpus(0)[:120], steps=40, batch_size=128, seq_len=32, seed=0,
              lr=0.01, importance_coeff=1e-3, faithfulness_coeff=100.0, out=out)
    return out


@pytest.fixture(scope="module")
def dec(tiny_llama: ge.LanguageModel, dec_dir: Path) -> Decomposition:
    return Decomposition.load(dec_dir, tiny_llama)


@pytest.fixture(scope="module")
def labels(tiny_llama: ge.LanguageModel, dec: Decomposition, dec_dir: Path) -> ComponentLabels:
    lab = label_components(tiny_llama, dec, _sets(), top_k=4, window=3, batch_size=7)
    lab.save(dec_dir)
    return lab


def _by_hand(lm: ge.LanguageModel, dec: Decomposition, sets: dict[str, list[str]]) -> dict[str, Any]:
    """Per module, every non-special token of every text, one text per forward (no padding): the
    layer input, importance g and inner activation, with (set, text, pos) and the token piece."""
    net = lm.model
    named = dict(net.named_modules())
    out: dict[str, Any] = {m: {"x": [], "where": []} for m in dec.modules}
    for s, texts in sets.items():
        for t, text in enumerate(texts):
            enc = lm.tokenizer(text, return_special_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]])
            keep = ~torch.tensor(enc["special_tokens_mask"]).bool()
            seen: dict[str, torch.Tensor] = {}
            hooks = [named[m].register_forward_pre_hook(lambda mod, a, m=m, seen=seen: seen.__setitem__(m, a[0].detach()))
                     for m in dec.modules]
            with torch.no_grad():
                net(input_ids=ids)
            for h in hooks:
                h.remove()
            pieces = token_pieces(lm.tokenizer, enc["input_ids"])
            for m in dec.modules:
                out[m]["x"].append(seen[m][0][keep])
                out[m]["where"] += [(s, t, int(p), pieces[p]) for p in keep.nonzero()[:, 0]]
    for m in dec.modules:
        x = torch.cat(out[m]["x"]).float()
        out[m]["x"], out[m]["g"], out[m]["a"] = x, dec.importance(m, x), dec.layer(m).inner(x)
    return out


@pytest.fixture(scope="module")
def hand(tiny_llama: ge.LanguageModel, dec: Decomposition) -> dict[str, Any]:
    return _by_hand(tiny_llama, dec, _sets())


def _rec(labels: ComponentLabels, module: str, c: int) -> dict[str, Any]:
    return next(r for r in labels.components if r["module"] == module and r["index"] == c)


def test_statistics_agree_with_importance_by_hand(labels: ComponentLabels, dec: Decomposition,
                                                  hand: dict[str, Any]) -> None:
    thr = dec.config.fire_threshold
    assert len(labels) == sum(i.C for i in dec.infos.values())
    for m in dec.modules:
        g, where = hand[m]["g"], hand[m]["where"]
        recs = [_rec(labels, m, c) for c in range(dec.infos[m].C)]
        rows = g.shape[0]
        assert labels.data["modules"][m]["rows"] == rows
        freq = torch.tensor([r["firing_frequency"] for r in recs])
        mean = torch.tensor([r["mean_importance"] for r in recs])
        assert torch.allclose(mean, g.double().mean(0).float(), atol=1e-5)
        assert torch.allclose(freq, (g > thr).float().mean(0), atol=1.5 / rows)  # a g at the threshold may flip
        assert [r["alive"] for r in recs] == [bool(f > 0) for f in freq]
        ref = component_stats({m: dec.layer(m)}, {m: hand[m]["x"]}, thr, dec.config.leaky_alpha)[m]  # stats.py
        assert labels.data["modules"][m]["mean_l0"] == pytest.approx(ref["mean_l0"], abs=0.05)
        assert labels.data["modules"][m]["alive"] == ref["alive"]
        for s in labels.sets:  # per-set mean, and the ratio against the other sets pooled
            mine = torch.tensor([w[0] == s for w in where])
            set_mean, rest_mean = g[mine].double().mean(0), g[~mine].double().mean(0)
            for c in (0, 5, 17):
                sel = recs[c]["selectivity"][s]
                assert sel["mean_importance"] == pytest.approx(float(set_mean[c]), abs=1e-5)
                assert sel["difference"] == pytest.approx(float(set_mean[c] - rest_mean[c]), abs=1e-5)
                if rest_mean[c] > 1e-3:
                    assert sel["ratio"] == pytest.approx(float(set_mean[c] / rest_mean[c]), rel=1e-3)
    assert labels.data["texts"]["sets"]["de"]["tokens"] == sum(w[0] == "de" for w in hand[dec.modules[0]]["where"])


def test_top_context_is_where_importance_is_max(labels: ComponentLabels, dec: Decomposition,
                                                hand: dict[str, Any]) -> None:
    checked = 0
    for m in dec.modules:
        g, a, where = hand[m]["g"], hand[m]["a"], hand[m]["where"]
        index = {w[:3]: i for i, w in enumerate(where)}
        for c in range(dec.infos[m].C):
            ctxs = _rec(labels, m, c)["contexts"]
            if not ctxs:
                assert float(g[:, c].max()) == 0.0
                continue
            assert ctxs[0]["importance"] == pytest.approx(float(g[:, c].max()), abs=1e-5)
            assert [x["importance"] for x in ctxs] == sorted((x["importance"] for x in ctxs), reverse=True)
            for x in ctxs:
                i = index[(x["set"], x["text"], x["pos"])]
                assert x["importance"] == pytest.approx(float(g[i, c]), abs=1e-5)
                assert x["activation"] == pytest.approx(float(a[i, c]), abs=1e-4)
                assert x["token"] == where[i][3]
            checked += 1
    assert checked > 20


def test_contexts_show_the_marked_token_with_its_neighbours(labels: ComponentLabels, tiny_llama: ge.LanguageModel
                                                           ) -> None:
    ctx = next(x for r in labels.components for x in r["contexts"] if x["set"] == "de" and x["pos"] >= 3)
    text = _sets()["de"][ctx["text"]]
    ids = tiny_llama.tokenizer(text)["input_ids"]
    pieces = token_pieces(tiny_llama.tokenizer, ids)
    p = ctx["pos"]
    assert ctx["left"] == pieces[p - 3: p] and ctx["right"] == pieces[p + 1: p + 4] and ctx["token"] == pieces[p]
    assert "".join(pieces) == tiny_llama.tokenizer.decode(ids, skip_special_tokens=False)


def test_lens_is_the_unembedding_times_the_write_vector(dec: Decomposition) -> None:
    lm = ge.load_model("tiny-llama")  # own copy: a non-trivial final-norm gain
    gain = torch.rand(64, generator=torch.Generator().manual_seed(3)) + 0.5
    with torch.no_grad():
        lm.model.model.norm.weight.copy_(gain)
    lab = label_components(lm, dec, {"a": tiny_corpus(2)[:6]}, top_k=3, lens_k=5)
    W_E = lm.model.lm_head.weight
    down = dict(lm.model.named_modules())["model.layers.0.mlp.down_proj"].weight
    cases = [("model.layers.1.mlp.down_proj", lambda u: u), ("model.layers.0.mlp.up_proj", lambda u: down @ u)]
    assert lab.data["lens"]["modules"]["model.layers.0.mlp.up_proj"]["kind"] == "via_down"
    assert lab.data["lens"]["modules"]["model.layers.1.mlp.down_proj"]["kind"] == "residual"
    for m, write in cases:
        _, U = dec.components(m)
        for c in (0, 9):
            rec = _rec(lab, m, c)
            with torch.no_grad():
                logits = W_E @ (gain * write(U[c]))
            top, bottom = logits.topk(5), (-logits).topk(5)
            assert [t for t, _ in rec["lens"]["plus"]] == [vocab_piece(lm.tokenizer, i) for i in top.indices]
            assert [v for _, v in rec["lens"]["plus"]] == pytest.approx(top.values.tolist(), rel=1e-4, abs=1e-5)
            assert [t for t, _ in rec["lens"]["minus"]] == [vocab_piece(lm.tokenizer, i) for i in bottom.indices]
            drive = sum(x["importance"] * x["activation"] for x in rec["contexts"])
            sign = rec["lens"]["sign"]
            assert sign == (-1 if drive < 0 else 1)
            assert rec["lens"]["promotes"] == (rec["lens"]["plus"] if sign > 0 else rec["lens"]["minus"])
            if rec["alive"]:
                assert ("writes≈" if m.endswith("up_proj") else "writes +") in rec["label"]


def test_lens_applies_gemma_post_mlp_and_final_norm_gains(tiny_llama: ge.LanguageModel) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = tiny_llama.tokenizer
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Gemma3ForCausalLM(cfg).eval()
        with torch.no_grad():  # Gemma's norms scale by (1 + w); w is 0 at init
            for norm in (net.model.norm, net.model.layers[0].post_feedforward_layernorm):
                norm.weight.normal_(0, 0.3)
    lm = ge.LanguageModel(model=net, tokenizer=tok, kind="clm", name="tiny-gemma3")
    m = "model.layers.0.mlp.up_proj"
    gemma_dec = decompose(lm, [m], 8, tiny_corpus(0)[:40], steps=2, batch_size=32, seq_len=16, seed=0)
    lab = label_components(lm, gemma_dec, {"a": tiny_corpus(2)[:4]}, top_k=1, lens_k=4)
    info = lab.data["lens"]["modules"][m]
    assert info["kind"] == "via_down" and info["post_norm"] == "model.layers.0.post_feedforward_layernorm"
    _, U = gemma_dec.components(m)
    layer = net.model.layers[0]
    scale = (1 + net.model.norm.weight) * (1 + layer.post_feedforward_layernorm.weight)
    with torch.no_grad():
        logits = net.lm_head.weight @ (scale[:, None] * (layer.mlp.down_proj.weight @ U.T))  # [vocab, C]
    for c in range(8):
        plus = _rec(lab, m, c)["lens"]["plus"]
        top = logits[:, c].topk(4)
        assert [t for t, _ in plus] == [vocab_piece(tok, i) for i in top.indices]
        assert [v for _, v in plus] == pytest.approx(top.values.tolist(), rel=1e-4, abs=1e-5)


def test_selectivity_finds_a_planted_text_set(tiny_llama: ge.LanguageModel, dec: Decomposition) -> None:
    pool = tiny_corpus(3)[:60]
    m = "model.layers.1.mlp.up_proj"
    per_text = _by_hand(tiny_llama, dec, {"pool": pool})[m]
    text_of = torch.tensor([w[1] for w in per_text["where"]])
    means = torch.stack([per_text["g"][text_of == t].mean(0) for t in range(len(pool))])  # [texts, C]
    c = int((means.max(0).values - means.min(0).values).argmax())  # the component whose texts differ most
    order = means[:, c].argsort(descending=True).tolist()
    hot, cold = [pool[i] for i in order[:8]], [pool[i] for i in order[-8:]]  # plant: its 8 best and 8 worst texts
    lab = label_components(tiny_llama, dec, {"hot": hot, "cold": cold}, top_k=2)
    rec = _rec(lab, m, c)
    sel = rec["selectivity"]
    g = per_text["g"][:, c].double()
    hot_rows = torch.isin(text_of, torch.tensor(order[:8]))
    cold_rows = torch.isin(text_of, torch.tensor(order[-8:]))
    assert sel["hot"]["mean_importance"] == pytest.approx(float(g[hot_rows].mean()), abs=1e-5)
    assert sel["cold"]["mean_importance"] == pytest.approx(float(g[cold_rows].mean()), abs=1e-5)
    assert sel["hot"]["mean_importance"] > sel["cold"]["mean_importance"]
    assert rec["best_set"] == "hot"
    if sel["cold"]["mean_importance"] > 0:
        ratio = sel["hot"]["mean_importance"] / sel["cold"]["mean_importance"]
        assert sel["hot"]["ratio"] == pytest.approx(ratio)
        assert rec["label"].startswith(f"hot {ratio:.1f}×") == (ratio >= 1.5)
    else:
        assert sel["hot"]["ratio"] is None and rec["label"].startswith("hot only")
    ranked = lab.select(sort="selectivity:hot")
    keys = [r["selectivity"]["hot"]["ratio"] for r in ranked]
    assert rec in ranked and all(a is None or (b is not None and a >= b) for a, b in zip(keys, keys[1:]))


def test_components_json_round_trip_and_refusals(labels: ComponentLabels, dec_dir: Path, tmp_path: Path) -> None:
    back = ComponentLabels.load(dec_dir)  # also checks it belongs to the decomposition saved there
    assert back.data == json.loads(json.dumps(labels.data))
    assert back.select(sort="importance", top=5) == labels.select(sort="importance", top=5)
    copy = tmp_path / "copy"
    shutil.copytree(dec_dir, copy)
    file = copy / LABELS_FILE
    text = file.read_text(encoding="utf-8")
    file.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(DecompositionError, match="corrupt"):
        ComponentLabels.load(copy)
    file.write_text(json.dumps({**labels.data, "format": "something-else/2"}), encoding="utf-8")
    with pytest.raises(DecompositionError, match="format 'something-else/2'"):
        ComponentLabels.load(copy)
    broken = json.loads(text)
    del broken["components"][3]["selectivity"]
    file.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(DecompositionError, match="record 3 lacks"):
        ComponentLabels.load(copy)
    file.write_text(text, encoding="utf-8")
    meta = json.loads((copy / "decomposition.json").read_text(encoding="utf-8"))
    meta["seed"] = meta["seed"] + 1  # another decomposition in the same folder
    (copy / "decomposition.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DecompositionError, match="another decomposition"):
        ComponentLabels.load(copy)
    with pytest.raises(FileNotFoundError, match="components label"):
        ComponentLabels.load(tmp_path)


def _selective_token(labels: ComponentLabels, spaced: bool = False) -> str:
    """A context token that some, not all, alive components match when searched (``spaced``: one
    with its leading space, e.g. ``' said'``)."""
    alive = sum(r["alive"] for r in labels.components)
    for rec in labels.select(sort="freq"):
        for ctx in rec["contexts"]:
            tok = ctx["token"] if spaced else ctx["token"].strip()
            if len(tok.strip()) >= 3 and tok.startswith(" ") == spaced and 0 < len(labels.select(search=tok)) < alive:
                return tok
    raise AssertionError("no selective token in the contexts")


def _table_rows(out: str) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"^(model\.\S+)\s+(\d+)\s", out, re.M)]


def test_cli_show_prints_top_rows_and_search_filters(labels: ComponentLabels, dec_dir: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["components", "show", str(dec_dir), "--top", "4", "--sort", "importance"]) == 0
    out = capsys.readouterr().out
    assert "freq = share of tokens" in out and "label" in out
    want = [(r["module"], r["index"]) for r in labels.select(sort="importance", top=4)]
    assert _table_rows(out) == want
    token = _selective_token(labels)
    matches = labels.select(search=token)
    assert all(token.lower() in search_text(r) for r in matches)
    assert main(["components", "show", str(dec_dir), "--search", token, "--top", "1000", "--module", "layers.1"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows == [(r["module"], r["index"]) for r in matches if r["module"].startswith("model.layers.1")]
    assert main(["components", "show", str(dec_dir), "--sort", "selectivity:de", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^module\s+c\s+freq\s+imp\s+best\s+de ×\s+label", out, re.M)
    assert _table_rows(out) == [(r["module"], r["index"]) for r in labels.select(sort="selectivity:de", top=5)]
    assert main(["components", "show", str(dec_dir), "--sort", "selectivity:xx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no text set 'xx'" in err[0]


def test_cli_label_writes_components_json(dec_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "dec"
    shutil.copytree(dec_dir, copy)
    (copy / LABELS_FILE).unlink()
    assert main(["components", "show", str(copy)]) == 2
    assert "gradedit components label" in capsys.readouterr().err
    texts = tmp_path / "sets.json"
    texts.write_text(json.dumps({"de": _sets()["de"][:5], "en": _sets()["en"][:5]}), encoding="utf-8")
    assert main(["components", "label", str(copy), "--model", "tiny-llama", "--texts-json", str(texts),
                 "--top-k", "2"]) == 0
    assert "alive" in capsys.readouterr().out
    lab = ComponentLabels.load(copy)
    assert lab.sets == ["de", "en"] and lab.data["settings"]["top_k"] == 2
    assert max(len(r["contexts"]) for r in lab.components) == 2
    texts.write_text(json.dumps({"de": "not a list"}), encoding="utf-8")
    assert main(["components", "label", str(copy), "--model", "tiny-llama", "--texts-json", str(texts)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "list of texts" in err[0]


def test_default_text_sets_avoid_training_and_study_text() -> None:
    from gradedit.data import corpora
    from gradedit.decompose import default_text_sets
    from gradedit.decompose.presets import PRESETS, preset_texts

    sets = default_text_sets(16)
    assert sorted(sets) == ["de", "en", "es", "fr", "it"]
    assert sets["de"] == corpora.sentences("de")[400:416]
    used = set(preset_texts(PRESETS["gemma3-270m"])) | set(corpora.sentences("de")[:89])
    used |= {s for lang in sets for s in corpora.sentences(lang)[-32:]}
    assert not used & {s for v in sets.values() for s in v}


def test_html_page_searches_sorts_and_escapes_in_chromium(labels: ComponentLabels, tmp_path: Path) -> None:
    path = write_components_page(tmp_path / "components.html", labels)
    page = path.read_text(encoding="utf-8")
    assert NASTY not in page and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert "<img" not in page and page.count("<script") == 1 and not re.search(r"https?:|<link\b|<iframe", page)
    alive = [r for r in labels.components if r["alive"]]
    token = _selective_token(labels)
    n_match = len(labels.select(search=token))
    requests: list[str] = []
    with guarded_page(requests) as pg:
        pg.goto(path.as_uri())
        rows = pg.locator("#gx-body tr")
        assert rows.count() == len(alive)
        assert pg.locator("#gx-body tr:visible").count() == len(alive)
        pg.fill("#gx-search", token)  # typing filters rows
        assert pg.locator("#gx-body tr:visible").count() == n_match < len(alive)
        assert pg.inner_text("#gx-count").startswith(f"{n_match} of {len(alive)}")
        shown = pg.eval_on_selector_all("#gx-body tr:not([hidden])", "rs => rs.map(r => r.dataset.search)")
        assert all(token.lower() in s for s in shown)
        spaced = _selective_token(labels, spaced=True)  # a leading space counts, as in --search
        pg.fill("#gx-search", spaced)
        assert pg.locator("#gx-body tr:visible").count() == len(labels.select(search=spaced))
        assert len(labels.select(search=spaced)) <= len(labels.select(search=spaced.strip()))
        pg.fill("#gx-search", "no such token anywhere")
        assert pg.locator("#gx-body tr:visible").count() == 0
        pg.fill("#gx-search", "")
        pg.select_option("#gx-sort", "importance")
        first = pg.eval_on_selector_all("#gx-body tr", "rs => rs.map(r => parseFloat(r.dataset.importance))")
        assert first == sorted(first, reverse=True) and len(first) == len(alive)
        for descending in (True, False):  # a header click sorts by that column, a second click reverses
            pg.click("th[data-key='index']")
            idx = pg.eval_on_selector_all("#gx-body tr", "rs => rs.map(r => parseInt(r.dataset.index))")
            assert idx == sorted(idx, reverse=descending)
        assert pg.evaluate("window.__pwned") is None  # planted script and handler never ran
        assert NASTY in pg.inner_text("body")  # shown as text
        assert pg.locator("mark").count() >= len(alive)  # marked tokens of the top contexts
    assert external(requests) == [], f"the page requested external resources: {external(requests)}"
