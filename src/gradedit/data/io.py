"""Getting rows into a PairDataset: CSV / Parquet / JSONL files (atomic writes), the gradiend-style
per-class ``{"masc": df, "fem": df}`` layout, and deterministic train/val/test splits.

Per-class frames → pair rows (``class_frames_to_frame``). For each class ``c`` and its frame:

* text: ``text_col``, else the first of ``text`` / ``masked`` (gradiend's name) that exists;
* factual token: ``token_col``, else the first of ``<c>`` (a column named after the class, as
  gradiend does), ``factual``, ``token``, ``label`` that exists;
* one row per other class ``o`` (only the other target class when ``target_classes`` is given);
  the alternative token comes from, in this order,

  1. a column named ``<o>`` in the same row (row-wise pairs; rows where it is empty are skipped),
  2. ``alternatives[o]``, a ``{factual token: alternative token}`` dict (matched exactly, else
     case-insensitively with the factual's casing and leading space applied); unmapped tokens
     are an error that lists them,
  3. otherwise the most frequent token of class ``o``'s frame (case-folded, first spelling wins
     ties) in the factual's casing and leading space: ``" He"`` with ``fem`` → ``" She"``;

* identity rows (alternative = factual, label 0): for every row with ``identity=True``, and always
  for a class that is not one of ``target_classes`` (neutral data); the target classes' rows
  come first (in ``target_classes`` order), so a dict and a folder give the same dataset;
* labels: with ``target_classes=(a, b)`` as in ``PairDataset``; two frames and no
  ``target_classes`` mean ``(first key, second key)``; more frames and none give label 0 everywhere;
* ``split``: taken from the frames when all have it; otherwise assigned 80/10/10 grouped by
  ``text``, so one sentence never lands in two splits. Other columns are kept.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import atomic_path
from ..errors import DataError
from .columns import COLUMNS, DATA_EXTRA, match_case, require_pandas

if TYPE_CHECKING:
    import pandas as pd

    from .schema import PairDataset

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS", "canonical_value", "class_frames_to_frame", "read_class_dir", "read_table",
    "write_table",
]

FORMATS = (".csv", ".parquet", ".jsonl")
_NA = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "<NA>"]


def require_datasets() -> Any:
    """The ``datasets`` module, or an ImportError naming the install command."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("Hugging Face datasets support needs: pip install 'gradedit[data]'") from err
    return datasets


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown data format {suffix!r}; use one of {list(FORMATS)}")
    return suffix


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:  # pragma: no cover - the test env has pyarrow
        raise ImportError(f"Parquet files need pyarrow: {DATA_EXTRA}") from err


def read_table(path: Path) -> pd.DataFrame:
    """Read a ``.csv`` / ``.parquet`` / ``.jsonl`` file; the string columns are read verbatim."""
    pd = require_pandas()
    kind = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    if kind == ".parquet":
        _require_pyarrow()
    try:
        return _read(pd, path, kind)
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas/pyarrow/json parse errors derive from these
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(f"{path} is not a readable {kind[1:]} file ({type(err).__name__}: {detail}). Fix: check the file is "
                        f"complete {'Parquet' if kind == '.parquet' else 'UTF-8 text'} (PairDataset.save writes it)") from None


def _read(pd: Any, path: Path, kind: str) -> pd.DataFrame:
    if kind == ".parquet":
        return pd.read_parquet(path, engine="pyarrow")
    if kind == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    records.append(json.loads(line))
                    if not isinstance(records[-1], dict):
                        raise DataError(f"{path} line {n} is a JSON {type(records[-1]).__name__}, not an object. "
                                        f"Fix: one JSON object per line with the columns {', '.join(COLUMNS)}")
        return pd.DataFrame.from_records(records)
    # CSV: tokens such as "null" or " NA" and class ids such as "1" stay strings; extra columns
    # are type-inferred as usual.
    try:
        header = list(pd.read_csv(path, nrows=0, encoding="utf-8").columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty. Fix: a CSV file with a header row ({', '.join(COLUMNS)}) and one row per "
                        f"pair") from None
    strings = {c: str for c in header if c in COLUMNS and c != "label"}
    na = {c: ([] if c in strings else _NA) for c in header}
    return pd.read_csv(path, dtype=strings, keep_default_na=False, na_values=na, encoding="utf-8")


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as ``path``'s format, atomically; returns ``path``."""
    kind = _format(path)
    if kind == ".parquet":
        _require_pyarrow()
    with atomic_path(path) as tmp:
        if kind == ".csv":
            frame.to_csv(tmp, index=False, encoding="utf-8")
        elif kind == ".parquet":
            frame.to_parquet(tmp, index=False, engine="pyarrow")
        else:
            cols = list(frame.columns)
            with tmp.open("w", encoding="utf-8") as fh:
                for row in zip(*(frame[c].tolist() for c in cols)):
                    values = {c: _jsonable(v) for c, v in zip(cols, row)}
                    fh.write(json.dumps(values, ensure_ascii=False) + "\n")
    logger.debug("wrote %d rows to %s", len(frame), path)
    return path


def _jsonable(value: Any) -> Any:
    """Like the fingerprint's canonical form, but floats stay floats (dtypes survive JSONL)."""
    if isinstance(value, float):
        return None if value != value else float(value)
    return canonical_value(value)


def canonical_value(value: Any) -> Any:
    """A JSON value that is the same whichever file format the data went through."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if hasattr(value, "tolist") and not isinstance(value, float):  # numpy scalars and arrays
        return canonical_value(value.tolist())
    if isinstance(value, float):
        return None if math.isnan(value) else int(value) if value.is_integer() else value
    if isinstance(value, list | tuple):
        return [canonical_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): canonical_value(v) for k, v in value.items()}
    return None if require_pandas().isna(value) else str(value)


def read_class_dir(path: Path) -> dict[str, pd.DataFrame]:
    """``{class: frame}`` from a folder of ``<class>.csv|.parquet|.jsonl`` files."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
    if not files:
        raise DataError(f"{path} holds no per-class files; expected e.g. masc.csv, fem.csv ({list(FORMATS)})")
    stems = Counter(p.stem for p in files)
    twice = sorted(s for s, n in stems.items() if n > 1)
    if twice:
        raise DataError(f"{path}: class(es) {twice} have several files; keep one file per class")
    return {p.stem: read_table(p) for p in files}


def _pick(frame: pd.DataFrame, cls: str, candidates: Sequence[str], what: str) -> str:
    for c in candidates:
        if c in frame.columns:
            return c
    raise DataError(
        f"frame of class {cls!r} has no {what} column (tried {list(candidates)}); it has {list(frame.columns)}. "
        f"Fix: rename the column or pass {'text_col' if what == 'text' else 'token_col'}="
    )


def _most_common(tokens: Sequence[str]) -> str:
    """The most frequent token, case-folded; ties go to the first seen, in its first spelling."""
    folded = Counter(t.strip().lower() for t in tokens)
    first: dict[str, str] = {}
    for t in tokens:
        first.setdefault(t.strip().lower(), t)
    rank = {k: i for i, k in enumerate(first)}
    return first[max(folded, key=lambda k: (folded[k], -rank[k]))]


def _alternatives(frame: pd.DataFrame, cls: str, factual: pd.Series, other: str,
                  frames: Mapping[str, pd.DataFrame], token_col: str | None,
                  alternatives: Mapping[str, Mapping[str, str]] | None) -> pd.Series:
    if other in frame.columns and other != factual.name:
        return frame[other]
    if alternatives is not None and other in alternatives:
        table = dict(alternatives[other])
        folded = {k.strip().lower(): v for k, v in table.items()}

        def look(tok: str) -> str | None:
            if not isinstance(tok, str) or tok in table:
                return table.get(tok)
            hit = folded.get(tok.strip().lower())
            return None if hit is None else match_case(tok, hit)

        out = factual.map(look)
        unmapped = sorted(set(factual[out.isna()]))
        if unmapped:
            raise DataError(f"alternatives[{other!r}] has no entry for {cls!r} token(s) {unmapped}; add them")
        return out
    other_frame = frames[other]
    col = _pick(other_frame, other, [token_col] if token_col else [other, "factual", "token", "label"], "token")
    pool = [str(t) for t in other_frame[col].dropna()]
    if not pool:
        raise DataError(f"class {other!r} has no tokens to draw alternatives for class {cls!r} from")
    common = _most_common(pool)
    logger.info("class %r → %r: alternative is %r (the most frequent %r token)", cls, other, common, other)
    return factual.map(lambda t: match_case(t, common) if isinstance(t, str) else None)


def class_frames_to_frame(
    frames: Mapping[str, Any],
    target_classes: Sequence[str] | None = None,
    *,
    text_col: str | None = None,
    token_col: str | None = None,
    alternatives: Mapping[str, Mapping[str, str]] | None = None,
    identity: bool = False,
) -> pd.DataFrame:
    """Pair rows (without labels) from per-class frames or file paths; see the module docstring."""
    pd = require_pandas()
    loaded = {str(c): (f if isinstance(f, pd.DataFrame) else read_table(Path(f))) for c, f in frames.items()}
    if not loaded:
        raise DataError("no class frames given; pass e.g. {'masc': masc_df, 'fem': fem_df}")
    targets = [str(t) for t in target_classes] if target_classes is not None else None
    for t in targets or []:
        if t not in loaded:
            raise DataError(f"target class {t!r} has no frame; frames are {sorted(loaded)}")
    order = [*(targets or []), *(c for c in loaded if c not in (targets or []))]
    loaded = {c: loaded[c] for c in order}  # target classes first: same rows for a dict or a folder
    with_split = [c for c, df in loaded.items() if "split" in df.columns]
    if with_split and len(with_split) != len(loaded):
        raise DataError(f"only the frames of {with_split} have a 'split' column; give it to all or none")
    parts = []
    for cls, df in loaded.items():
        df = df.reset_index(drop=True)
        tcol = _pick(df, cls, [text_col] if text_col else ["text", "masked"], "text")
        fcol = _pick(df, cls, [token_col] if token_col else [cls, "factual", "token", "label"], "token")
        factual = df[fcol].map(lambda v: v if isinstance(v, str) or pd.isna(v) else str(v))
        base = df.drop(columns=[c for c in {tcol, fcol, *COLUMNS} - {"split"} if c in df.columns])
        others = [o for o in (targets or list(loaded)) if o != cls] if targets is None or cls in targets else []
        pairs = [(o, _alternatives(df, cls, factual, o, loaded, token_col, alternatives)) for o in others]
        if identity or (targets is not None and cls not in targets):
            pairs.append((cls, factual))
        for other, alt in pairs:
            keep = alt.notna() & (alt.astype(str) != "")
            core = pd.DataFrame({"text": df[tcol], "factual": factual, "alternative": alt,
                                 "factual_class": cls, "alternative_class": other})
            parts.append(pd.concat([core, base], axis=1)[keep.to_numpy()])
    out = pd.concat(parts, ignore_index=True)
    logger.info("%d pair rows from %d class frame(s)", len(out), len(loaded))
    return out


def load_class_frames(cls: type[PairDataset], frames: Mapping[str, Any], target_classes: Sequence[str] | None,
                      *, text_col: str | None = None, token_col: str | None = None,
                      alternatives: Mapping[str, Mapping[str, str]] | None = None, identity: bool = False,
                      fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                      group_by: str | None = "text") -> PairDataset:
    """``PairDataset.from_class_frames``: labels from ``target_classes`` (when given) and splits
    grouped by ``group_by`` when the frames carry none."""
    if target_classes is None and len(frames) == 2:
        target_classes = [str(c) for c in frames]
        logger.info("two class frames: target_classes = %s (+1 for the first → second)", target_classes)
    frame = class_frames_to_frame(frames, target_classes, text_col=text_col, token_col=token_col,
                                  alternatives=alternatives, identity=identity)
    if target_classes is None:
        frame["label"] = 0
        logger.warning("%d class frames and no target_classes: every label is 0; use ds.with_targets([...])",
                       len(frames))
    return cls.from_frame(frame, target_classes, fractions=fractions, seed=seed, group_by=group_by)
