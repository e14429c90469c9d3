"""Component statistics and automatic labels without an LLM.

For a :class:`~gradedit.models.LanguageModel`, a :class:`Decomposition` of some of its linear layers and
named text sets (e.g. one per language), :func:`label_components` runs the model over every text
once, reads each decomposed layer's input at every token (special tokens such as BOS left out) and
computes, per component ``c``:

* ``firing_frequency`` (share of tokens with importance ``g_c > threshold``), ``mean_importance``,
  ``alive`` (fires at least once); per module ``mean_l0`` (components firing per token) — the same
  definitions as :func:`gradedit.decompose.stats.component_stats`;
* ``contexts``: the ``top_k`` tokens with the largest causal importance ``g_c(x)`` (ties broken by the
  inner activation ``|V_c · x|``), each with ``window`` tokens either side, the importance and the
  signed inner activation ``V_c · x``; only tokens with ``g_c > 0``;
* ``lens``: the output-token lens of :mod:`gradedit.decompose.labels_lens`, with ``sign`` = the sign
  of ``Σ g · (V_c · x)`` over the top contexts (where it fires, the component adds ``(V_c · x) U_c``,
  so its effective write is ``sign · U_c``): ``promotes`` / ``suppresses`` are the lens of that side;
* ``selectivity`` per text set: mean importance and firing frequency on the set, and vs the other
  sets pooled token by token, the ``difference`` and ``ratio = mean_set / mean_rest`` (``None`` when
  the component never has importance > 0 on the rest); ``best_set``: the set with the largest ratio;
* ``label``: :func:`gradedit.decompose.labels_io.label_text`.

Default text sets: Bible sentences ``[400 : 400 + n]`` of de/en/fr/es/it — text that the
decomposition presets (``[100 : 400]``) and the German study (``[0 : 89]`` and the last 32) do not use.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import DecompositionError
from ..models import LanguageModel
from .artifact import Decomposition
from .hooks import StopForward, capture_inputs
from .labels_io import FORMAT, ComponentLabels, decomposition_id, label_text
from .labels_lens import final_norm_gain, token_lens, token_pieces, vocab_piece, write_directions
from .objectives import frozen

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_LANGUAGES", "DEFAULT_START", "default_text_sets", "label_components"]

DEFAULT_LANGUAGES = ("de", "en", "fr", "es", "it")
DEFAULT_START = 400
"""First Bible sentence of the default text sets (presets train on [100:400], the German study uses [0:89])."""


def default_text_sets(n: int = 128) -> dict[str, list[str]]:
    """Bible sentences ``[400 : 400 + n]`` of each of de/en/fr/es/it (never the last 32 of a language)."""
    from ..data import corpora

    out: dict[str, list[str]] = {}
    for lang in DEFAULT_LANGUAGES:
        sents = corpora.sentences(lang)
        out[lang] = sents[DEFAULT_START: min(DEFAULT_START + n, len(sents) - 32)]
    return out


def _check_sets(text_sets: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    if not isinstance(text_sets, Mapping) or not text_sets:
        raise DecompositionError("text_sets must be a non-empty mapping name -> list of texts, e.g. "
                                 "{'de': [...], 'en': [...]}")
    out: dict[str, list[str]] = {}
    for name, texts in text_sets.items():
        if not isinstance(name, str) or not name.strip():
            raise DecompositionError(f"text set names must be non-empty strings, got {name!r}")
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise DecompositionError(f"text set {name!r} must be a non-empty list of texts")
        bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
        if bad:
            raise DecompositionError(f"text set {name!r} holds {len(bad)} empty or non-string text(s), e.g. {bad[0]!r}")
        out[name] = list(texts)
    return out


class _Acc:
    """Running statistics and top contexts of one module's ``C`` components over token rows."""

    def __init__(self, C: int, n_sets: int, k: int, threshold: float) -> None:
        self.thr, self.k = threshold, k
        self.sum_g = torch.zeros(n_sets, C, dtype=torch.float64)
        self.fires = torch.zeros(n_sets, C, dtype=torch.float64)
        self.rows = torch.zeros(n_sets, dtype=torch.float64)
        self.l0 = 0.0
        self.top_g, self.top_a = torch.empty(0, C), torch.empty(0, C)
        self.top_row = torch.empty(0, C, dtype=torch.long)

    def add(self, g: Tensor, a: Tensor, set_idx: int, row0: int) -> None:
        """``g``, ``a`` ``[R, C]``: importances and inner activations of rows ``row0 ..`` of set ``set_idx``."""
        fires = g > self.thr
        self.sum_g[set_idx] += g.double().sum(0)
        self.fires[set_idx] += fires.double().sum(0)
        self.rows[set_idx] += g.shape[0]
        self.l0 += float(fires.double().sum())
        rows = torch.arange(row0, row0 + g.shape[0])[:, None].expand_as(g)
        G, A, R = torch.cat([self.top_g, g]), torch.cat([self.top_a, a]), torch.cat([self.top_row, rows])
        order = torch.sort(A.abs(), dim=0, descending=True, stable=True).indices  # tie-break: |V_c x|, then row
        G, A, R = G.gather(0, order), A.gather(0, order), R.gather(0, order)
        order = torch.sort(G, dim=0, descending=True, stable=True).indices[: self.k]
        self.top_g, self.top_a, self.top_row = G.gather(0, order), A.gather(0, order), R.gather(0, order)


def _forward_inputs(lm: LanguageModel, mods: Mapping[str, Any], texts: Sequence[str], max_tokens: int
                    ) -> tuple[dict[str, Tensor], Tensor, list[list[int]]]:
    """Each module's input at the kept tokens ``[R, d_in]``, the kept mask ``[B, T]`` and each text's token ids."""
    tok = lm.tokenizer
    old = tok.padding_side
    tok.padding_side = "right"
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_tokens,
                  return_special_tokens_mask=True)
    finally:
        tok.padding_side = old
    ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)
    keep = mask.bool() & ~enc["special_tokens_mask"].to(lm.device).bool()
    with capture_inputs(mods, stop_early=True) as seen:
        try:
            lm.model(input_ids=ids, attention_mask=mask)
        except StopForward:
            pass
    missing = [n for n, v in seen.items() if not v]
    if missing:
        raise DecompositionError(f"module(s) {missing[:3]} were not called by the model's forward; label a "
                                 f"decomposition of layers this model uses")
    lengths = mask.sum(1).tolist()
    return ({n: seen[n][0][keep].float().cpu() for n in mods}, keep.cpu(),
            [row[:length] for row, length in zip(ids.tolist(), lengths)])


def _records(module: str, acc: _Acc, names: Sequence[str]) -> list[dict[str, Any]]:
    """Statistics and selectivity of each component of ``module`` (``contexts`` and ``lens`` still empty)."""
    total = acc.rows.sum()
    freq = (acc.fires.sum(0) / total).tolist()
    mean = (acc.sum_g.sum(0) / total).tolist()
    set_mean = (acc.sum_g / acc.rows[:, None]).T.tolist()  # [C][S]
    set_freq = (acc.fires / acc.rows[:, None]).T.tolist()
    rest_rows = total - acc.rows  # [S]
    rest = ((acc.sum_g.sum(0, keepdim=True) - acc.sum_g) / rest_rows.clamp_min(1)[:, None]).T.tolist()
    has_rest = (rest_rows > 0).tolist()
    out = []
    for c in range(len(freq)):
        sel = {}
        for si, s in enumerate(names):
            r = rest[c][si] if has_rest[si] else None
            mine = set_mean[c][si]
            sel[s] = {"mean_importance": mine, "firing_frequency": set_freq[c][si],
                      "difference": None if r is None else mine - r,
                      "ratio": None if r is None or r <= 0 else mine / r}
        best = None
        if len(names) > 1 and mean[c] > 0:
            best = max(names, key=lambda s: (math.inf if sel[s]["ratio"] is None else sel[s]["ratio"],
                                             sel[s]["mean_importance"]))
        out.append({"module": module, "index": c, "alive": freq[c] > 0, "firing_frequency": freq[c],
                    "mean_importance": mean[c], "selectivity": sel, "best_set": best, "contexts": [], "lens": None})
    return out


def _contexts(acc: _Acc, names: Sequence[str], r_text: Tensor, r_pos: Tensor, text_ref: Sequence[tuple[int, int]],
              piece_list: Callable[[int], list[str]], window: int) -> Callable[[int], list[dict[str, Any]]]:
    """``c -> [context, ...]``: the top contexts of component ``c`` with ``g > 0``, best first."""
    top_g, top_a, top_row = acc.top_g.T.tolist(), acc.top_a.T.tolist(), acc.top_row.T.tolist()
    texts, poss = r_text.tolist(), r_pos.tolist()

    def of(c: int) -> list[dict[str, Any]]:
        out = []
        for g, a, row in zip(top_g[c], top_a[c], top_row[c]):
            if not g > 0:
                continue
            t, p = texts[row], poss[row]
            toks = piece_list(t)
            si, idx = text_ref[t]
            out.append({"set": names[si], "text": idx, "pos": p, "token": toks[p],
                        "left": toks[max(0, p - window): p], "right": toks[p + 1: p + 1 + window],
                        "importance": g, "activation": a})
        return out
    return of


@torch.no_grad()
def label_components(lm: LanguageModel, dec: Decomposition, text_sets: Mapping[str, Sequence[str]] | None = None, *,
                     top_k: int = 10, window: int = 5, lens_k: int = 8, batch_size: int = 16,
                     max_tokens: int = 128, threshold: float | None = None, n_default: int = 128) -> ComponentLabels:
    """Statistics, top contexts, output-token lens, selectivity and a label for every component of ``dec``.

    Args:
        lm: the language model ``dec`` was made on (checked against its fingerprints).
        text_sets: name → texts (e.g. per language); ``None``: :func:`default_text_sets` (``n_default`` each).
        top_k: top contexts kept per component; ``window``: tokens shown either side of each.
        lens_k: tokens kept per side of the output-token lens.
        batch_size, max_tokens: texts per forward pass; longer texts are cut to ``max_tokens`` tokens.
        threshold: importance above which a component fires (default: the decomposition's).

    Returns:
        :class:`ComponentLabels` (save it with ``.save(folder)`` as ``components.json``).

    Raises:
        DecompositionError: bad text sets or options, a set without tokens, or ``lm`` is another model.
    """
    if top_k < 1 or window < 0 or lens_k < 1 or batch_size < 1 or max_tokens < 1:
        raise DecompositionError(f"top_k, lens_k, batch_size, max_tokens must be >= 1 and window >= 0; got {top_k}, "
                                 f"{lens_k}, {batch_size}, {max_tokens}, {window}")
    source = "user"
    if text_sets is None:
        text_sets = default_text_sets(n_default)
        source = f"Bible sentences [{DEFAULT_START}:{DEFAULT_START + n_default}] of each language (gradedit.data.corpora)"
    sets = _check_sets(text_sets)
    mods = dec.check(lm)
    thr = dec.config.fire_threshold if threshold is None else float(threshold)
    names = list(sets)
    accs = {n: _Acc(dec.infos[n].C, len(names), top_k, thr) for n in dec.modules}
    text_ids: list[list[int]] = []  # unpadded token ids of every text, in order
    text_ref: list[tuple[int, int]] = []  # (set index, index in set)
    row_text: list[Tensor] = []
    row_pos: list[Tensor] = []
    rows = 0
    with frozen(lm.model):
        for si, name in enumerate(names):
            for start in range(0, len(sets[name]), batch_size):
                xs, keep, ids = _forward_inputs(lm, mods, sets[name][start: start + batch_size], max_tokens)
                b, pos = keep.nonzero(as_tuple=True)
                row_text.append(b + len(text_ids))
                row_pos.append(pos)
                text_ids.extend(ids)
                text_ref.extend((si, start + j) for j in range(len(ids)))
                for n, x in xs.items():
                    accs[n].add(dec.importance(n, x), dec.layer(n).inner(x), si, rows)
                rows += int(b.numel())
            if not accs[dec.modules[0]].rows[si] > 0:
                raise DecompositionError(f"text set {name!r} gives no tokens (only special tokens?); give longer texts")
    logger.info("labelling %d module(s) on %d tokens of %d text set(s)", len(accs), rows, len(names))
    r_text, r_pos = torch.cat(row_text), torch.cat(row_pos)
    pieces: dict[int, list[str]] = {}

    def piece_list(t: int) -> list[str]:
        if t not in pieces:
            pieces[t] = token_pieces(lm.tokenizer, text_ids[t])
        return pieces[t]

    unembed = lm.model.get_output_embeddings().weight
    gain, norm_info = final_norm_gain(lm.model)
    vocab: dict[int, str] = {}

    def vtok(i: int) -> str:
        if i not in vocab:
            vocab[i] = vocab_piece(lm.tokenizer, i)
        return vocab[i]

    records: list[dict[str, Any]] = []
    modules_out: dict[str, Any] = {}
    lens_out: dict[str, Any] = {}
    for n, acc in accs.items():
        _, U = dec.components(n)
        D, info = write_directions(lm.model, n, U, int(unembed.shape[1]))
        lens_out[n] = info
        lens = token_lens(unembed, gain, D, lens_k) if D is not None else None
        total = float(acc.rows.sum())
        modules_out[n] = {"C": dec.infos[n].C, "rows": int(total), "alive": int((acc.fires.sum(0) > 0).sum()),
                          "mean_l0": acc.l0 / total, "threshold": thr, "lens": info["kind"]}
        ctx_of = _contexts(acc, names, r_text, r_pos, text_ref, piece_list, window)
        for rec in _records(n, acc, names):
            c = rec["index"]
            rec["contexts"] = ctx_of(c)
            if lens is not None:
                pv, pi, mv, mi = (x[c] for x in lens)
                plus = [[vtok(int(i)), float(v)] for v, i in zip(pv, pi)]
                minus = [[vtok(int(i)), float(v)] for v, i in zip(mv, mi)]
                drive = sum(ctx["importance"] * ctx["activation"] for ctx in rec["contexts"])
                sign = -1 if drive < 0 else 1
                rec["lens"] = {"kind": info["kind"], "sign": sign, "plus": plus, "minus": minus,
                               "promotes": plus if sign > 0 else minus, "suppresses": minus if sign > 0 else plus}
            rec["label"] = label_text(rec)
            records.append(rec)
    data = {
        "format": FORMAT, "model": lm.name, "decomposition_id": decomposition_id(dec.to_json()),
        "texts": {"source": source, "sets": {s: {"texts": len(sets[s]), "tokens": int(accs[dec.modules[0]].rows[i])}
                                             for i, s in enumerate(names)}},
        "settings": {"top_k": top_k, "window": window, "lens_k": lens_k, "threshold": thr, "max_tokens": max_tokens,
                     "special_tokens": "left out", "leaky_alpha": dec.config.leaky_alpha},
        "lens": {"unembedding": "get_output_embeddings().weight", "final_norm": norm_info, "modules": lens_out},
        "modules": modules_out,
        "mean_l0_per_token": sum(m["mean_l0"] for m in modules_out.values()),
        "components": records,
    }
    return ComponentLabels(data)
