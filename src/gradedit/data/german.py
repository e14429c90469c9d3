"""German definite articles → gender×case cells, from HanTa POS tags and ``german-nouns`` noun forms.

No German spaCy pipeline exists, so the cell of ``der/die/das/den/dem/des`` is worked out here:

1. **Tokens and tags.** The sentence is split into words (hyphenated compounds and numbers such as
   ``20.000`` stay one word) and punctuation and tagged with HanTa (STTS tags). Only tokens tagged
   ``ART`` are articles: ``der`` as a relative or demonstrative pronoun is rejected (``not_article``).
2. **Governed noun.** The head of the phrase after the article (``german_clauses.governed_noun``):
   adjectives, adverbs, numerals and one participle phrase (``der von der Stadt geplante Neubau``)
   may stand in between; a capitalised adjective with nothing after it is a nominalised adjective
   (``Der Angeklagte``); else ``no_noun``.
3. **Candidates (agreement).** The article's cells (``der`` = masc_nom, fem_dat, fem_gen, pl_gen),
   intersected with the cells of the noun's surface form in ``german-nouns`` (a compound not listed
   uses its longest listed head: ``Mathearbeit`` → ``Arbeit``; an unknown noun is ``unknown_noun``
   unless it is a nominalised adjective) and with the weak adjective endings after a definite
   article (``-e`` only in nom sg and fem/neut acc sg, ``-en`` elsewhere) of every adjective between
   article and noun, and of a nominalised adjective itself. An empty set is ``inconsistent``.
4. **Case.** A preposition before the article (contractions and a ``fast``/``rund`` in between
   included) restricts the case by ``german_tables.PREPOSITION_CASES`` (``mit`` dat, ``durch`` acc,
   two-way ``in``/``auf`` … acc or dat, ``wegen``/``laut`` gen, else dat). Otherwise: right after a
   noun the article is a genitive attribute, elsewhere it is not genitive; and the clause role from
   ``german_clauses.clause_roles`` (subject or predicate → nominative, other argument → not
   nominative). Every context rule is used only where it keeps a candidate.
5. One candidate left → that cell; several → ``ambiguous`` (rejected: precision over coverage).

Measured precision and coverage on two hand-labelled gold sets are in ``docs/data.md``.

The lexicon is read from the installed ``german-nouns`` CSV on first use (never at import) and
kept in memory and as JSON under ``gradedit``'s cache folder (written atomically; no pickle: a
cache file is data, never code). A cache that cannot be read is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import cache_dir, locked, write_text_atomic
from .._progress import progress
from ..errors import GermanMissing
from .german_clauses import NOUN_TAGS, clause_roles, governed_noun, is_preposition
from .german_tables import (
    ARTICLE_CELLS,
    CASES,
    CELL_ARTICLE,
    CELLS,
    GENDERS,
    PREFERRED_CASE,
    PREPOSITION_CASES,
)

logger = logging.getLogger(__name__)

__all__ = ["ARTICLE_CELLS", "CASES", "CELLS", "CELL_ARTICLE", "GENDERS", "ArticleAnalysis", "GermanArticleTagger",
           "GermanMissing", "NounLexicon", "PREPOSITION_CASES", "load_lexicon", "tokenize"]

INSTALL = "pip install --no-deps hanta==1.2.1 german-nouns==1.2.5"
LEXICON_FORMAT = 2  # bump when the cached lexicon layout changes (1 was a pickle: never read)
ANALYSIS_VERSION = 3  # bump when the assignment rules change (invalidates cached corpus analyses)

_CASE_COLUMNS = {"nominativ": "nom", "akkusativ": "acc", "dativ": "dat", "genitiv": "gen"}
_GENUS = {"m": "masc", "f": "fem", "n": "neut"}
_WEAK_E = frozenset({"masc_nom", "fem_nom", "fem_acc", "neut_nom", "neut_acc"})  # "der gute", else "-en"

_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:[-’']\w+)*|[^\w\s]")


def tokenize(sentence: str) -> list[tuple[str, int]]:
    """``(word, char offset)`` pairs: words (hyphenated compounds kept whole) and punctuation marks."""
    return [(m.group(0), m.start()) for m in _TOKEN.finditer(sentence)]


# -- the noun lexicon ----------------------------------------------------------------------------


class NounLexicon:
    """Noun surface form → the cells it fills after a definite article (``"Mann"`` → masc nom/acc/dat).

    Build it from ``german-nouns`` with ``load_lexicon()`` or from a small mapping for tests.
    """

    def __init__(self, forms: Mapping[str, Iterable[str]]) -> None:
        interned: dict[frozenset[str], frozenset[str]] = {}
        self.forms: dict[str, frozenset[str]] = {}
        for form, cells in forms.items():
            fs = frozenset(cells)
            bad = fs - set(CELLS)
            if bad:
                raise ValueError(f"{form!r}: unknown cells {sorted(bad)}; cells are {list(CELLS)}")
            self.forms[form] = interned.setdefault(fs, fs)

    def __len__(self) -> int:
        return len(self.forms)

    def cells(self, word: str, *, compounds: bool = True) -> frozenset[str] | None:
        """Cells of ``word``; a compound not listed uses its longest listed head (≥ 3 letters after a
        ≥ 3-letter modifier, hyphenated parts included: ``Mathearbeit`` → ``Arbeit``; a 2-letter
        modifier gave false heads such as ``W|agens``); None when unknown."""
        hit = self.forms.get(word)
        if hit is not None or not compounds:
            return hit
        for i in range(3, len(word) - 2):
            tail = word[i:].lstrip("-")
            head = tail[:1].upper() + tail[1:]
            if len(head) >= 3 and head in self.forms:
                return self.forms[head]
        return None

    @classmethod
    def from_csv(cls, path: Path) -> NounLexicon:
        """Parse ``german-nouns``' ``nouns.csv``: per row the gender columns (``genus`` for all forms,
        or ``genus N`` for the singular variant columns ``N``) and the 8 case×number columns with
        their variants; the weak declension is used for adjectival nouns (after a definite article)."""
        import csv

        forms: dict[str, set[str]] = {}
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            columns: list[tuple[int, str, bool, int | None]] = []  # (index, case, plural, variant number or None)
            for i, name in enumerate(header):
                parts = name.split()
                if len(parts) >= 2 and parts[0] in _CASE_COLUMNS and parts[1].rstrip("*") in ("singular", "plural"):
                    variant = parts[2] if len(parts) > 2 else ""
                    if variant in ("stark", "gemischt"):
                        continue  # strong/mixed adjectival forms follow ein/kein or no article
                    columns.append((i, _CASE_COLUMNS[parts[0]], parts[1].startswith("plural"),
                                    int(variant) if variant.isdigit() else None))
            genus_at = header.index("genus")
            numbered = [header.index(f"genus {n}") for n in range(1, 5)]
            for row in reader:
                if len(row) != len(header):
                    continue
                main = _GENUS.get(row[genus_at])
                by_variant = {n + 1: _GENUS.get(row[j]) for n, j in enumerate(numbered)}
                all_genders = {g for g in [main, *by_variant.values()] if g}
                for i, case, plural, variant_no in columns:
                    form = row[i]
                    if not form or " " in form or not form[0].isalpha():
                        continue
                    if plural:
                        cells = {f"pl_{case}"}
                    else:
                        genders = {main} if main else ({by_variant[variant_no]}
                                                       if variant_no and by_variant.get(variant_no)
                                                       else all_genders)
                        cells = {f"{g}_{case}" for g in genders if g}
                    if cells:
                        forms.setdefault(form, set()).update(cells)
        return cls(forms)


def _find_package_file(module: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(module)
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc, *parts)
        if path.is_file():
            return path
    raise GermanMissing(f"{module} is not installed (or lacks {'/'.join(parts)}); install it with:\n    {INSTALL}")


@functools.lru_cache(maxsize=1)
def load_lexicon(cache: bool = True) -> NounLexicon:
    """The ``german-nouns`` lexicon (102k nouns), parsed once per process; with ``cache`` also kept as
    JSON in ``<gradedit cache>/morphology/`` keyed by the package version (rebuilt when unreadable)."""
    csv_path = _find_package_file("german_nouns", "nouns.csv")
    version = importlib.metadata.version("german-nouns")
    path = cache_dir() / "morphology" / f"german-nouns-{version}-v{LEXICON_FORMAT}.json"
    if cache and path.is_file():
        try:
            return _lexicon_from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            logger.warning("rebuilding the unreadable lexicon cache %s (%s: %s)", path, type(err).__name__, err)
    lexicon = NounLexicon.from_csv(csv_path)
    logger.info("parsed %d noun forms from %s", len(lexicon), csv_path)
    if cache:
        _write_cache(path, _lexicon_to_json(lexicon))
    return lexicon


def _lexicon_to_json(lexicon: NounLexicon) -> dict[str, object]:
    """``{"format", "sets": [sorted cells, ...], "forms": {form: index into sets}}`` (each cell set once)."""
    index: dict[frozenset[str], int] = {}
    forms = {form: index.setdefault(cells, len(index)) for form, cells in lexicon.forms.items()}
    return {"format": LEXICON_FORMAT, "sets": [sorted(c) for c in index], "forms": forms}


def _lexicon_from_json(obj: dict[str, Any]) -> NounLexicon:
    if obj.get("format") != LEXICON_FORMAT:
        raise ValueError(f"format {obj.get('format')!r}, expected {LEXICON_FORMAT}")
    sets = [frozenset(c) for c in obj["sets"]]
    return NounLexicon({form: sets[i] for form, i in obj["forms"].items()})


def _write_cache(path: Path, obj: object) -> None:
    """Write ``obj`` as compact JSON to ``path`` atomically (temp file + rename) under a file lock."""
    with locked(path):
        write_text_atomic(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


# -- tagging and assignment ----------------------------------------------------------------------


@dataclass(frozen=True)
class ArticleAnalysis:
    """One occurrence of der/die/das/den/dem/des: its offset, the cell (None when rejected), the
    cells still possible, the governed noun and why it was rejected (``""`` when assigned)."""

    offset: int
    article: str
    cell: str | None
    candidates: tuple[str, ...]
    noun: str | None
    reason: str


class GermanArticleTagger:
    """Assign German definite articles to gender×case cells (see the module docstring).

    Args:
        lexicon: a ``NounLexicon``; default ``load_lexicon()`` (loaded on first use).
        tag: ``tag(words) -> tags`` (STTS, HanTa spelling such as ``VV(FIN)``); default HanTa.
    """

    def __init__(self, lexicon: NounLexicon | None = None,
                 tag: Callable[[list[str]], Sequence[str]] | None = None) -> None:
        self._lexicon = lexicon
        self._tag = tag
        self._default = lexicon is None and tag is None  # only default analyses go to the disk cache
        self.analyze = functools.lru_cache(maxsize=65536)(self._analyze)

    @property
    def lexicon(self) -> NounLexicon:
        if self._lexicon is None:
            self._lexicon = load_lexicon()
        return self._lexicon

    def tags(self, words: Sequence[str]) -> list[str]:
        if self._tag is None:
            self._tag = _hanta()
        return list(self._tag(list(words))) if words else []

    def analyze_many(self, sentences: Sequence[str], *, cache: bool = True) -> list[tuple[ArticleAnalysis, ...]]:
        """``analyze`` for every sentence (progress bar). With the default lexicon and tagger and
        ``cache``, the result is stored under ``<gradedit cache>/morphology/`` keyed by a hash of the
        sentences, the HanTa and german-nouns versions and ``ANALYSIS_VERSION``."""
        path = self._cache_path(sentences) if cache and self._default else None
        if path is not None and path.is_file():
            try:
                cached = [tuple(ArticleAnalysis(int(o), str(a), c, tuple(cs), n, str(r)) for o, a, c, cs, n, r in row)
                          for row in json.loads(path.read_text(encoding="utf-8"))]
                if len(cached) == len(sentences):
                    return cached
                raise ValueError(f"{len(cached)} rows for {len(sentences)} sentences")
            except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
                logger.warning("rebuilding the unreadable analysis cache %s (%s: %s)", path, type(err).__name__, err)
        out = [self._analyze(s) for s in progress(sentences, desc="german articles", unit="sent",
                                                  disable=len(sentences) < 2000)]
        if path is not None:
            _write_cache(path, [[[a.offset, a.article, a.cell, list(a.candidates), a.noun, a.reason] for a in row]
                                for row in out])
        return out

    @staticmethod
    def _cache_path(sentences: Sequence[str]) -> Path | None:
        try:
            versions = [importlib.metadata.version(p) for p in ("hanta", "german-nouns")]
        except importlib.metadata.PackageNotFoundError:
            return None
        h = hashlib.sha256(json.dumps([ANALYSIS_VERSION, LEXICON_FORMAT, *versions]).encode())
        for s in sentences:
            h.update(s.encode() + b"\x00")
        return cache_dir() / "morphology" / f"de-articles-{h.hexdigest()[:24]}.json"

    def cell_at(self, sentence: str, offset: int) -> str | None:
        """The cell of the article starting at ``offset`` (None when rejected or no article there)."""
        for a in self.analyze(sentence):
            if a.offset == offset:
                return a.cell
        return None

    def _analyze(self, sentence: str) -> tuple[ArticleAnalysis, ...]:
        toks = tokenize(sentence)
        if not any(w.lower() in ARTICLE_CELLS for w, _ in toks):
            return ()
        words = [w for w, _ in toks]
        tags = self.tags(words)
        found = {i: self._agreement(words, tags, i) for i, w in enumerate(words) if w.lower() in ARTICLE_CELLS}
        roles = clause_roles(words, tags, {i: (j, c) for i, (j, c, _, why) in found.items() if not why})
        return tuple(_decide(words, tags, i, toks[i][1], *found[i], roles.get(i)) for i in found)

    def _agreement(self, words: list[str], tags: list[str], i: int
                   ) -> tuple[int, frozenset[str], str | None, str]:
        """``(head index, candidate cells, noun, reason)`` from the article, noun and adjectives alone."""
        art = words[i].lower()
        if tags[i] != "ART":
            return i, frozenset(), None, "not_article"
        head = governed_noun(words, tags, i)
        if head is None:
            return i, frozenset(), None, "no_noun"
        j, adjectives = head
        noun = words[j]
        noun_cells = self.lexicon.cells(noun) if tags[j] in NOUN_TAGS else None
        if noun_cells is None and tags[j] in NOUN_TAGS and tags[j] != "NNA":
            return j, frozenset(), noun, "unknown_noun"
        if noun_cells is None:  # a nominalised adjective: its own ending agrees, gender unknown
            noun_cells, adjectives = frozenset(CELLS), [*adjectives, j]
        cands = ARTICLE_CELLS[art] & noun_cells
        for k in adjectives:
            adj = words[k].lower()
            if adj.endswith("en"):
                cands -= _WEAK_E
            elif adj.endswith("e"):
                cands &= _WEAK_E
        return j, cands, noun, "" if cands else "inconsistent"


def _decide(words: list[str], tags: list[str], i: int, offset: int, j: int, cands: frozenset[str],
            noun: str | None, reason: str, role: str | None) -> ArticleAnalysis:
    """Narrow ``cands`` by the preposition, the genitive position and the clause role."""
    def result(final: Iterable[str], why: str = "") -> ArticleAnalysis:
        ordered = tuple(c for c in CELLS if c in set(final))
        cell = ordered[0] if len(ordered) == 1 and not why else None
        return ArticleAnalysis(offset, words[i], cell, ordered, noun, why or ("" if cell else "ambiguous"))

    if reason:
        return result(cands, reason)
    k = i - 1
    while k > 0 and k >= i - 2 and tags[k] == "ADV" and is_preposition(words, tags, k - 1):
        k -= 1  # "um fast die Hälfte"
    prep = words[k].lower() if k >= 0 and is_preposition(words, tags, k) else None
    if prep is not None and prep in PREPOSITION_CASES:
        kept = {c for c in cands if _case(c) in PREPOSITION_CASES[prep]}
        if not kept:
            return result((), "inconsistent")
        return result(_soft(kept, {PREFERRED_CASE[prep]}) if prep in PREFERRED_CASE else kept)
    if prep is not None:  # an unlisted preposition ("als", "wie", "per" …): no evidence
        return result(cands)
    after_noun = i > 0 and tags[i - 1] in NOUN_TAGS
    kept = _soft(cands, {"gen"}) if after_noun else set(cands) if role == "frag" else _soft(cands, {"nom", "acc", "dat"})
    if role in ("subj", "pred"):
        kept = _soft(kept, {"nom"})
    elif role == "obj":
        kept = _soft(kept, {"acc", "dat", "gen"})
    return result(kept)


def _case(cell: str) -> str:
    return cell.split("_")[1]


def _soft(cands: set[str] | frozenset[str], cases: set[str]) -> set[str]:
    """``cands`` restricted to ``cases``, unless that leaves nothing."""
    kept = {c for c in cands if _case(c) in cases}
    return kept or set(cands)


def _hanta():
    """HanTa's German tagger as ``tag(words) -> tags``; its per-word analysis is memoised."""
    try:
        from HanTa import HanoverTagger as ht
    except ImportError as err:
        raise GermanMissing(f"the German article analysis needs HanTa; install it with:\n    {INSTALL}") from err
    tagger = ht.HanoverTagger("morphmodel_ger.pgz")
    # analyze_forward is a pure function of the word; memoising it makes corpus tagging ~2x faster
    tagger.analyze_forward = functools.lru_cache(maxsize=200_000)(tagger.analyze_forward)
    return lambda words: tagger.tag_sent(words, taglevel=0)
