"""The built-in features' names, languages and class ids, importable without torch or pandas.

``gradedit.data.features`` holds the recipes (and imports the whole data stack); this catalog is
what the command line needs before any of that loads: ``gradedit data build --help`` lists the
features, and ``gradedit train --classes A B`` checks the classes in milliseconds.
``tests/test_cli_checks.py`` checks that it agrees with ``features.FEATURES`` entry by entry.

>>> from gradedit.data import catalog
>>> catalog.get("en-pronouns").classes
('masc', 'fem')
>>> catalog.parse("de-articles:masc_nom-fem_nom")[1]
('masc_nom', 'fem_nom')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import wordlists
from .german import CELLS

__all__ = ["CATALOG", "NEUTRAL_LANGS", "FeatureEntry", "get", "help_text", "lang_of_classes", "names", "parse"]


@dataclass(frozen=True)
class FeatureEntry:
    """One built-in feature: ``classes`` (ids in order), extra ids ``selectable`` accepts, a one-line summary."""

    name: str
    lang: str
    classes: tuple[str, ...]
    summary: str
    selectable: tuple[str, ...] = ()

    @property
    def known(self) -> tuple[str, ...]:
        """Every class id a ``NAME:A-B`` suffix or ``--classes`` may use."""
        return (*self.classes, *self.selectable)


CATALOG: dict[str, FeatureEntry] = {e.name: e for e in (
    FeatureEntry("en-pronouns", "en", ("masc", "fem"), "he vs she (English Bibles)"),
    FeatureEntry("en-pronouns-number", "en", ("sg", "pl"), "he/she/it vs they (English Bibles)"),
    FeatureEntry("en-gender", "en", ("male", "female"), "male vs female first names (templates + Bible)"),
    FeatureEntry("de-articles", "de", CELLS, "German definite articles by gender x case cell; "
                 "pick two with de-articles:masc_nom-fem_nom"),
    FeatureEntry("language", "de", ("de", "other"), "German words vs their translations; "
                 "or one language: language:de-fr", selectable=wordlists.LANGUAGES[1:]),
    FeatureEntry("religion", "en", wordlists.RELIGIONS, "christian / muslim / jewish terms in templates"),
)}
"""Name → entry, in the order of ``features.FEATURES``."""

NEUTRAL_LANGS: tuple[str, ...] = ("en", *wordlists.NEUTRAL_EXCLUDE)
"""Languages ``features.neutral(lang)`` has neutral text for."""


def names() -> list[str]:
    """The feature names, sorted (as ``features.names()``)."""
    return sorted(CATALOG)


def get(name: str) -> FeatureEntry:
    """The entry of ``name`` (without a ``:A-B`` suffix); ValueError listing the features otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; built-in features: {', '.join(names())}") from None


def parse(name: str, classes: Sequence[str] | None = None) -> tuple[FeatureEntry, tuple[str, ...] | None]:
    """``"NAME:A-B"`` → (entry, (A, B)); the same checks and messages as ``features.parse_name``."""
    base, _, suffix = name.partition(":")
    entry = get(base)
    chosen = tuple(suffix.split("-")) if suffix else (tuple(str(c) for c in classes) if classes is not None else None)
    if chosen is None:
        return entry, None
    bad = [c for c in chosen if c not in entry.known]
    if bad:
        raise ValueError(f"unknown class(es) {bad} for feature {base!r}; known classes: {', '.join(entry.known)}")
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise ValueError(f"choose two or more different classes of {base!r}, got {list(chosen)}")
    return entry, chosen


def lang_of_classes(classes: Iterable[str]) -> tuple[str, str] | None:
    """(feature name, language) of the one built-in feature whose class ids include all ``classes``
    (how a data file written by ``data build`` tells its language); ``None`` if none or several do."""
    wanted = set(classes)
    hits = [e for e in CATALOG.values() if wanted and wanted <= set(e.known)]
    langs = {e.lang for e in hits}
    return (hits[0].name, hits[0].lang) if len(langs) == 1 else None


def help_text() -> str:
    """The features as ``gradedit data build --help`` lists them: name, classes, summary."""
    width = max(len(n) for n in CATALOG)
    lines = ["built-in features (NAME, or NAME:A-B for two of its classes):"]
    for e in CATALOG.values():
        shown = ", ".join(e.classes[:4]) + (f", ... ({len(e.classes)} cells)" if len(e.classes) > 4 else "")
        extra = f"; also {', '.join(e.selectable)}" if e.selectable else ""
        lines.append(f"  {e.name:<{width}}  [{e.lang}] classes {shown}{extra}: {e.summary}")
    return "\n".join(lines)
