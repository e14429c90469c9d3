"""Cross-encoding: the encoder of feature model i applied to feature model j's data.

Each distinct data row (over all models' held-out rows) is encoded ONCE per model by forward-mode AD
(``encode_rows``, method ``jvp``: no gradient is materialised), so the cost is ``models × rows`` JVPs.
Two views of the encodings:

- ``correlation[i, j]``: Pearson r of model i's encodings of model j's rows with j's labels (+1 for
  j's class A → B rows, −1 for B → A). The diagonal is each model's own held-out encoder r; a large
  ``|r|`` off the diagonal means encoder i also separates j's pair — with the orientation of j's classes.
- ``class_means[i][c]``: model i's mean encoding of all rows whose factual class is ``c``: the sign
  tells which side of feature i each class falls on, for classes i was not trained on too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...data.schema import PairDataset
from ..encode import encode_rows
from ..model import ModelWithGradiend
from ..rows import Rows, balanced_cap, rows_of
from ..train.loop import pearson
from .runs import RunInfo

if TYPE_CHECKING:
    import pandas as pd

    from ...models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["CrossEncoding", "cross_encoding", "held_out_rows"]


@dataclass
class CrossEncoding:
    """Cross-encoding results (see the module docstring).

    Attributes:
        names: model names, the order of both matrix axes.
        correlation: ``[m, m]`` r of encoder i (row) on model j's rows (column).
        class_means: ``{model: {class: mean encoding}}``.
        rows: rows of each model's data that were encoded (balanced over its two labels).
        split: the data split the rows came from.
    """

    names: list[str]
    correlation: np.ndarray
    class_means: dict[str, dict[str, float]]
    rows: dict[str, int]
    split: str
    info: dict[str, Any] = field(default_factory=dict)

    def correlation_frame(self) -> pd.DataFrame:
        """``correlation`` with the encoder as rows and the data as columns."""
        import pandas as pd

        frame = pd.DataFrame(self.correlation, index=self.names, columns=self.names)
        frame.index.name = "encoder \\ data"
        return frame

    def class_means_frame(self) -> pd.DataFrame:
        """Rows = models, columns = factual classes (sorted), cells = mean encoding."""
        import pandas as pd

        classes = sorted({c for d in self.class_means.values() for c in d})
        frame = pd.DataFrame([[self.class_means[n].get(c, np.nan) for c in classes] for n in self.names],
                             index=self.names, columns=classes)
        frame.index.name = "model"
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "correlation": self.correlation.tolist(), "class_means": self.class_means,
                "rows": self.rows, "split": self.split, "info": self.info}


def held_out_rows(data: PairDataset, classes: tuple[str, str], lm: LanguageModel, *, split: str = "test",
                  max_rows: int | None = 32, seed: int = 0) -> Rows:
    """The ``split`` rows pairing ``classes`` (labels ±1, identity and third-class rows dropped), at most
    ``max_rows`` balanced over the two labels.

    Raises:
        ValueError: the split has no such rows.
    """
    part = data.with_targets(list(classes)).split(split)
    part = part.where(part.to_frame()["label"].to_numpy() != 0)
    if len(part) == 0:
        raise ValueError(f"the {split!r} split has no rows of classes {list(classes)}; pick another split")
    rows = rows_of(part, lm)
    return balanced_cap(rows, max_rows, seed) if max_rows else rows


def _concat(parts: Sequence[Rows]) -> tuple[Rows, list[np.ndarray]]:
    """Distinct rows over ``parts`` (by text and token ids) and, per part, its rows' positions in them."""
    index: dict[tuple[str, int, int], int] = {}
    texts: list[str] = []
    fact: list[int] = []
    alt: list[int] = []
    classes: list[str] = []
    where = []
    for rows in parts:
        pos = []
        for i, text in enumerate(rows.texts):
            key = (text, int(rows.factual[i]), int(rows.alternative[i]))
            if key not in index:
                index[key] = len(texts)
                texts.append(text)
                fact.append(key[1])
                alt.append(key[2])
                classes.append(rows.classes[i] if rows.classes is not None else str(key[1]))
            pos.append(index[key])
        where.append(np.asarray(pos, dtype=np.int64))
    rows = Rows(texts, torch.tensor(fact, dtype=torch.long), torch.tensor(alt, dtype=torch.long),
                torch.zeros(len(texts)), classes)
    return rows, where


def cross_encoding(lm: LanguageModel, runs: Sequence[RunInfo], *, data: Mapping[str, PairDataset] | None = None,
                   split: str = "test", max_rows: int | None = 32, seed: int = 0, batch_size: int = 8,
                   class_data: PairDataset | None = None) -> CrossEncoding:
    """Encode every model's held-out rows with every model's encoder (see the module docstring).

    Args:
        lm: the base model all feature models were trained on.
        runs: the models; each needs ``classes`` and data (``data[name]`` or the run's ``data.csv``).
        data: pair data per model name, instead of reading each run's ``data.csv``.
        split: which split's rows to encode.
        max_rows: rows per model (balanced over its two labels); ``None`` = all.
        class_data: data whose ``factual_class`` names the rows in ``class_means`` (default: the class
            the row has in the model data it came from; pass the original data when the models' data
            relabel classes, e.g. one-vs-rest).

    Raises:
        ValueError: a model without classes or data, or a model of another base model than ``lm``.
    """
    parts, labels = [], []
    for run in runs:
        if run.classes is None:
            raise ValueError(f"{run.name}: the feature model records no classes; cross-encoding needs them")
        if run.base_model is not None and run.base_model != lm.name:
            raise ValueError(f"{run.name} was trained on {run.base_model}, not {lm.name}; load that base model")
        ds = (data or {}).get(run.name)
        if ds is None:
            if run.data_path is None:
                raise ValueError(f"{run.name}: no data.csv beside the feature model; pass data={{name: PairDataset}}")
            ds = PairDataset.load(run.data_path)
        rows = held_out_rows(ds, run.classes, lm, split=split, max_rows=max_rows, seed=seed)
        parts.append(rows)
        labels.append(rows.labels.numpy().astype(np.float64))
    union, where = _concat(parts)
    if class_data is not None:
        named = rows_of(class_data, lm)
        lookup = {(t, int(f), int(a)): c for t, f, a, c in
                  zip(named.texts, named.factual, named.alternative, named.classes or [])}
        union.classes = [lookup.get((t, int(f), int(a)), c) for t, f, a, c in
                         zip(union.texts, union.factual, union.alternative, union.classes or [])]
    names = [r.name for r in runs]
    logger.info("cross-encoding %d distinct %s rows with %d encoders", len(union), split, len(runs))
    corr = np.zeros((len(runs), len(runs)))
    means: dict[str, dict[str, float]] = {}
    classes = np.asarray(union.classes, dtype=object)
    for i, run in enumerate(runs):
        mwg = ModelWithGradiend(lm, run.model)
        h = encode_rows(mwg.engine, run.model, union, mwg.source, batch_size=batch_size)[:, 0]
        for j in range(len(runs)):
            corr[i, j] = pearson(h[where[j]], labels[j])
        means[run.name] = {str(c): float(h[classes == c].mean()) for c in sorted(set(union.classes or []))}
    return CrossEncoding(names, corr, means, {n: len(w) for n, w in zip(names, where)}, split,
                         {"base_model": lm.name, "max_rows": max_rows, "seed": seed, "distinct_rows": len(union)})
