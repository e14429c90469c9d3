"""Texts of the write-vector redirect study: where a context class occurs (fire positions), the disjoint
text sets, and the few-shot fit examples.

A *context class* is a regular expression over characters (e.g. ``;``: semicolons). In a text,
a **fire position** is the index ``p`` of the token that holds the last character of a match (found
through the fast tokenizer's offset mapping) and has a next token (``p + 1`` exists). The study wants
the model to predict a chosen target token at fire positions, i.e. ``P(target | ids[: p + 1])``.

Passages are windows of consecutive sentences (so a mark ending a sentence, e.g. ``?``, has a
continuation). A *class* passage has at least one fire position; an *unrelated* passage has no
match at all. Both pools are shuffled with the seed and cut into disjoint sets:

- class: ``evaluation`` (held out, read by nothing but the final measurement), ``selection`` (choose
  the component and orient its sign), ``fit`` (the few-shot examples come from here);
- unrelated: ``unrelated_eval`` (global KL), ``unrelated_selection`` (an "other" set when choosing),
  ``unrelated_fit`` (the KL term of every trained edit).

A fit :class:`Example` is a fit passage cut right after one fire token, with the target appended:
``"Who is he? o"``; the target is scored at the fire position, the other positions get the KL term.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..edits.fitting import text_tokens as count_text_ids
from ..errors import DataError
from ..models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["Example", "StudyTexts", "display_tokens", "fire_positions", "fit_examples", "passages",
           "split_texts", "text_tokens"]


def _encode(lm: LanguageModel, text: str) -> dict[str, Any]:
    try:
        return dict(lm.tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True))
    except NotImplementedError as err:  # slow (Python) tokenizers have no offset mapping
        raise DataError(f"{lm.name}'s tokenizer gives no character offsets; the redirect study needs a fast "
                        "tokenizer (transformers' *TokenizerFast)") from err


def fire_positions(lm: LanguageModel, text: str, pattern: str | re.Pattern[str]) -> list[int]:
    """Token indices ``p`` (into ``lm.tokenizer(text)["input_ids"]``) that hold the last character of a
    match of ``pattern`` and are followed by another token; sorted, without duplicates.

    Special tokens never fire. A match whose last character lies in no token (e.g. trimmed
    whitespace) is skipped."""
    pat = re.compile(pattern) if isinstance(pattern, str) else pattern
    enc = _encode(lm, text)
    offsets, special = enc["offset_mapping"], enc["special_tokens_mask"]
    n = len(enc["input_ids"])
    out: set[int] = set()
    for m in pat.finditer(text):
        if m.end() == m.start():
            continue
        c = m.end() - 1
        holders = [p for p, ((s, e), sp) in enumerate(zip(offsets, special)) if not sp and s <= c < e]
        if holders and holders[-1] + 1 < n:
            out.add(holders[-1])
    return sorted(out)


def display_tokens(lm: LanguageModel, text: str) -> list[str]:
    """One display string per token of ``text``: its characters with the whitespace before them, so
    that the strings concatenate back to the text; special tokens show as their vocabulary piece."""
    enc = _encode(lm, text)
    pieces = lm.tokenizer.convert_ids_to_tokens(enc["input_ids"])
    out, prev = [], 0
    for (_s, e), sp, piece in zip(enc["offset_mapping"], enc["special_tokens_mask"], pieces):
        if sp:
            out.append(str(piece))
            continue
        out.append(text[prev:max(prev, e)])  # "" for a later piece of a character split over tokens
        prev = max(prev, e)
    return out


def text_tokens(lm: LanguageModel, text: str) -> int:
    """Tokens of ``text`` that are text (not BOS/EOS/padding; ``<unk>`` counts)."""
    return count_text_ids(lm, lm.tokenizer(text)["input_ids"])


def passages(source: str, *, lang: str = "en", window: int = 3, start: int = 0, stop: int | None = None) -> list[str]:
    """Non-overlapping windows of ``window`` consecutive sentences of ``sentences[start:stop]``.

    ``source``: ``"bible"`` (the default translation of ``lang``), ``"tiny"`` (the tiny test corpus) or
    the path of a UTF-8 file with one text per line (taken as passages, ``window`` ignored)."""
    if window < 1:
        raise DataError(f"window must be >= 1 sentence, got {window}")
    if source == "bible":
        from ..data import corpora

        sents = corpora.sentences(lang)
    elif source == "tiny":
        from ..models.zoo.tiny import tiny_corpus

        sents = tiny_corpus(0)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"text source {source!r} is neither 'bible', 'tiny' nor a file; give one of them")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return lines[start:stop]
    sents = list(sents[start:stop])
    return [" ".join(sents[i:i + window]) for i in range(0, len(sents) - window + 1, window)]


@dataclass
class StudyTexts:
    """The study's disjoint text sets (see the module docstring) and each class text's fire positions."""

    selection: list[str]
    fit: list[str]
    evaluation: list[str]
    unrelated_selection: list[str]
    unrelated_fit: list[str]
    unrelated_eval: list[str]
    fires: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def fires_of(self, texts: Sequence[str]) -> list[list[int]]:
        """Fire positions of each of ``texts`` (class texts of this study)."""
        return [self.fires[t] for t in texts]

    def sizes(self, lm: LanguageModel) -> dict[str, dict[str, int]]:
        """Per set: texts, text tokens and fire positions."""
        out = {}
        for name in ("selection", "fit", "evaluation", "unrelated_selection", "unrelated_fit", "unrelated_eval"):
            ts = getattr(self, name)
            out[name] = {"texts": len(ts), "tokens": sum(text_tokens(lm, t) for t in ts),
                         "fire_positions": sum(len(self.fires.get(t, [])) for t in ts)}
        return out


def split_texts(lm: LanguageModel, pool: Sequence[str], pattern: str, *, n_eval: int, n_selection: int, n_fit: int,
                n_unrelated: tuple[int, int, int], seed: int = 0) -> StudyTexts:
    """Sort ``pool`` into class and unrelated passages and cut them into the six disjoint sets.

    ``n_unrelated``: (evaluation, selection, fit) sizes of the unrelated sets.

    Raises:
        DataError: too few class or unrelated passages for the requested sizes.
    """
    pat = re.compile(pattern)
    cls_texts, fires, other = [], {}, []
    for t in dict.fromkeys(pool):  # exact duplicates once
        if pat.search(t) is None:
            other.append(t)
            continue
        f = fire_positions(lm, t, pat)
        if f:
            cls_texts.append(t)
            fires[t] = f
    rng = random.Random(seed)
    rng.shuffle(cls_texts)
    rng.shuffle(other)
    need, need_o = n_eval + n_selection + n_fit, sum(n_unrelated)
    if len(cls_texts) < need or len(other) < need_o:
        raise DataError(f"the text pool has {len(cls_texts)} passages with {pattern!r} and {len(other)} without; "
                        f"the study needs {need} and {need_o}: lower the set sizes or give more text")
    ev, sel, fit = cls_texts[:n_eval], cls_texts[n_eval:n_eval + n_selection], cls_texts[n_eval + n_selection:need]
    a, b = n_unrelated[0], n_unrelated[0] + n_unrelated[1]
    texts = StudyTexts(sel, fit, ev, other[a:b], other[b:need_o], other[:a],
                       {t: fires[t] for t in ev + sel + fit})
    logger.info("redirect texts: %d class passages (%d eval / %d selection / %d fit), %d unrelated", len(cls_texts),
                n_eval, n_selection, n_fit, len(other))
    return texts


@dataclass(frozen=True)
class Example:
    """One few-shot fit example.

    Attributes:
        text: a fit passage cut after one fire token, with the target string appended.
        fire: token index of the fire token in ``text`` (the target is the token after it).
        passage: index of the fit passage it was cut from.
    """

    text: str
    fire: int
    passage: int


def fit_examples(lm: LanguageModel, fit_texts: Sequence[str], fires: Sequence[Sequence[int]], target: str,
                 n: int) -> list[Example]:
    """The first ``n`` fire positions of ``fit_texts`` (text order) as :class:`Example` objects.

    An example is kept only when the cut-and-appended text tokenizes as the passage's tokens up to the
    fire token followed by exactly the target token (a tokenizer may merge the target with the text).

    Raises:
        DataError: fewer than ``n`` usable fire positions.
    """
    tid = lm.token_id(target)
    out: list[Example] = []
    for ti, (text, ps) in enumerate(zip(fit_texts, fires)):
        enc = _encode(lm, text)
        ids = list(enc["input_ids"])
        for p in ps:
            if len(out) == n:
                return out
            cut = text[: enc["offset_mapping"][p][1]]
            ex_ids = list(lm.tokenizer(cut + target)["input_ids"])
            if ex_ids[:p + 1] == ids[:p + 1] and ex_ids[p + 1:] == [tid]:
                out.append(Example(cut + target, p, ti))
            else:
                logger.info("fit example skipped: %r does not tokenize as the passage + the target", cut[-30:] + target)
    if len(out) < n:
        raise DataError(f"only {len(out)} usable fire positions in the fit passages, {n} requested; give more fit text")
    return out
