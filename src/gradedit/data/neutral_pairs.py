"""Pair data against a NEUTRAL class: the rows of one class versus neutral-masked rows (issue 15.5).

A masc-vs-fem feature model learns the direction ``logit(" she") − logit(" he")``: weakening masc
with it moves the mass to " she". ``against_neutral(data, "masc")`` builds data for a feature model
whose only consistent direction is "not ' he'":

* a **class row** keeps its context and factual token (``"... [MASK] said" / " he"``), alternative
  class ``"neutral"``;
* its **neutral twin** is the same sentence with the class word filled in and ANOTHER word masked
  (a word that is no class token and no ``exclude`` word, with at least ``min_left_words`` words
  before it, one token of ``lm``): ``"... he [MASK] to them" / " said"``, factual class ``"neutral"``,
  alternative class the class. With ``neutral_texts`` (e.g. ``features.neutral("en")``) the twins are
  masked neutral sentences instead, paired with the class rows in order.

**What the alternative token is.** A class row's alternative is its twin's masked word ``w``, and the
twin's alternative is the class row's factual token: each class row and its twin are one
counterfactual pair, like a he→she row and a she→he row. With the default ``source="diff"`` (a
single-token ``CE_f − CE_a`` equals ``logit_a − logit_f``) a class row's gradient is
``∇(logit_w − logit_he)`` at a " he" context and its twin's is ``∇(logit_he − logit_w)`` at a neutral
position, label −1: both point the same way. ``w`` differs from row to row, so the only component
common to all rows is ``−∇logit_he``, and the decoder lowers " he" without a preferred receiver —
no single other token (" she") is consistently raised. With ``source="factual"`` the same rows give
``∇CE_he`` on class contexts against ``∇CE_w`` (the true word) on neutral ones: unlearning " he"
while keeping the neutral text's predictions (gradient ascent on a forget set, descent on a retain set).

**Identity rows.** The GRADIEND reference models neutral data as identity transitions
(factual == alternative, label 0; its ``add_identity_for_other_classes``) fed to the encoder as the
alternative's gradient. Under ``diff`` such a row has a zero gradient (``logit_w − logit_w``), so it
cannot define a class; here the neutral twins are a class (label −1), and ``identity=True`` also adds
each twin as an identity row ``w → w`` (classes neutral/neutral, label 0), which the trainer uses only
with ``TrainConfig(use_identity_rows=True)``.

Splits: a twin takes the split of its class row, so no sentence is in two splits and the class rows
keep the splits they had (held-out prompts stay held out).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .columns import MASK, fill_masked
from .schema import PairDataset

if TYPE_CHECKING:
    from ..models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["NEUTRAL_CLASS", "against_neutral", "mask_neutral_word"]

#: class id of the neutral rows
NEUTRAL_CLASS = "neutral"
_WORD = re.compile(r"[^\W\d_]+")


def mask_neutral_word(text: str, exclude: Iterable[str], token_ok: Callable[[str], bool] | None = None,
                      seed: int = 0, min_left_words: int = 3) -> tuple[str, str] | None:
    """Mask one word of ``text`` (no ``[MASK]`` in it): a letters-only word after a space, not followed by
    an apostrophe or hyphen, with at least ``min_left_words`` words before it, not in ``exclude``
    (compared lowercased) and, with ``token_ok``, for which ``token_ok(" word")`` holds.

    Returns ``(masked_text, " word")`` or ``None`` when no word qualifies. The choice among the
    candidates is deterministic: ``sha256(seed, text)``.
    """
    if MASK in text:
        raise DataError(f"mask_neutral_word got a text that is already masked: {text[:60]!r}; fill the {MASK} first")
    banned = {w.strip().lower() for w in exclude}
    candidates: list[tuple[int, int, str]] = []
    for m in _WORD.finditer(text):
        s, e = m.span()
        if s == 0 or text[s - 1] != " " or (e < len(text) and text[e] in "'’-"):
            continue
        if len(text[:s].split()) < min_left_words or m.group().lower() in banned:
            continue
        word = " " + m.group()
        if token_ok is not None and not token_ok(word):
            continue
        candidates.append((s, e, word))
    if not candidates:
        return None
    pick = int(hashlib.sha256(f"{seed}\x00{text}".encode()).hexdigest(), 16) % len(candidates)
    s, e, word = candidates[pick]
    return text[:s] + MASK + text[e:], word


def _record(text: str, factual: str, alternative: str, fc: str, ac: str, split: str, pair: int,
            kind: str) -> dict[str, Any]:
    return {"text": text, "factual": factual, "alternative": alternative, "factual_class": fc,
            "alternative_class": ac, "split": split, "pair": pair, "kind": kind}


def against_neutral(data: PairDataset, cls: str, lm: LanguageModel | None = None,
                    neutral_texts: Sequence[str] | None = None, *, exclude: Iterable[str] = (), seed: int = 0,
                    min_left_words: int = 3, identity: bool = False,
                    neutral_class: str = NEUTRAL_CLASS) -> PairDataset:
    """``cls`` versus a neutral class, from the rows of ``data`` whose factual class is ``cls``.

    Args:
        data: pair rows (e.g. ``features.build("en-pronouns", lm)``); only ``cls`` rows are used.
        cls: the class to weaken; it becomes target class A (encoded positive).
        lm: if given, the neutral word must be one token of it (with its leading space).
        neutral_texts: sentences to mask for the neutral rows instead of the class rows' own sentences
            (paired with the class rows in order; class rows beyond the usable sentences are dropped).
        exclude: words a neutral row may not mask (e.g. ``features.NEUTRAL_EXCLUDE["en"]``: every
            pronoun); every factual/alternative token of ``data`` is excluded anyway.
        seed: which candidate word is masked.
        min_left_words: words before the neutral word (a causal LM needs context).
        identity: also add every neutral row as an identity row ``w → w`` (label 0).
        neutral_class: the neutral class id.

    Returns:
        A PairDataset with target classes ``(cls, neutral_class)``: class rows (label +1) and their
        neutral twins (label −1) in pairs, extra columns ``pair`` (the pair index) and ``kind``
        (``"class"``, ``"neutral"`` or ``"identity"``).

    Raises:
        DataError: ``cls`` has no rows in ``data``, ``neutral_class`` is already a class of it, or no
            class row gets a neutral twin.
    """
    frame = data.to_frame()
    own = frame[frame["factual_class"] == cls]
    if own.empty:
        raise DataError(f"class {cls!r} has no rows; the data's factual classes are "
                        f"{sorted(set(frame['factual_class']))}. Fix: choose one of them")
    if neutral_class in data.classes:
        raise DataError(f"the data already has a class {neutral_class!r}; pass another neutral_class=")
    banned = {t.strip().lower() for t in [*frame["factual"], *frame["alternative"], *exclude]}
    token_ok = lm.is_single_token if lm is not None else None
    texts = iter(neutral_texts) if neutral_texts is not None else None
    records: list[dict[str, Any]] = []
    dropped = 0
    for text, factual, split in zip(own["text"], own["factual"], own["split"]):
        twin = None
        if texts is None:
            twin = mask_neutral_word(fill_masked(text, factual), banned, token_ok, seed, min_left_words)
        else:
            for sentence in texts:
                if MASK not in sentence:
                    twin = mask_neutral_word(sentence.strip(), banned, token_ok, seed, min_left_words)
                if twin is not None:
                    break
        if twin is None:
            dropped += 1
            continue
        pair, (masked, word) = len(records) // (3 if identity else 2), twin
        records.append(_record(text, factual, word, cls, neutral_class, split, pair, "class"))
        records.append(_record(masked, word, factual, neutral_class, cls, split, pair, "neutral"))
        if identity:
            records.append(_record(masked, word, word, neutral_class, neutral_class, split, pair, "identity"))
    if dropped:
        where = "usable neutral sentences ran out" if texts is not None else "no usable word to mask in the sentence"
        logger.info("against_neutral: dropped %d of %d %s rows (%s)", dropped, len(own), cls, where)
    if not records:
        raise DataError(f"no {cls!r} row got a neutral twin: no word qualifies (>= {min_left_words} words before it, "
                        "not a class or excluded word, one token of the model). Fix: give longer sentences or "
                        "neutral_texts=")
    return PairDataset.from_records(records, target_classes=[cls, neutral_class])
