"""Small word lists and templates written for gradedit's built-in features (no external data).

* ``RELIGION_SLOTS``: parallel (christian, muslim, jewish) terms, each with sentence templates
  that fit all three; ``religion_sentences`` fills them.
* ``GENDER_TEMPLATES`` and ``NAME_STOPLIST``: English sentence frames for first names, and names
  left out because they are also common words or, in the Bible, places and tribes.
* ``LANGUAGE_WORDS``: translation-equivalent words in German, English, French, Spanish, Italian
  (the slot means the same in every language; only the language differs).
* ``NEUTRAL_EXCLUDE``: per language, words a neutral sentence must not contain (definite articles
  and third-person pronouns: the words the built-in features edit).

Every template puts its slot after at least five words, so causal LMs get left context.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["GENDER_PREFIXES", "GENDER_TEMPLATES", "LANGUAGES", "LANGUAGE_WORDS", "NAME_STOPLIST", "NEUTRAL_EXCLUDE",
           "RELIGIONS", "RELIGION_PREFIXES", "RELIGION_SLOTS", "gender_sentences", "language_pairs",
           "religion_sentences", "religion_words"]

RELIGIONS = ("christian", "muslim", "jewish")

RELIGION_SLOTS: tuple[tuple[tuple[str, str, str], tuple[str, ...]], ...] = (
    (("church", "mosque", "synagogue"), (
        "Every Friday evening the whole family walked to the {} together.",
        "The new mayor promised to repair the roof of the old {} soon.",
        "Many people from the neighbourhood met in front of the {} yesterday.",
    )),
    (("churches", "mosques", "synagogues"), (
        "During the long holiday weekend the city's {} were full of visitors.",
        "The guidebook lists the most beautiful {} of the region in chapter three.",
    )),
    (("priest", "imam", "rabbi"), (
        "After the wedding ceremony the old {} thanked all the guests.",
        "The children in the village often asked the {} difficult questions.",
        "When the storm destroyed the bridge, the {} organised help for everyone.",
    )),
    (("Bible", "Quran", "Torah"), (
        "Every morning before work she read a passage from the {} aloud.",
        "The library downstairs keeps a very old copy of the {} behind glass.",
    )),
    (("Christian", "Muslim", "Jewish"), (
        "The small school at the end of our street follows {} traditions.",
        "Most of the families living in the old quarter are {} and proud of it.",
        "The author of the new novel grew up in a {} household.",
    )),
    (("Christians", "Muslims", "Jews"), (
        "In the old quarter of the city many {} lived side by side.",
        "The historian wrote a long chapter about how {} celebrated weddings.",
    )),
    (("Christianity", "Islam", "Judaism"), (
        "The professor wrote a long book about the early history of {}.",
        "At the museum there is a whole room devoted to the art of {}.",
    )),
    (("Christmas", "Ramadan", "Hanukkah"), (
        "Every year the children in our street look forward to {} very much.",
        "The whole family usually comes together for {} at my grandmother's house.",
    )),
    (("Easter", "Eid", "Passover"), (
        "The shops in the town centre close early before {} every year.",
        "My aunt always bakes something special for {} and invites the neighbours.",
    )),
    (("Gospel", "Hadith", "Talmud"), (
        "In the evening class the students read a short passage from the {} together.",
    )),
)
"""``((christian, muslim, jewish) words, templates)``; each template has one ``{}`` slot."""

RELIGION_PREFIXES = ("", "As far as I remember, ", "According to my neighbour, ", "Last year, ")
"""Prefixes that multiply the templates (the first letter of the template is lowered after one)."""


def religion_words() -> dict[str, list[str]]:
    """``{"christian": [...], "muslim": [...], "jewish": [...]}``, position-aligned across classes."""
    return {r: [words[i] for words, _ in RELIGION_SLOTS] for i, r in enumerate(RELIGIONS)}


def _prefixed(prefix: str, sentence: str) -> str:
    if not prefix:
        return sentence
    first = sentence.split(" ", 1)[0]
    keep = first in ("I",) or any(ch.isupper() for ch in first[1:])
    return prefix + (sentence if keep else sentence[:1].lower() + sentence[1:])


def religion_sentences() -> list[str]:
    """Every template × prefix × religion term of its slot: parallel sentences, deterministic order."""
    out: list[str] = []
    for words, templates in RELIGION_SLOTS:
        for template in templates:
            for prefix in RELIGION_PREFIXES:
                out.extend(_prefixed(prefix, template.format(w)) for w in words)
    return out


GENDER_TEMPLATES = (
    "After the long meeting everyone agreed that {} was right.",
    "When the results came in, the whole team congratulated {} warmly.",
    "The phone rang twice before {} finally answered it.",
    "Nobody in the office was surprised when {} got the promotion.",
    "At the end of the day {} said that the meeting was over.",
    "According to the local newspaper, {} won the chess tournament.",
    "The teacher read the list aloud and {} raised a hand.",
    "On the first day of school {} sat in the front row.",
    "Late last night the neighbours heard {} singing in the garden.",
    "Everyone at the party wanted to dance with {} after dinner.",
    "The doctor told us that {} could go home tomorrow.",
    "In the small village where I grew up, {} ran the bakery.",
    "Before the train left the station, {} bought a newspaper.",
    "The committee announced this morning that {} will lead the project.",
    "My friends and I were waiting for {} at the station.",
    "The letter on the kitchen table was from {}, as usual.",
)
"""English frames for a first name (``{}``), at least five words before it, no gendered word."""

GENDER_PREFIXES = ("",)


def gender_sentences(names: Sequence[str], seed: int = 0, per_name: int = 3) -> list[str]:
    """Each name in ``per_name`` templates chosen by ``sha256(seed, name, template)`` rank."""
    out: list[str] = []
    for name in names:
        ranked = sorted(GENDER_TEMPLATES, key=lambda t: hashlib.sha256(f"{seed}\x00{name}\x00{t}".encode()).hexdigest())
        out.extend(t.format(name) for t in ranked[:per_name])
    return out


NAME_STOPLIST = frozenset(
    # common English words that are also first names (capitalised at the start of a clause)
    "Will Mark Bill Grace Hope Joy May June April August Rose Faith Art Guy Pat Sue Rich Chance Chase Drew Jack "
    "Frank Earnest Dean Major King Prince Ray Rod Sky Summer Autumn Dawn Eve Iris Ivy Lily Daisy Holly Ruby Pearl "
    "Crystal Amber Jewel Gay Sunny Misty Melody Harmony Charity Mercy Patience Prudence Honor Constance Angel "
    "Destiny Trinity Precious Star Ginger Candy Brandy Sherry Cherry Olive Hazel Heather Fern Violet Page Sage "
    "Young Lane Wade Gale Dale Glen Cliff Forest Brook Buck Sandy Rusty Bob Don Royal Sterling Miles Lance Penny "
    "Bud Carol Christian Christ Jesus Lord Marshall Mason Hunter Taylor Carter Parker Walker Porter Tucker Bishop "
    # Bible places, nations and tribes that are also census first names
    "Israel Jordan Judah Sharon Carmel Eden Bethany Salem Sheba Dan Gad Asher Levi Benjamin Reuben Simeon Ephraim "
    "Zion Shiloh Lebanon Egypt Gilead Hebron Galilee Babylon Tyre".split()
)
"""First names left out of ``en-gender`` (also common words, Bible places/tribes, religion terms)."""

LANGUAGES = ("de", "en", "fr", "es", "it")

LANGUAGE_WORDS: tuple[dict[str, str], ...] = tuple(
    dict(zip(LANGUAGES, row.split()))
    for row in (
        "und and et y e",
        "aber but mais pero ma",
        "mit with avec con con",
        "für for pour para per",
        "wenn if si si se",
        "sehr very très muy molto",
        "wir we nous nosotros noi",
        "Gott God Dieu Dios Dio",
        "Herr Lord Seigneur Señor Signore",
        "König king roi rey re",
        "Volk people peuple pueblo popolo",
        "Sohn son fils hijo figliuolo",
        "Vater father père padre padre",
        "Mutter mother mère madre madre",
        "Bruder brother frère hermano fratello",
        "Mann man homme hombre uomo",
        "Himmel heaven ciel cielo cielo",
        "Erde earth terre tierra terra",
        "Haus house maison casa casa",
        "Stadt city ville ciudad città",
        "Wasser water eau agua acqua",
        "Tag day jour día giorno",
        "Nacht night nuit noche notte",
        "Wort word parole palabra parola",
        "Herz heart cœur corazón cuore",
        "Brot bread pain pan pane",
        "Feuer fire feu fuego fuoco",
    )
)
"""Translation-equivalent words, one concept per entry, keyed by language."""


def language_pairs(other: str) -> tuple[list[str], list[str]]:
    """Position-aligned, case-sensitive (German words, ``other``-language words): each entry of
    ``LANGUAGE_WORDS``, plus its capitalised form when both words are lower case (``Und`` ↔ ``And``);
    entries where the two words are the same in any casing are left out (``in`` ↔ ``in``)."""
    if other not in LANGUAGES or other == "de":
        raise ValueError(f"other language must be one of {[lg for lg in LANGUAGES if lg != 'de']}, got {other!r}")
    de: list[str] = []
    xx: list[str] = []
    for entry in LANGUAGE_WORDS:
        d, x = entry["de"], entry[other]
        if d.casefold() == x.casefold() or x in xx:
            continue
        de.append(d)
        xx.append(x)
        if d.islower() and x.islower():
            de.append(d.capitalize())
            xx.append(x.capitalize())
    return de, xx


NEUTRAL_EXCLUDE: dict[str, tuple[str, ...]] = {
    "de": ("der", "die", "das", "den", "dem", "des", "er", "sie", "es", "ihm", "ihn", "ihr", "ihnen", "sich"),
    "fr": ("le", "la", "les", "l", "il", "elle", "ils", "elles", "lui", "leur", "eux"),
    "es": ("el", "la", "los", "las", "él", "ella", "ellos", "ellas", "lo", "le", "les"),
    "it": ("il", "lo", "la", "i", "gli", "le", "egli", "ella", "lui", "lei", "essi", "esse", "loro"),
}
"""Language → words (any casing) a neutral sentence of that language must not contain."""
