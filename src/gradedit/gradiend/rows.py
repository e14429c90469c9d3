"""Data rows as model inputs: texts, factual/alternative token ids, labels and factual classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.schema import PairDataset
from ..models import LanguageModel

__all__ = ["Rows", "balanced_cap", "rows_of"]


@dataclass
class Rows:
    """Model inputs of a set of data rows: texts [N], factual/alternative ids [N], labels [N] and
    (optionally) each row's factual class [N]."""

    texts: list[str]
    factual: torch.Tensor
    alternative: torch.Tensor
    labels: torch.Tensor
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int] | np.ndarray) -> Rows:
        idx = [int(i) for i in idx]
        classes = None if self.classes is None else [self.classes[i] for i in idx]
        return Rows([self.texts[i] for i in idx], self.factual[idx], self.alternative[idx], self.labels[idx], classes)

    def groups(self) -> list[list[int]]:
        """Row indices per (label, factual class), in a fixed order: the rows one gradient may average.
        Without ``classes`` the factual token id stands in for the class."""
        keys = [(float(lab), self.classes[i] if self.classes is not None else int(self.factual[i]))
                for i, lab in enumerate(self.labels.tolist())]
        order: dict[tuple[float, object], list[int]] = {}
        for i, k in enumerate(keys):
            order.setdefault(k, []).append(i)
        return [order[k] for k in sorted(order, key=str)]


def rows_of(ds: PairDataset, lm: LanguageModel) -> Rows:
    """The model inputs of every row of ``ds`` (texts, target ids, labels, factual classes)."""
    texts, f, a, labels = ds.model_inputs(lm)
    return Rows(list(texts), f, a, labels.float(), [str(c) for c in ds.to_frame()["factual_class"]])


def balanced_cap(rows: Rows, cap: int, seed: int) -> Rows:
    """At most ``cap`` rows, balanced over labels, chosen deterministically."""
    if len(rows) <= cap:
        return rows
    rng = np.random.default_rng(seed)
    labels = rows.labels.numpy()
    groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    per = max(1, cap // len(groups))
    keep = np.sort(np.concatenate([rng.permutation(g)[:per] for g in groups]))
    return rows.subset(keep)
