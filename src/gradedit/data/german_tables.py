"""Small hand-written tables for the German article analysis: the article paradigm (16 cells),
prepositions and the cases they govern, pronoun and determiner cases, copula verbs, clause openers.

Everything here is written by hand from German grammar (no downloaded lexicon); the noun lexicon
is ``german-nouns`` (see ``gradedit.data.german``).
"""

from __future__ import annotations

__all__ = ["ARTICLE_CELLS", "CASES", "CELLS", "CELL_ARTICLE", "CONTRACTIONS", "COPULA", "GENDERS",
           "PREFERRED_CASE", "PREPOSITION_CASES", "PRONOUN_CASES", "SUBJECTLESS_OPENERS", "determiner_cases"]

GENDERS = ("masc", "fem", "neut", "pl")
CASES = ("nom", "acc", "dat", "gen")
_PARADIGM = {"masc": ("der", "den", "dem", "des"), "fem": ("die", "die", "der", "der"),
             "neut": ("das", "das", "dem", "des"), "pl": ("die", "die", "den", "der")}
CELLS: tuple[str, ...] = tuple(f"{g}_{c}" for g in GENDERS for c in CASES)
"""The 16 cells: 12 singular gender×case cells ``masc_nom`` … ``neut_gen`` and 4 plural ones
``pl_nom`` … ``pl_gen`` (German plural articles do not mark gender)."""
CELL_ARTICLE: dict[str, str] = {f"{g}_{c}": _PARADIGM[g][i] for g in GENDERS for i, c in enumerate(CASES)}
"""Cell → its definite article."""
ARTICLE_CELLS: dict[str, frozenset[str]] = {
    a: frozenset(c for c, art in CELL_ARTICLE.items() if art == a) for a in sorted(set(CELL_ARTICLE.values()))}
"""Article → the cells it can fill (``der`` → masc_nom, fem_dat, fem_gen, pl_gen)."""

_DAT, _ACC, _GEN = frozenset({"dat"}), frozenset({"acc"}), frozenset({"gen"})
_GEN_DAT = frozenset({"gen", "dat"})
PREPOSITION_CASES: dict[str, frozenset[str]] = {
    **dict.fromkeys("aus bei mit nach seit von zu gegenüber samt nebst entgegen gemäß zufolge ab "
                    "außer".split(), _DAT),
    **dict.fromkeys("durch für gegen ohne um wider bis".split(), _ACC),
    **dict.fromkeys("innerhalb außerhalb oberhalb unterhalb diesseits jenseits inmitten mittels kraft "
                    "angesichts betreffs bezüglich halber ob anhand aufgrund infolge mithilfe seitens "
                    "zugunsten anlässlich".split(), _GEN),
    # written German takes the genitive, everyday German also the dative ("wegen dem Regen")
    **dict.fromkeys("wegen während trotz statt anstatt laut dank".split(), _GEN_DAT),
    **dict.fromkeys("an auf hinter in neben über unter vor zwischen".split(), frozenset({"acc", "dat"})),
}
"""Preposition → the cases of the noun phrase it governs. Two-way prepositions (``in``, ``auf`` …)
allow acc and dat: the article and noun forms then decide (``in die`` acc, ``in der`` fem dat)."""
PREFERRED_CASE: dict[str, str] = dict.fromkeys("wegen während trotz statt anstatt laut dank".split(), "gen")
"""Prepositions with two cases where one is preferred when both readings remain."""

CONTRACTIONS: dict[str, tuple[str, str]] = {
    "am": ("an", "dem"), "ans": ("an", "das"), "im": ("in", "dem"), "ins": ("in", "das"), "zum": ("zu", "dem"),
    "zur": ("zu", "der"), "vom": ("von", "dem"), "beim": ("bei", "dem"), "aufs": ("auf", "das"),
    "durchs": ("durch", "das"), "fürs": ("für", "das"), "ums": ("um", "das"), "übers": ("über", "das"),
    "unters": ("unter", "das"), "vors": ("vor", "das"), "hinters": ("hinter", "das"),
}
"""Preposition + article contractions: not counted as articles (the ``de-articles`` feature swaps a
stand-alone article), but they open a prepositional phrase, whose noun phrase is never a subject."""

_ALL = frozenset(CASES)
_NOM, _NOM_ACC, _ACC_DAT = frozenset({"nom"}), frozenset({"nom", "acc"}), frozenset({"acc", "dat"})
PRONOUN_CASES: dict[str, frozenset[str]] = {
    **dict.fromkeys("ich du er wir man wer".split(), _NOM), "ihr": frozenset({"nom", "dat"}),
    **dict.fromkeys("sie es was".split(), _NOM_ACC), **dict.fromkeys("mich dich ihn wen".split(), _ACC),
    **dict.fromkeys("uns euch sich".split(), _ACC_DAT), **dict.fromkeys("mir dir ihm ihnen wem".split(), _DAT),
    "denen": _DAT, "dessen": _GEN, "deren": _GEN,
}
"""Lower-cased pronoun → its possible cases (``sie``/``Sie`` and ``es`` may be nom or acc)."""

COPULA = frozenset("bin bist ist sind seid war warst waren wart sei seiest seien wäre wären werde wirst wird "
                   "werden werdet wurde wurden ward bleibt blieb bleiben heißt hieß heißen".split())
"""Finite forms of sein/werden/bleiben/heißen: with no participle or infinitive in the clause they
link two nominatives (``Das ist die Frau``)."""

SUBJECTLESS_OPENERS = frozenset({"um", "ohne", "statt", "anstatt"})
"""Conjunctions opening a zu-infinitive clause (``um … zu``): such a clause has no subject."""

_EIN_ENDINGS = {"": _NOM_ACC, "e": _NOM_ACC, "en": _ACC_DAT, "em": _DAT, "er": frozenset({"dat", "gen"}),
                "es": _GEN}
_DER_ENDINGS = {"er": frozenset({"nom", "dat", "gen"}), "e": _NOM_ACC, "es": frozenset({"nom", "acc", "gen"}),
                "en": _ACC_DAT, "em": _DAT}
_EIN_STEMS = ("kein", "mein", "dein", "sein", "ihr", "unser", "euer", "eur", "ein")
_DER_STEMS = ("dies", "jed", "jen", "manch", "welch", "solch", "all")


def determiner_cases(word: str, *, pronoun: bool = True) -> frozenset[str]:
    """Cases a determiner or pronoun form can have (``einen`` → acc/dat, ``diesem`` → dat); all four
    when unknown. With ``pronoun=False`` the word is a determiner (``ihr Mann``: nom/acc)."""
    w = word.lower()
    if pronoun and w in PRONOUN_CASES:
        return PRONOUN_CASES[w]
    if w in ARTICLE_CELLS:
        return frozenset(c.split("_")[1] for c in ARTICLE_CELLS[w])
    for stem in _EIN_STEMS:
        if w.startswith(stem) and w[len(stem):] in _EIN_ENDINGS:
            return _EIN_ENDINGS[w[len(stem):]]
    for stem in _DER_STEMS:
        if w.startswith(stem) and w[len(stem):] in _DER_ENDINGS:
            return _DER_ENDINGS[w[len(stem):]]
    return _ALL
