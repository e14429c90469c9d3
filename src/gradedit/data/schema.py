"""PairDataset: the rows GRADIEND trains on — a text with one ``[MASK]``, the factual token there and
a counterfactual alternative, their classes, a ±1/0 label and a split.

Columns, in this order (extra columns such as ``source`` or ``id`` are kept after them): ``text``
(exactly one ``[MASK]``), ``factual`` (the token there, with its leading space: ``" he"``),
``alternative`` (the counterfactual token, ``" she"``), ``factual_class`` / ``alternative_class``
(plain string ids, ``"masc"``), ``label`` (+1 / −1 / 0) and ``split`` (``train`` | ``val`` | ``test``).

With ``target_classes=(a, b)`` the label is +1 for an ``a → b`` row, −1 for ``b → a`` and 0 for
everything else (identity rows where ``factual == alternative`` or both classes are equal, and
rows touching a third class). Row numbers in error messages are 0-based positions in the input.

pandas (and pyarrow for Parquet) come with the ``data`` extra: ``pip install 'gradedit[data]'``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    import pandas as pd

    from ..models import LanguageModel

from .._files import safe_name
from ..errors import DataError, TokenError, UnsafeName
from .columns import COLUMNS, MASK, SPLITS, STRING_COLUMNS, require_pandas, split_masked
from .io import canonical_value, load_class_frames, read_class_dir, read_table, require_datasets, write_table
from .splits import assign_splits

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "MASK", "SPLITS", "DataError", "PairDataset", "PairRow", "split_masked"]


@dataclass(frozen=True)
class PairRow:
    """One row of a PairDataset; ``extra`` holds the optional columns (``source``, ``id``, ...)."""

    text: str
    factual: str
    alternative: str
    factual_class: str
    alternative_class: str
    label: int
    split: str
    extra: dict[str, Any] = field(default_factory=dict)


def expected_labels(frame: pd.DataFrame, target_classes: Sequence[str]) -> Any:
    """+1 for ``a → b`` rows, −1 for ``b → a``, 0 for identity and third-class rows (numpy int64)."""
    import numpy as np

    a, b = target_classes
    fc, ac = frame["factual_class"], frame["alternative_class"]
    real = (frame["factual"] != frame["alternative"]) & (fc != ac)
    up = (real & (fc == a) & (ac == b)).to_numpy()
    down = (real & (fc == b) & (ac == a)).to_numpy()
    return np.where(up, 1, np.where(down, -1, 0)).astype("int64")


def _fail(frame: pd.DataFrame, bad: Any, column: str, problem: str, fix: str) -> None:
    """Raise DataError naming the first bad row, its value, how many rows are affected and the fix."""
    rows = [i for i, b in enumerate(list(bad)) if b]
    if not rows:
        return
    shown = ", ".join(str(i) for i in rows[:8]) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
    value = repr(frame[column].iloc[[rows[0]]].tolist()[0])
    value = value if len(value) <= 80 else value[:77] + "..."
    raise DataError(
        f"row {rows[0]}: {problem} (column {column!r} = {value}); {len(rows)} row(s) affected: {shown}. Fix: {fix}"
    )


_NOT_TEXT = (list, tuple, dict, set, frozenset, bytes, bytearray)


def _unsafe_class(value: str) -> bool:
    try:
        safe_name(value, "class id")
    except UnsafeName:
        return True
    return False


def _check_targets(target_classes: Sequence[str] | None) -> tuple[str, str] | None:
    if target_classes is None:
        return None
    targets = tuple(str(t) for t in target_classes)
    if len(targets) != 2 or targets[0] == targets[1]:
        raise DataError(f"target_classes must be two different class ids, got {list(target_classes)}")
    return targets[0], targets[1]


def normalize_frame(
    frame: pd.DataFrame, target_classes: tuple[str, str] | None, derive_label: bool = False
) -> pd.DataFrame:
    """Validate ``frame`` and return it with canonical column order and dtypes (str, int64 label).

    With ``derive_label`` (needs ``target_classes``) the label is computed from the classes."""
    pd = require_pandas()
    df = frame.reset_index(drop=True)
    if derive_label and target_classes is not None and "label" not in df.columns:
        df["label"] = 0  # placeholder, recomputed once the string columns are clean
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; the data has columns {list(map(str, df.columns))}. "
            f"Fix: add or rename them (e.g. df.rename(columns={{'masked': 'text'}})); a missing 'label' is "
            f"derived when target_classes is given and a missing 'split' is assigned by PairDataset.from_frame"
        )
    for col in STRING_COLUMNS:
        s = df[col]
        _fail(df, s.map(lambda v: isinstance(v, _NOT_TEXT)), col, f"{col} is a list, dict or bytes, not a string",
              f"give {col!r} as a string (one value per row, not a list, dict or bytes)")
        null = s.isna()
        s = s.map(lambda v: v if isinstance(v, str) else str(v)).where(~null, "")
        df[col] = s.astype(object)
        empty = s.str.strip() == "" if col == "text" else s == ""
        what = "empty text" if col == "text" else f"empty {col}"
        _fail(df, empty, col, what, f"fill in {col!r} or drop the row")
    for col in ("factual_class", "alternative_class"):
        _fail(df, df[col].map(_unsafe_class), col, "class id cannot name a file or folder (it becomes one when a "
              "rewrite is saved per class)", "use a class id without '/', '\\', control characters or NUL, not "
              "'.' or '..', at most 255 bytes")
    if derive_label and target_classes is not None:
        df["label"] = expected_labels(df, target_classes)
    n_masks = df["text"].str.count(re.escape(MASK))
    _fail(df, n_masks == 0, "text", f"text has no {MASK}", f"mark the target position with {MASK}")
    _fail(df, n_masks > 1, "text", f"text has more than one {MASK}", f"keep exactly one {MASK} per row")
    label = pd.to_numeric(df["label"], errors="coerce")
    _fail(df, label.isna() | ~label.isin([-1, 0, 1]), "label", "label is not -1, 0 or 1",
          "use +1/-1 for the two target classes and 0 for identity rows, or pass target_classes=")
    df["label"] = label.astype("int64")
    split = df["split"].map(lambda v: v if isinstance(v, str) else repr(v))
    _fail(df, ~split.isin(SPLITS), "split", "unknown split value",
          f"use one of {list(SPLITS)} (e.g. rename 'validation' to 'val')")
    df["split"] = split.astype(object)
    identity = (df["factual"] == df["alternative"]) | (df["factual_class"] == df["alternative_class"])
    _fail(df, identity & (df["label"] != 0), "label", "identity row (same token or same class) has a non-zero label",
          "identity rows need label 0")
    if target_classes is not None:
        _fail(df, df["label"].to_numpy() != expected_labels(df, target_classes), "label",
              f"label inconsistent with target_classes {list(target_classes)} (+1 for "
              f"{target_classes[0]}→{target_classes[1]}, -1 for the reverse, 0 otherwise)",
              "correct the label column, or drop it to derive labels (ds.with_targets([...]) recomputes them)")
        present = set(df["factual_class"])
        for t in target_classes:
            if t not in present:
                raise DataError(
                    f"target class {t!r} has no rows; factual_class values present: {sorted(present)}. "
                    f"Fix: add rows of class {t!r} or choose target_classes among the present classes"
                )
    extras = [c for c in df.columns if c not in COLUMNS]
    return df[[*COLUMNS, *extras]]


class PairDataset:
    """Validated pair rows for GRADIEND training; build with ``from_records``, ``from_frame``,
    ``from_class_frames`` or ``load``. Every method that selects rows returns a new dataset."""

    def __init__(self, frame: pd.DataFrame, target_classes: Sequence[str] | None = None,
                 *, derive_label: bool = False) -> None:
        self._targets = _check_targets(target_classes)
        self._df = normalize_frame(frame, self._targets, derive_label)
        dups = self.duplicate_count()
        if dups:
            logger.info("%d duplicate row(s) kept; see PairDataset.duplicate_count()", dups)

    @classmethod
    def _wrap(cls, frame: pd.DataFrame, targets: tuple[str, str] | None) -> PairDataset:
        """A dataset from already-validated rows (subsets of a valid dataset)."""
        ds = cls.__new__(cls)
        ds._df, ds._targets = frame.reset_index(drop=True), targets
        return ds

    # -- constructors and IO --------------------------------------------------------------------

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        target_classes: Sequence[str] | None = None,
        *,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        group_by: str | None = None,
    ) -> PairDataset:
        """From a DataFrame (copied). ``masked`` is accepted for ``text``; a missing ``label`` is
        derived from ``target_classes``; a missing ``split`` is assigned with ``splits.assign_splits``."""
        df = frame.copy()
        if "text" not in df.columns and "masked" in df.columns:
            df = df.rename(columns={"masked": "text"})
        targets = _check_targets(target_classes)
        if "split" not in df.columns:
            if group_by is not None and group_by not in df.columns:
                raise DataError(f"group_by column {group_by!r} not found; columns: {list(df.columns)}")
            groups = df[group_by].tolist() if group_by is not None else None
            df["split"] = assign_splits(len(df), fractions, seed, groups)
            logger.info("no 'split' column: assigned %s (seed=%d, group_by=%s)", tuple(fractions), seed, group_by)
        return cls(df, targets, derive_label=targets is not None and "label" not in df.columns)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], target_classes: Sequence[str] | None = None,
                     **kwargs: Any) -> PairDataset:
        """From a list of dicts (one per row); ``kwargs`` as in ``from_frame``."""
        if not records:
            raise DataError("from_records got no rows; give at least one dict with the columns " + ", ".join(COLUMNS))
        pd = require_pandas()
        return cls.from_frame(pd.DataFrame.from_records(list(records)), target_classes, **kwargs)

    @classmethod
    def from_class_frames(cls, frames: Mapping[str, Any], target_classes: Sequence[str] | None = None,
                          **kwargs: Any) -> PairDataset:
        """From gradiend-style per-class frames ``{"masc": df, "fem": df}`` (or file paths); see
        ``gradedit.data.io.class_frames_to_frame`` for the column mapping."""
        return load_class_frames(cls, frames, target_classes, **kwargs)

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any], target_classes: Sequence[str] | None = None,
             **kwargs: Any) -> PairDataset:
        """From a ``.csv`` / ``.parquet`` / ``.jsonl`` file, a folder of per-class files
        (``masc.csv``, ``fem.csv``, ...) or a dict of per-class frames."""
        if isinstance(source, Mapping):
            return load_class_frames(cls, source, target_classes, **kwargs)
        path = Path(source)
        if path.is_dir():
            return load_class_frames(cls, read_class_dir(path), target_classes, **kwargs)
        return cls.from_frame(read_table(path), target_classes, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + ``os.replace``); the format follows the extension
        (``.csv``, ``.parquet``, ``.jsonl``). ``target_classes`` is not stored: pass it to ``load``."""
        return write_table(self._df, Path(path))

    def to_frame(self) -> pd.DataFrame:
        """A copy of the rows as a DataFrame."""
        return self._df.copy()

    def to_hf_dataset(self) -> Any:
        """The rows as a Hugging Face ``datasets.Dataset`` (needs the ``data`` extra)."""
        return require_datasets().Dataset.from_pandas(self._df, preserve_index=False)

    @classmethod
    def from_hf_dataset(cls, dataset: Any, target_classes: Sequence[str] | None = None, **kwargs: Any) -> PairDataset:
        """From a ``datasets.Dataset`` with our columns (``from_frame`` rules apply)."""
        return cls.from_frame(dataset.to_pandas(), target_classes, **kwargs)

    # -- views -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._df)

    def __iter__(self) -> Iterator[PairRow]:
        extras = [c for c in self._df.columns if c not in COLUMNS]
        core = zip(*(self._df[c].tolist() for c in COLUMNS))
        rest = zip(*(self._df[c].tolist() for c in extras)) if extras else itertools.repeat(())
        for (text, factual, alternative, factual_class, alternative_class, label, split), extra in zip(core, rest):
            yield PairRow(text, factual, alternative, factual_class, alternative_class, label, split,
                          extra=dict(zip(extras, extra)))

    def __repr__(self) -> str:
        splits = dict(Counter(self._df["split"]))
        return f"PairDataset({len(self)} rows, classes={self.classes}, splits={splits}, targets={self._targets})"

    @property
    def classes(self) -> list[str]:
        """Sorted distinct class ids (factual and alternative)."""
        return sorted(set(self._df["factual_class"]) | set(self._df["alternative_class"]))

    @property
    def target_classes(self) -> tuple[str, str] | None:
        return self._targets

    def where(self, mask: Sequence[bool] | Any) -> PairDataset:
        """Rows where the boolean ``mask`` (list, array or Series, one value per row) is true."""
        keep = [bool(m) for m in list(mask)]
        if len(keep) != len(self):
            raise DataError(f"mask has {len(keep)} values for {len(self)} rows")
        return self._wrap(self._df[keep], self._targets)

    def filter(self, predicate: Callable[[PairRow], bool] | None = None, **equals: Any) -> PairDataset:
        """Rows matching ``predicate(row)`` and every ``column=value`` (a list/set/tuple means any of)."""
        mask = [True] * len(self)
        for col, want in equals.items():
            if col not in self._df.columns:
                raise DataError(f"filter: no column {col!r}; columns: {list(self._df.columns)}")
            hits = self._df[col].isin(list(want)) if isinstance(want, list | set | tuple) else self._df[col] == want
            mask = [m and bool(h) for m, h in zip(mask, hits)]
        if predicate is not None:
            mask = [m and bool(predicate(row)) for m, row in zip(mask, self)]
        return self.where(mask)

    def split(self, name: str) -> PairDataset:
        """The rows of split ``name`` (``"train"``, ``"val"``, ``"test"``)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {list(SPLITS)}")
        return self.where(self._df["split"] == name)

    def head(self, n: int = 5) -> PairDataset:
        """The first ``n`` rows."""
        return self._wrap(self._df.head(n), self._targets)

    def counts(self) -> pd.DataFrame:
        """Rows per split (index) × factual class (columns)."""
        pd = require_pandas()
        table = pd.crosstab(self._df["split"], self._df["factual_class"])
        table = table.reindex(index=[s for s in SPLITS if s in table.index])
        table.index.name, table.columns.name = "split", "class"
        return table

    def duplicate_count(self) -> int:
        """How many rows repeat an earlier row on the required columns (duplicates are kept)."""
        return int(self._df.duplicated(subset=list(COLUMNS)).sum())

    def fingerprint(self) -> str:
        """sha256 over the canonical content: column names (extras sorted) and every row in order.

        Independent of the file format the rows went through (CSV, Parquet, JSONL)."""
        cols = [*COLUMNS, *sorted(c for c in self._df.columns if c not in COLUMNS)]
        h = hashlib.sha256(json.dumps(cols, ensure_ascii=False).encode())
        for row in zip(*(self._df[c].tolist() for c in cols)):
            h.update(b"\n" + json.dumps(canonical_value(list(row)), ensure_ascii=False, separators=(",", ":")).encode())
        return h.hexdigest()

    # -- derived datasets ------------------------------------------------------------------------

    def with_targets(self, target_classes: Sequence[str]) -> PairDataset:
        """The same rows with ``label`` recomputed: +1 for first→second, −1 for the reverse, else 0."""
        if target_classes is None:
            raise DataError("with_targets needs two class ids, e.g. ['masc', 'fem']")
        return type(self)(self._df.drop(columns="label"), target_classes, derive_label=True)

    def with_splits(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                    group_by: str | None = None) -> PairDataset:
        """The same rows with ``split`` reassigned (optionally keeping each ``group_by`` value together)."""
        return type(self).from_frame(self._df.drop(columns="split"), self._targets, fractions=fractions,
                                     seed=seed, group_by=group_by)

    # -- model inputs ----------------------------------------------------------------------------

    def validate_tokens(self, lm: LanguageModel) -> dict[str, int]:
        """Token id of every distinct factual/alternative token; DataError lists all that are not one token."""
        tokens = list(dict.fromkeys([*self._df["factual"], *self._df["alternative"]]))
        ids: dict[str, int] = {}
        bad: list[str] = []
        for tok in tokens:
            try:
                ids[tok] = lm.token_id(tok)
            except TokenError as err:
                used = (self._df["factual"] == tok) | (self._df["alternative"] == tok)
                rows = [i for i, u in enumerate(used.tolist()) if u]
                bad.append(f"  {tok!r} ({len(rows)} row(s), first row {rows[0]}): {err}")
        if bad:
            raise DataError(
                f"{len(bad)} of {len(tokens)} distinct factual/alternative tokens are not one token of "
                f"{lm.name}:\n" + "\n".join(bad) + "\nFix: use words that are single tokens (mind the leading "
                "space, ' he'), or drop those rows with ds.filter(lambda r: ...)"
            )
        return ids

    def prompts(self, kind: Literal["clm", "mlm"], mask_token: str | None = None) -> list[str]:
        """Model texts: ``"clm"`` keeps the text before ``[MASK]`` (trailing whitespace stripped; the
        next token is scored); ``"mlm"`` replaces ``[MASK]`` with ``mask_token`` (default ``[MASK]``)."""
        texts = self._df["text"].tolist()
        if kind == "clm":
            return [split_masked(t)[0].rstrip() for t in texts]
        if kind == "mlm":
            return [t.replace(MASK, mask_token or MASK) for t in texts]
        raise ValueError(f"kind must be 'clm' or 'mlm', got {kind!r}")

    def model_inputs(self, lm: LanguageModel) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(texts, factual_ids, alternative_ids, labels)``: prompts for ``lm.kind``, LongTensor ids
        of the factual and alternative tokens, FloatTensor labels."""
        ids = self.validate_tokens(lm)
        texts = self.prompts(lm.kind, lm.tokenizer.mask_token if lm.kind == "mlm" else None)
        if lm.kind == "clm":
            _fail(self._df, [not t for t in texts], "text", f"nothing before {MASK}, so a causal LM has no context",
                  f"put text before {MASK}, use a masked LM, or drop the row")
        factual = torch.tensor([ids[t] for t in self._df["factual"]], dtype=torch.long)
        alternative = torch.tensor([ids[t] for t in self._df["alternative"]], dtype=torch.long)
        labels = torch.tensor(self._df["label"].tolist(), dtype=torch.float32)
        return texts, factual, alternative, labels
