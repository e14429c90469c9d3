"""The pair-data format's names: columns, splits, the ``[MASK]`` marker and the text helpers around it."""

from __future__ import annotations

from typing import Any

from ..errors import DataError

__all__ = ["COLUMNS", "DATA_EXTRA", "MASK", "SPLITS", "STRING_COLUMNS", "fill_masked", "match_case",
           "require_pandas", "split_masked"]

MASK = "[MASK]"
STRING_COLUMNS = ("text", "factual", "alternative", "factual_class", "alternative_class")
COLUMNS = (*STRING_COLUMNS, "label", "split")
SPLITS = ("train", "val", "test")
DATA_EXTRA = "pip install 'gradedit[data]'"


def require_pandas() -> Any:
    """Import pandas or explain which extra to install."""
    try:
        import pandas
    except ImportError as err:  # pragma: no cover - the test env has pandas
        raise ImportError(f"PairDataset needs pandas: {DATA_EXTRA}") from err
    return pandas


def split_masked(text: str) -> tuple[str, str]:
    """``"a [MASK] b"`` → ``("a ", " b")``; raises DataError unless there is exactly one ``[MASK]``."""
    parts = text.split(MASK)
    if len(parts) != 2:
        raise DataError(f"{text!r} has {len(parts) - 1} {MASK} markers; exactly one is needed")
    return parts[0], parts[1]


def fill_masked(text: str, word: str) -> str:
    """``"he said [MASK] was"`` + ``" she"`` → ``"he said she was"`` (the word's leading space wins)."""
    left, right = split_masked(text)
    return ((left.rstrip() if word[:1].isspace() else left) + word + right).strip()


def match_case(factual: str, alternative: str) -> str:
    """``alternative`` with ``factual``'s leading whitespace and casing (lower, Title or UPPER)."""
    lead = factual[: len(factual) - len(factual.lstrip())]
    word, alt = factual.strip(), alternative.strip()
    if len(word) > 1 and word.isupper():
        alt = alt.upper()
    elif word[:1].isupper():
        alt = alt[:1].upper() + alt[1:]
    elif word.islower():
        alt = alt.lower()
    return lead + alt
