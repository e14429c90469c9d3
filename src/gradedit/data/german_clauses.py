"""Clause roles for German noun phrases: which article phrases are the subject of their clause.

Works on STTS tags (HanTa spelling, ``VV(FIN)``). A sentence is cut into clauses at punctuation and
at ``und``/``oder`` before a finite verb (``… und warf die Vase um``: no subject of its own). In each
clause the **arguments** are the noun phrases and pronouns outside prepositional phrases (contractions
such as ``im``/``zum`` included) and outside genitive attributes; coordinated ones (``X und Y``) share
a role. Each argument's possible cases come from its article cells, its determiner's ending or the
pronoun (``PRONOUN_CASES``). The role of an argument that can be nominative is then, in this order:

1. ``obj`` in a clause without a subject of its own (``um … zu``, zu-infinitives, a verb after
   ``und``, an imperative, the main clause after a ``Wer …,`` clause);
2. ``pred`` (nominative) in a copula clause (``ist``/``wird``/``bleibt`` with no participle or
   infinitive);
3. ``obj`` when another argument is nominative only (``der Rat``, ``ich``, ``man``, ``wer``), or when
   its number contradicts the finite verb's (``Die Kosten … schätzt``) and it is not coordinated;
4. the **subject slot** by word order: the phrase before the finite verb of a main clause (or, when
   that cannot be the subject, the first one after the verb); the first one after the verb when the
   clause opens with an adverb, a prepositional phrase or a subordinate clause; the first one after
   ``dass``/``weil``/``wie`` …; after a relative pronoun that is not nominative (``für die``,
   ``den``). The slot is ``subj``, every other argument ``obj``. A slot taken by ``sie``/``es``
   (nominative or accusative) decides nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .german_tables import CONTRACTIONS, COPULA, PREPOSITION_CASES, SUBJECTLESS_OPENERS, determiner_cases

__all__ = ["FINITE", "NOUN_TAGS", "NP_INSIDE", "Argument", "clause_roles", "governed_noun", "is_preposition",
           "verb_is_plural"]

FINITE = ("VV(FIN)", "VA(FIN)", "VM(FIN)")
NOUN_TAGS = ("NN", "NE", "NNA")
NP_INSIDE = ("ADJ(A)", "ADJ(D)", "ADV", "CARD", "PIAT", "PTKNEG")
_DETERMINERS = ("ART", "PPOSAT", "PDAT", "PIAT", "PWAT", "PRELAT")
_PRONOUNS = ("PPER", "PIS", "PWS", "PDS", "PRF", "PPOSS")
_NONFINITE = ("VV(PP)", "VA(PP)", "VM(PP)", "VV(INF)", "VA(INF)", "VM(INF)", "VV(IZU)", "PTKZU")
_TIME_AFTER = frozenset({"später", "früher", "zuvor", "danach", "darauf", "vorher", "lang"})
_TIME_NOUNS = frozenset("Morgen Vormittag Mittag Nachmittag Abend Nacht Tag Woche Wochenende Monat Jahr Montag "
                        "Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag".split())  # bare: adverbials
_KON = frozenset({"und", "oder", "sowie", "bzw", "beziehungsweise", "sondern"})


@dataclass(frozen=True)
class Argument:
    """A noun phrase or pronoun of a clause: tokens ``start..end``, possible cases, plural (None when
    unknown) and the coordination group it belongs to."""

    start: int
    end: int
    cases: frozenset[str]
    plural: bool | None
    group: int


def verb_is_plural(word: str) -> bool:
    """Whether a finite verb form is plural (``-en``, ``-ern``, ``-eln``, ``sind``); 1st/3rd person."""
    w = word.lower()
    return w == "sind" or w.endswith(("en", "ern", "eln"))


def governed_noun(words: Sequence[str], tags: Sequence[str], i: int) -> tuple[int, list[int]] | None:
    """The head of the noun phrase opened by the determiner at ``i`` and the inflected adjectives
    before it: ``(noun index, adjective indices)``. Adjectives, adverbs, numerals and commas between
    adjectives may stand in between, and one participle phrase (``der von der Stadt geplante
    Neubau``). A capitalised adjective with no noun after it is a nominalised adjective and is its own
    head (``Der Angeklagte``). None when there is no head."""
    j, adjectives = i + 1, list[int]()
    n = len(words)
    while j < n and j <= i + 7:
        t = tags[j]
        if t in NP_INSIDE or (words[j] == "," and adjectives and j + 1 < n and tags[j + 1] == "ADJ(A)"):
            if t == "ADJ(A)":
                adjectives.append(j)
            j += 1
        elif t in ("APPR", "APPRART") and not adjectives:  # "die im vergangenen Jahr eingeführte Regel"
            k = j + 1
            while k < n and k <= j + 8 and tags[k] not in FINITE and not tags[k].startswith("$"):
                if tags[k] in ("ADJ(A)", "VV(PP)") and k + 1 < n and tags[k + 1] in NOUN_TAGS and k > j + 1:
                    return k + 1, [k]
                k += 1
            return None
        else:
            break
    if j < n and tags[j] in NOUN_TAGS and words[j][:1].isupper():
        return j, adjectives
    if adjectives and adjectives[-1] == j - 1 and words[j - 1][:1].isupper() and j - 1 > i:
        return j - 1, adjectives[:-1]  # nominalised adjective: "Die Reichen zahlen"
    return None


def is_preposition(words: Sequence[str], tags: Sequence[str], k: int) -> bool:
    """Whether token ``k`` is a preposition: tagged one, a contraction, or ``während``/``seit``/``bis``
    tagged as a conjunction but followed by a noun phrase and then directly by a finite verb
    (``Während der Pause tranken …``)."""
    if tags[k] in ("APPR", "APPRART", "APPO") or words[k].lower() in CONTRACTIONS:
        return True
    if (tags[k] == "KOUS" and words[k].lower() in PREPOSITION_CASES and k + 1 < len(words) and tags[k + 1] == "ART"
            and words[k + 1].lower() in ("der", "des", "dem", "den")):  # "während die …" is the conjunction
        head = governed_noun(words, tags, k + 1)
        return head is not None and head[0] + 1 < len(words) and tags[head[0] + 1] in FINITE
    return False


def _phrase_end(words: Sequence[str], tags: Sequence[str], k: int, hi: int,
                known: Mapping[int, tuple[int, frozenset[str]]]) -> int:
    """Last token of the noun phrase starting at ``k`` (with genitive attributes); ``k`` if none."""
    if k in known:
        end = known[k][0]
    elif tags[k] in _DETERMINERS:
        head = governed_noun(words, tags, k)
        end = head[0] if head is not None else k
    else:
        end = k
        while end + 1 < hi and tags[end + 1] in ("ADJ(A)", "CARD", *NOUN_TAGS) and tags[end] not in NOUN_TAGS[:2]:
            end += 1
    while end + 1 < hi and tags[end + 1] == "NE":  # "FC Bayern", "Deutsche Bahn"
        end += 1
    nxt = end + 1
    while nxt < hi and tags[nxt] == "ART" and tags[end] in NOUN_TAGS:  # genitive attribute: "… der Stadt"
        cases = known[nxt][1] if nxt in known else determiner_cases(words[nxt])
        if "gen" not in {c.split("_")[-1] for c in cases}:
            break
        end = _phrase_end(words, tags, nxt, hi, known)
        nxt = end + 1
    return min(end, hi - 1)


def _arguments(words: Sequence[str], tags: Sequence[str], lo: int, hi: int,
               known: Mapping[int, tuple[int, frozenset[str]]]) -> list[Argument]:
    out: list[Argument] = []
    k = lo
    while k < hi:
        t = tags[k]
        if is_preposition(words, tags, k) or t == "KOKOM":
            k += 1
            while k < hi and tags[k] in ("ADV", "APPR"):  # "um fast die Hälfte", "bis zu dem"
                k += 1
            if k < hi and (tags[k] in _DETERMINERS or tags[k] in NOUN_TAGS or tags[k] in NP_INSIDE):
                k = _phrase_end(words, tags, k, hi, known) + 1
            continue
        if t in _DETERMINERS or t in NOUN_TAGS or t in _PRONOUNS or t == "PRELS":
            end = _phrase_end(words, tags, k, hi, known) if t not in _PRONOUNS and t != "PRELS" else k
            if t in _DETERMINERS and end == k:  # a determiner without a noun
                k += 1
                continue
            if t in NOUN_TAGS and words[end] in _TIME_NOUNS or (
                    end + 1 < hi and words[end + 1].lower() in _TIME_AFTER):  # "heute Abend", "ein Jahr später"
                k = end + 2
                continue
            if k in known:
                cells = known[k][1]
                cases = frozenset(c.split("_")[1] for c in cells)
                plural: bool | None = all(c.startswith("pl_") for c in cells) or (
                    False if not any(c.startswith("pl_") for c in cells) else None)
            elif t in NOUN_TAGS:
                cases, plural = frozenset({"nom", "acc", "dat"}), None
            else:
                cases, plural = determiner_cases(words[k], pronoun=t not in _DETERMINERS), None
            group = len(out)
            if out and k >= 1 and words[k - 1].lower() in _KON and out[-1].end == k - 2:
                group = out[-1].group
            out.append(Argument(k, end, cases, plural, group))
            k = end + 1
            continue
        k += 1
    return out


def _segments(words: Sequence[str], tags: Sequence[str]) -> list[tuple[int, int, bool]]:
    """``(lo, hi, shared)`` spans between punctuation; a verb right after und/oder opens a span with a
    shared (elided) subject."""
    spans, lo = [], 0
    for k in range(len(words) + 1):
        if k == len(words) or tags[k].startswith("$"):
            if k > lo:
                cut = [m for m in range(lo + 1, k - 1) if tags[m] == "KON" and tags[m + 1] in FINITE]
                bounds = [lo, *cut, k]
                for a, b in zip(bounds, bounds[1:]):
                    spans.append((a, b, a != lo))
            lo = k + 1
    return spans


def clause_roles(words: Sequence[str], tags: Sequence[str],
                 known: Mapping[int, tuple[int, frozenset[str]]]) -> dict[int, str]:
    """Role of each noun phrase starting at an index of ``known`` (article index → (head index,
    candidate cells)): ``subj``, ``pred`` (nominative), ``obj`` (not nominative), ``frag`` (a clause
    without a finite verb) or missing when the clause gives no evidence. See the module docstring."""
    roles: dict[int, str] = {}
    question = "?" in words[-3:] if words else False
    spans = _segments(words, tags)
    pending: Argument | None = None  # a sentence-opening phrase interrupted by a relative clause
    after_wer = False
    for lo, hi, shared in spans:
        while lo < hi and tags[lo] == "KON":
            lo += 1
        if lo >= hi:
            continue
        args = _arguments(words, tags, lo, hi, known)
        finite = [k for k in range(lo, hi) if tags[k] in FINITE]
        first = tags[lo]
        kind = "main"
        if shared or (first == "KOUI" and words[lo].lower() in SUBJECTLESS_OPENERS):
            kind = "none"
        elif (first == "KOUS" and not is_preposition(words, tags, lo)) or (
                words[lo].lower() in ("als", "wie") and finite and finite[-1] == hi - 1):
            kind = "sub"  # "Als die Ampel auf Grün sprang": "als" is often tagged APPR
        elif first == "PRELS" or (first == "APPR" and lo + 1 < hi and tags[lo + 1] in ("PRELS", "PRELAT")):
            kind = "rel"
        elif first in ("PWS", "PWAV", "PWAT"):
            kind = "main" if (question and finite and finite[0] == lo + 1) else "sub"
        elif not finite:
            # a zu-infinitive has no subject; a bare infinitive may be a mis-tagged plural verb
            kind = "none" if any(tags[k] in ("VV(IZU)", "PTKZU") for k in range(lo, hi)) else "fragment"
        elif finite[0] == lo:
            kind = "v1"
        verb = (finite[-1] if kind in ("sub", "rel") else finite[0]) if finite else None
        plural_verb = verb_is_plural(words[verb]) if verb is not None else None
        copula = verb is not None and words[verb].lower() in COPULA and not any(
            tags[k] in _NONFINITE for k in range(lo, hi))

        can_subj = functools.partial(_can_subj, plural_verb=plural_verb)

        slot: Argument | None = None
        subjectless = kind == "none"
        if kind == "main" and verb is not None:
            pre = [a for a in args if a.end < verb]
            post = [a for a in args if a.start > verb]
            if pre and words[pre[0].start].lower() != "es" and tags[pre[0].start] != "PWS":
                slot = pre[0] if can_subj(pre[0]) else _first(post, can_subj)
            elif first in ("PWS",) and "nom" in args[0].cases and words[lo].lower() == "wer":
                slot = args[0]
            else:
                slot = _first(post, can_subj)
        elif kind == "v1" and verb is not None:
            post = [a for a in args if a.start > verb]
            if pending is not None:
                slot, subjectless = None, True
                roles.update(_roles_of([pending], None, False, False, set(), lambda a: True, pending))
            elif after_wer:
                subjectless = True
            elif (lo == 0 or words[lo - 1] == ":" or words[-1] == "!") and not question:  # imperative
                pron = post[0] if post and post[0].start == verb + 1 and tags[verb + 1] == "PPER" else None
                slot, subjectless = pron, pron is None
            else:
                slot = _first(post, can_subj)
        elif kind == "sub":
            post = [a for a in args if a.start > lo]
            slot = _first(post, can_subj)
        elif kind == "rel":
            rel = lo + 1 if first == "APPR" else lo
            if first == "APPR" or "nom" not in determiner_cases(words[rel]):
                slot = _first([a for a in args if a.start > rel], can_subj)
        pending = args[0] if kind == "fragment" and lo == 0 and len(args) == 1 and args[0].start == 0 else (
            pending if kind == "rel" else None)
        after_wer = words[lo].lower() == "wer" and kind == "sub"
        if slot is not None and slot.start == slot.end and tags[slot.start] == "PPER" and words[slot.start] in ("sie", "es"):
            slot = None  # "dass sie die Frau …": sie may be the object
        definite_nom = {a.group for a in args if a.cases == frozenset({"nom"})}
        if kind == "fragment":  # no finite verb: no evidence (and no "not genitive" either)
            roles.update({a.start: "frag" for a in args})
        else:
            roles.update(_roles_of(args, slot, subjectless, copula, definite_nom, can_subj, None))
    return {k: r for k, r in roles.items() if k in known}


def _can_subj(a: Argument, *, plural_verb: bool | None) -> bool:
    """Whether ``a`` may be the subject: nominative possible, and not plural with a singular verb (the
    converse is no evidence: ``weder er, noch das Volk hörten``)."""
    if "nom" not in a.cases:
        return False
    return not (a.plural and plural_verb is False)


def _first(args: Sequence[Argument], ok: Callable[[Argument], bool]) -> Argument | None:
    for a in args:
        if ok(a):
            return a
    return None


def _roles_of(args: Sequence[Argument], slot: Argument | None, subjectless: bool, copula: bool,
              definite_nom: set[int], can_subj: Callable[[Argument], bool],
              forced: Argument | None) -> dict[int, str]:
    out = {}
    for a in args:
        if forced is not None:
            out[a.start] = "subj"
        elif "nom" not in a.cases:
            out[a.start] = "obj"
        elif subjectless:
            out[a.start] = "obj"
        elif copula:
            out[a.start] = "pred"
        elif definite_nom - {a.group} or not can_subj(a):
            out[a.start] = "obj"
        elif slot is not None:
            out[a.start] = "subj" if a.group == slot.group else "obj"
    return out
