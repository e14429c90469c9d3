"""From raw sentences to a PairDataset: mask one occurrence of a class word per row.

``DataCreator(classes)`` scans sentences for the surface words of each ``FeatureClass`` (whole
words only) and emits ONE row per (sentence, occurrence): that occurrence becomes ``[MASK]``, all
other text is kept verbatim, so a sentence with two matches yields two rows.

* **Word boundaries.** A match is not part of a longer word (``he`` never matches inside ``the``
  or ``Sheep``), nor of a hyphenated compound (``he-goat``), nor the tail of a contraction
  (``y'he``). A clitic after the word is allowed by default and stays in the text:
  ``he's`` → ``[MASK]'s`` (``contractions=False`` skips such occurrences).
* **Tokens.** ``factual`` is the matched word as the model predicts it at that position: with a
  leading space when the text before it ends in a space (``" He"``), without one at the start or
  after an opening quote (``"He"``), in the matched casing. ``alternative`` is the counterfactual
  word written the same way (``" He"`` → ``" She"``, ``"HE"`` → ``"SHE"``).
* **Counterfactual mapping.** Either ``alternatives={"he": "she", "she": "he"}`` (keys and values
  are class words; matched case-insensitively unless ``case_sensitive``), or — with exactly two
  classes and no dict — by position in the two word lists: ``words[i]`` of one class ↔
  ``words[i]`` of the other (the lists must have equal length). Each alternative must be a word of
  another class; that class is the row's ``alternative_class``.
* **Filters.** Rows whose text before the mask has fewer than ``min_left_words`` words are rejected
  (a causal LM needs context; set 0 for masked-LM-only data), as are rows a class ``filter``
  refuses. With ``lm``, rows whose factual or alternative is not ONE token of ``lm`` are dropped.
  Rejections are counted per reason in ``creator.report`` and logged at INFO.
* **Selection and splits.** ``max_size_per_class`` caps each class, ``balance`` downsamples every
  class to the smallest; both keep the rows ranked first by ``sha256(seed, text)``, in corpus
  order. ``split="random"`` divides each class 80/10/10 (``fractions``; exact up to sentences with
  several matches) and keeps all rows of one sentence in one split (``stratified_splits``);
  ``split="vocab"`` holds out vocabulary: all rows with the same factual word (case-folded) land
  in one split (``io.assign_splits`` grouping; needs several words per class to fill every split).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .._progress import progress
from ..errors import DataError
from .columns import MASK, SPLITS, match_case, require_pandas
from .schema import PairDataset
from .splits import assign_splits, keep_first, stratified_splits

if TYPE_CHECKING:
    from ..models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["DataCreator", "FeatureClass", "count_words", "describe", "neutral_sentences", "stratified_splits",
           "word_pattern"]

_WORD = re.compile(r"\S*[^\W_]\S*")  # a whitespace-separated chunk holding a letter or digit
_PROGRESS_MIN = 5000  # show a progress bar from this many sentences on


@dataclass
class FeatureClass:
    """One class of a feature: its id and the surface words that belong to it.

    Attributes:
        id: class id used in the dataset (``"masc"``).
        words: surface words (``["he"]``; add ``"He"`` etc. only with ``case_sensitive=True``).
        filter: optional ``filter(sentence, offset) -> bool`` called with the sentence and the
            character offset of the match; False rejects that occurrence (morphological checks).
    """

    id: str
    words: list[str]
    filter: Callable[[str, int], bool] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.words = [self.words] if isinstance(self.words, str) else list(self.words)
        if not isinstance(self.id, str) or not self.id.strip():
            raise DataError(f"a FeatureClass needs a non-empty string id, got {self.id!r}")
        bad = [w for w in self.words if not isinstance(w, str) or not w.strip() or w != w.strip()]
        if not self.words or bad:
            raise DataError(f"class {self.id!r}: words must be non-empty strings without surrounding spaces, "
                            f"got {self.words!r}")


def count_words(text: str) -> int:
    """Words in ``text``: whitespace-separated chunks containing a letter or digit."""
    return len(_WORD.findall(text))


def word_pattern(words: Iterable[str], *, case_sensitive: bool = False, contractions: bool = True,
                 strict: bool = True) -> re.Pattern[str]:
    """A regex matching any of ``words`` as a whole word (longest first).

    ``strict`` also refuses hyphen compounds and contraction tails (``he-goat``, ``y'he``);
    ``contractions=False`` refuses a word followed by an apostrophe clitic (``he's``).
    """
    alts = "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))
    left = r"(?<!\w)(?<!\w-)(?<!\w['’])" if strict else r"(?<!\w)"
    right = r"(?!\w)(?!-\w)" if strict else r"(?!\w)"
    if not contractions:
        right += r"(?!['’]\w)"
    return re.compile(f"{left}(?:{alts}){right}", 0 if case_sensitive else re.IGNORECASE)


class DataCreator:
    """Build masked pair rows from raw sentences; see the module docstring for the rules.

    Args:
        classes: two or more ``FeatureClass``; ids and words must be unique across classes.
        alternatives: ``{word: counterfactual word}`` for every class word; None pairs the two
            classes' word lists by position.
        target_classes: the ``(a, b)`` pair whose rows get labels +1 (a→b) / −1 (b→a); defaults to
            the two classes when there are two. With more classes and none given, labels are 0.
        case_sensitive: match only the exact surface forms listed (default: any casing, and the
            alternative copies the match's casing).
        contractions: also match a word followed by an apostrophe clitic (``he's``).
        min_left_words: reject rows with fewer words before ``[MASK]``.
        max_size_per_class: keep at most this many rows per class (after filtering).
        balance: downsample every class to the size of the smallest.
        seed: seeds row selection and splits.
        split: ``"random"`` (stratified by class, grouped by sentence) or ``"vocab"`` (grouped by
            factual word).
        fractions: train/val/test fractions.
    """

    def __init__(
        self,
        classes: Sequence[FeatureClass],
        *,
        alternatives: Mapping[str, str] | None = None,
        target_classes: Sequence[str] | None = None,
        case_sensitive: bool = False,
        contractions: bool = True,
        min_left_words: int = 5,
        max_size_per_class: int | None = None,
        balance: bool = True,
        seed: int = 0,
        split: Literal["random", "vocab"] = "random",
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
    ) -> None:
        self.classes = list(classes)
        if len(self.classes) < 2:
            raise DataError(f"need at least two classes, got {[c.id for c in self.classes]}")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise DataError(f"class ids must be unique, got {ids}")
        if split not in ("random", "vocab"):
            raise ValueError(f"split must be 'random' or 'vocab', got {split!r}")
        if min_left_words < 0 or (max_size_per_class is not None and max_size_per_class < 1):
            raise ValueError("min_left_words must be >= 0 and max_size_per_class >= 1 (or None)")
        assign_splits(0, fractions)  # validates the fractions
        self.case_sensitive, self.contractions = case_sensitive, contractions
        self.min_left_words, self.max_size_per_class = min_left_words, max_size_per_class
        self.balance, self.seed, self.split, self.fractions = balance, seed, split, tuple(fractions)
        if target_classes is None and len(self.classes) == 2:
            target_classes = ids
        if target_classes is not None and any(t not in ids for t in target_classes):
            raise DataError(f"target_classes {list(target_classes)} must be class ids among {ids}")
        self.target_classes = tuple(target_classes) if target_classes is not None else None
        self._class_of: dict[str, FeatureClass] = {}
        for c in self.classes:
            for w in c.words:
                key = self._key(w)
                if key in self._class_of:
                    raise DataError(f"word {w!r} is listed in class {self._class_of[key].id!r} and {c.id!r}"
                                    + ("" if case_sensitive else " (matching is case-insensitive)"))
                self._class_of[key] = c
        self._alt = self._resolve_alternatives(alternatives)
        self._pattern = word_pattern(self._class_of_words(), case_sensitive=case_sensitive,
                                     contractions=contractions)
        self.report: dict[str, Any] = {}

    # -- configuration ---------------------------------------------------------------------------

    def _key(self, word: str) -> str:
        return word if self.case_sensitive else word.casefold()

    def _class_of_words(self) -> list[str]:
        return [w for c in self.classes for w in c.words]

    def _resolve_alternatives(self, alternatives: Mapping[str, str] | None) -> dict[str, str]:
        """``{word key: alternative word}``, checked: every word mapped to a word of another class."""
        if alternatives is None:
            if len(self.classes) != 2 or len(self.classes[0].words) != len(self.classes[1].words):
                sizes = {c.id: len(c.words) for c in self.classes}
                raise DataError(f"without alternatives= the words are paired by position, which needs exactly "
                                f"two classes with equally long word lists; got {sizes}. Fix: pass "
                                f"alternatives={{'he': 'she', 'she': 'he', ...}}")
            a, b = self.classes
            pairs = [*zip(a.words, b.words), *zip(b.words, a.words)]
            return {self._key(w): alt for w, alt in pairs}
        table = {self._key(k): v for k, v in alternatives.items()}
        out: dict[str, str] = {}
        missing, problems = [], []
        for c in self.classes:
            for w in c.words:
                alt = table.get(self._key(w))
                if alt is None:
                    missing.append(w)
                    continue
                other = self._class_of.get(self._key(alt))
                if other is None:
                    problems.append(f"{w!r} → {alt!r}: {alt!r} is not a word of any class")
                elif other is c:
                    problems.append(f"{w!r} → {alt!r}: both are words of class {c.id!r}")
                out[self._key(w)] = alt
        if missing:
            problems.append(f"no alternative for {missing}")
        if problems:
            raise DataError("invalid alternatives: " + "; ".join(problems)
                            + ". Fix: map every class word to a word of another class")
        return out

    # -- row creation ----------------------------------------------------------------------------

    def _rows(self, sentences: Sequence[str], rejected: Counter[str]) -> list[dict[str, Any]]:
        """One candidate row per match; counts matches per class in the report."""
        matches: Counter[str] = Counter()
        rows: list[dict[str, Any]] = []
        for sid, sentence in enumerate(progress(sentences, desc="masking", unit="sent",
                                                disable=len(sentences) < _PROGRESS_MIN)):
            if MASK in sentence:
                rejected["contains_mask"] += 1
                continue
            for m in self._pattern.finditer(sentence):
                word = m.group(0)
                cls = self._class_of.get(self._key(word))
                if cls is None:  # a regex case fold without a str.casefold equivalent; never a class word
                    continue
                matches[cls.id] += 1
                left, right = sentence[: m.start()], sentence[m.end():]
                if count_words(left) < self.min_left_words:
                    rejected["left_context"] += 1
                    continue
                if cls.filter is not None and not cls.filter(sentence, m.start()):
                    rejected["filter"] += 1
                    continue
                alt_word = self._alt[self._key(word)]
                alt = alt_word if self.case_sensitive else match_case(word, alt_word)
                lead = " " if left.endswith(" ") else ""
                rows.append({
                    "text": f"{left}{MASK}{right}", "factual": lead + word, "alternative": lead + alt,
                    "factual_class": cls.id, "alternative_class": self._class_of[self._key(alt_word)].id,
                    "_sentence": sid,
                })
        self.report["matches"] = {c.id: matches[c.id] for c in self.classes}
        return rows

    def _single_token(self, rows: list[dict[str, Any]], lm: LanguageModel, rejected: Counter) -> list[dict]:
        """Drop rows whose factual or alternative is not one token of ``lm``; report the tokens."""
        ok = {tok: lm.is_single_token(tok) for tok in {t for r in rows for t in (r["factual"], r["alternative"])}}
        dropped: Counter[str] = Counter()
        kept = []
        for r in rows:
            bad = [t for t in (r["factual"], r["alternative"]) if not ok[t]]
            if bad:
                dropped.update(bad)
                rejected["not_single_token"] += 1
            else:
                kept.append(r)
        self.report["dropped_tokens"] = dict(sorted(dropped.items()))
        if dropped:
            logger.info("not one token of %s, rows dropped: %s", lm.name,
                        ", ".join(f"{t!r} ({n})" for t, n in sorted(dropped.items())))
        return kept

    def create(self, sentences: Sequence[str], lm: LanguageModel | None = None) -> PairDataset:
        """Masked pair rows from ``sentences``; ``lm`` validates that tokens are single tokens.

        Raises:
            DataError: a class ends up with no rows (the message names it and says why).
        """
        sentences = list(sentences)
        self.report = {"sentences": len(sentences), "dropped_tokens": {}}
        rejected: Counter[str] = Counter()
        rows = self._rows(sentences, rejected)
        if lm is not None:
            rows = self._single_token(rows, lm, rejected)
        by_class: dict[str, list[int]] = {c.id: [] for c in self.classes}
        for i, r in enumerate(rows):
            by_class[r["factual_class"]].append(i)
        for cid, idx in by_class.items():
            if not idx:
                raise DataError(self._empty_message(cid, rejected, lm))
        keys = [r["text"] for r in rows]
        if self.max_size_per_class is not None:
            for cid, idx in by_class.items():
                rejected["max_size"] += max(0, len(idx) - self.max_size_per_class)
                by_class[cid] = keep_first(idx, self.max_size_per_class, keys, self.seed)
        if self.balance:
            n = min(len(idx) for idx in by_class.values())
            for cid, idx in by_class.items():
                rejected["balance"] += len(idx) - n
                by_class[cid] = keep_first(idx, n, keys, self.seed)
        rows = [rows[i] for i in sorted(i for idx in by_class.values() for i in idx)]
        frame = self._frame(rows, sentences)
        ds = PairDataset.from_frame(frame, self.target_classes)
        self.report.update(
            rejected={k: v for k, v in sorted(rejected.items()) if v},
            rows=dict(Counter(frame["factual_class"])),
            splits=dict(Counter(frame["split"])),
        )
        logger.info("%d rows from %d sentences: %s; rejected %s", len(ds), len(sentences), self.report["rows"],
                    self.report["rejected"] or "none")
        return ds

    def _frame(self, rows: list[dict[str, Any]], sentences: Sequence[str]) -> Any:
        pd = require_pandas()
        frame = pd.DataFrame.from_records(rows, columns=["text", "factual", "alternative", "factual_class",
                                                         "alternative_class", "_sentence"])
        if self.split == "vocab":
            groups = [f.strip().lower() for f in frame["factual"]]
            frame["split"] = assign_splits(len(frame), self.fractions, self.seed, groups)
        else:
            groups = [sentences[i] for i in frame["_sentence"]]
            frame["split"] = stratified_splits(frame["factual_class"].tolist(), groups, self.fractions, self.seed)
        empty = [s for s, f in zip(SPLITS, self.fractions) if f > 0 and s not in set(frame["split"])]
        if empty:
            logger.warning("split %s is empty (%d rows in %d %s groups); use more data%s", empty, len(frame),
                           len(set(groups)), self.split, " or split='random'" if self.split == "vocab" else "")
        if self.target_classes is None:
            frame["label"] = 0
            logger.warning("%d classes and no target_classes: every label is 0", len(self.classes))
        return frame.drop(columns="_sentence")

    def _empty_message(self, cid: str, rejected: Counter, lm: LanguageModel | None) -> str:
        cls = next(c for c in self.classes if c.id == cid)
        matched = self.report["matches"].get(cid, 0)
        why = f"its words {cls.words} matched {matched} time(s) in {self.report['sentences']} sentences"
        if matched and lm is not None:
            tokens = self.report.get("dropped_tokens", {})
            why += f"; after the {lm.name} single-token check none are left (not one token: {sorted(tokens)})"
        return (f"class {cid!r} has no rows: {why} (rejections over all classes: {dict(rejected)}). "
                f"Fix: give more or other sentences, other words, or lower min_left_words (now "
                f"{self.min_left_words})")

    # -- neutral data ----------------------------------------------------------------------------

    def neutral(self, sentences: Iterable[str], exclude_words: Iterable[str] = ()) -> list[str]:
        """Sentences containing none of the class words nor ``exclude_words``; see ``neutral_sentences``."""
        return neutral_sentences(sentences, [*self._class_of_words(), *exclude_words])


def neutral_sentences(sentences: Iterable[str], words: Iterable[str]) -> list[str]:
    """The sentences (in order) containing none of ``words`` as a whole word in any casing; hyphen
    compounds and contractions count as containing it (``he-goat``, ``he's``)."""
    words = list(words)
    if not words:
        raise ValueError("neutral_sentences needs at least one word to exclude")
    pattern = word_pattern(words, case_sensitive=False, strict=False)
    sentences = list(sentences)
    out = [s for s in progress(sentences, desc="neutral", unit="sent", disable=len(sentences) < _PROGRESS_MIN)
           if pattern.search(s) is None]
    logger.info("%d of %d sentences are neutral (none of %d words)", len(out), len(sentences), len(set(words)))
    return out


def describe(ds: PairDataset) -> str:
    """A text table of rows per split × factual class, with totals and the token pairs."""
    table = ds.counts()
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    frame = ds.to_frame()
    pairs = Counter(zip(frame["factual"], frame["alternative"]))
    shown = ", ".join(f"{f!r}→{a!r} {n}" for (f, a), n in pairs.most_common(8))
    more = f" (+{len(pairs) - 8} more)" if len(pairs) > 8 else ""
    targets = ds.target_classes
    head = f"{len(ds)} rows, classes {ds.classes}" + (
        f", label +1 = {targets[0]}→{targets[1]}" if targets else ", no target classes")
    return f"{head}\n{table.to_string()}\ntoken pairs: {shown}{more}"
