"""k > 1 latents: one feature model trained on several classes at once.

Each class ``c`` gets a stated **target code** ``code(c)`` in ``R^k``; a data row's code follows from its
factual class ``f`` and alternative class ``a`` and the gradient the encoder reads (the same convention
as the one-latent label: class A ↦ +1, class B ↦ −1, row label = +1 for A→B)::

    factual:      code(f)
    alternative:  −code(a)
    diff:         (code(f) − code(a)) / 2        (∇(CE_f − CE_a) = ∇(logit_a − logit_f))

Codings (``k`` latents for ``C`` classes):

- ``"simplex"`` (``k = C − 1``): the vertices of a regular simplex of radius 1 centred at 0, in
  Helmert coordinates: latent 0 contrasts class 0 (+) with class 1 (−); latent ``j`` contrasts classes
  ``0..j`` with class ``j + 1``. For two classes it is the usual ±1.
- ``"one-vs-rest"`` (``k = C``): latent ``j`` is +1 for class ``j`` and ``−1/(C − 1)`` for the others.
- a mapping ``{class: [k numbers]}`` of your own.

Training stays the paper's unsupervised reconstruction; the codes are only what the latents are
measured (and oriented) against. What is measured, per split (:func:`latent_metrics`):
``r`` per latent (Pearson of latent ``j`` with code component ``j``), ``R`` (multiple correlation of the
codes with all latents: invariant to any invertible linear map of the latents), the class means per
latent (rows grouped by factual class), the leave-one-out nearest-centroid accuracy over factual
classes (chance ``1/C`` for balanced classes) and the Fisher ratio (between- / within-class scatter).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .feature_model import FeatureModel

logger = logging.getLogger(__name__)

CODINGS: tuple[str, ...] = ("simplex", "one-vs-rest")
Coding = str | Mapping[str, Sequence[float]]

__all__ = ["CODINGS", "LatentMetrics", "class_codes", "latent_metrics", "orient_latents", "orientation",
           "row_codes"]


def class_codes(classes: Sequence[str], coding: Coding = "simplex") -> dict[str, np.ndarray]:
    """``{class: code [k]}`` for ``coding`` (see the module docstring)."""
    classes = [str(c) for c in classes]
    n = len(classes)
    if n < 2 or len(set(classes)) != n:
        raise ConfigError(f"a latent coding needs at least two different classes, got {classes}")
    if isinstance(coding, Mapping):
        missing = [c for c in classes if c not in coding]
        if missing:
            raise ConfigError(f"the coding gives no code for class(es) {missing}; give one list of k numbers per class")
        codes = {c: np.asarray(coding[c], dtype=np.float64).reshape(-1) for c in classes}
        dims = {v.size for v in codes.values()}
        if len(dims) != 1 or 0 in dims or not all(np.isfinite(v).all() for v in codes.values()):
            raise ConfigError(f"every class code must be the same number (k >= 1) of finite numbers, got {coding}")
        if len({tuple(v) for v in codes.values()}) != n:
            raise ConfigError("two classes have the same code; give each class its own code")
        return codes
    if coding == "simplex":
        eye = np.eye(n) - 1.0 / n  # centred one-hot rows
        basis = np.zeros((n, n - 1))
        for j in range(1, n):  # Helmert contrasts: classes 0..j-1 (+) against class j (−)
            basis[:j, j - 1] = 1.0
            basis[j, j - 1] = -float(j)
            basis[:, j - 1] /= math.sqrt(j * (j + 1))
        pts = eye @ basis * math.sqrt(n / (n - 1))  # unit radius
        return {c: pts[i] for i, c in enumerate(classes)}
    if coding == "one-vs-rest":
        pts = np.full((n, n), -1.0 / (n - 1))
        np.fill_diagonal(pts, 1.0)
        return {c: pts[i] for i, c in enumerate(classes)}
    raise ConfigError(f"unknown coding {coding!r}; choose one of {CODINGS} or give {{class: [k numbers]}}")


def row_codes(factual: Sequence[str], alternative: Sequence[str], codes: Mapping[str, np.ndarray],
              source: str) -> np.ndarray:
    """Target code of each row ``[N, k]`` for the gradient ``source`` (see the module docstring)."""
    f = np.stack([codes[c] for c in factual]) if len(factual) else np.zeros((0, _dim(codes)))
    a = np.stack([codes[c] for c in alternative]) if len(alternative) else np.zeros((0, _dim(codes)))
    if source == "factual":
        return f
    if source == "alternative":
        return -a
    if source == "diff":
        return (f - a) / 2.0
    raise ValueError(f"source must be factual, alternative or diff, got {source!r}")


def _dim(codes: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(codes.values())).size)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


@dataclass
class LatentMetrics:
    """Encoder metrics of a k-latent model on one set of rows (see the module docstring).

    Attributes:
        r_per_latent: Pearson r of latent ``j`` with code component ``j`` ``[k]``.
        multiple_r: R of the least-squares fit of the codes from all latents (+ intercept).
        class_means: ``{factual class: mean latent [k]}``.
        centroid_accuracy: leave-one-out nearest-centroid accuracy over factual classes.
        chance: the majority-class fraction (what always guessing one class scores).
        fisher: trace of the between-class scatter / trace of the within-class scatter.
        n: rows measured.
    """

    r_per_latent: list[float]
    multiple_r: float
    class_means: dict[str, list[float]]
    centroid_accuracy: float
    chance: float
    fisher: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"r_per_latent": self.r_per_latent, "multiple_r": self.multiple_r, "class_means": self.class_means,
                "centroid_accuracy": self.centroid_accuracy, "chance": self.chance, "fisher": self.fisher, "n": self.n}

    def min_centroid_distance(self) -> float:
        """Smallest distance between two class means (0 with fewer than two classes)."""
        pts = [np.asarray(v) for v in self.class_means.values()]
        d = [float(np.linalg.norm(p - q)) for p, q in itertools.combinations(pts, 2)]
        return min(d) if d else 0.0


def latent_metrics(values: np.ndarray, codes: np.ndarray, classes: Sequence[str]) -> LatentMetrics:
    """Metrics of encodings ``values [N, k]`` against row codes ``codes [N, k]``, rows grouped by ``classes [N]``."""
    h = np.asarray(values, dtype=np.float64).reshape(len(classes), -1)
    y = np.asarray(codes, dtype=np.float64).reshape(len(classes), -1)
    k = h.shape[1]
    r = [_pearson(h[:, j], y[:, j]) if j < y.shape[1] else 0.0 for j in range(k)]
    x = np.concatenate([h, np.ones((len(h), 1))], axis=1)
    ss_tot = float(((y - y.mean(0)) ** 2).sum())
    if len(h) > k + 1 and ss_tot > 0:
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        ss_res = float(((y - x @ coef) ** 2).sum())
        multiple_r = math.sqrt(max(0.0, 1.0 - ss_res / ss_tot))
    else:
        multiple_r = 0.0
    labels = np.asarray([str(c) for c in classes])
    names = list(dict.fromkeys(labels.tolist()))
    means = {c: h[labels == c].mean(0) for c in names}
    acc, fisher = _centroid_accuracy(h, labels, names), _fisher(h, labels, names)
    chance = max((labels == c).mean() for c in names) if names else 0.0
    return LatentMetrics(r, multiple_r, {c: [float(v) for v in m] for c, m in means.items()}, acc, float(chance),
                         fisher, len(h))


def _centroid_accuracy(h: np.ndarray, labels: np.ndarray, names: list[str]) -> float:
    """Leave-one-out nearest-centroid accuracy (a row is never part of the centroid it is tested on)."""
    if len(names) < 2 or len(h) == 0:
        return 0.0
    sums = {c: h[labels == c].sum(0) for c in names}
    counts = {c: int((labels == c).sum()) for c in names}
    hits = 0
    for i in range(len(h)):
        best, best_d = None, math.inf
        for c in names:
            n = counts[c] - (labels[i] == c)
            if n <= 0:
                continue
            centre = (sums[c] - (h[i] if labels[i] == c else 0.0)) / n
            d = float(((h[i] - centre) ** 2).sum())
            if d < best_d:
                best, best_d = c, d
        hits += best == labels[i]
    return hits / len(h)


def _fisher(h: np.ndarray, labels: np.ndarray, names: list[str]) -> float:
    mu = h.mean(0)
    between = sum((labels == c).sum() * float(((h[labels == c].mean(0) - mu) ** 2).sum()) for c in names)
    within = sum(float(((h[labels == c] - h[labels == c].mean(0)) ** 2).sum()) for c in names)
    return float(between / within) if within > 0 else math.inf


def orientation(values: np.ndarray, codes: np.ndarray) -> tuple[list[int], list[float]]:
    """``(order, signs)`` maximising ``Σ_j signs[j] · r(latent order[j], code j)``: the permutation and
    signs of the latents that best line them up with the code components (every permutation for
    ``k <= 6``, else greedy). Apply with :meth:`FeatureModel.reorder_latents_` or :func:`orient_latents`."""
    h = np.asarray(values, dtype=np.float64)
    y = np.asarray(codes, dtype=np.float64)
    k = h.shape[1]
    corr = np.array([[_pearson(h[:, i], y[:, j]) if j < y.shape[1] else 0.0 for j in range(k)] for i in range(k)])
    if k <= 6:
        order = max(itertools.permutations(range(k)), key=lambda p: sum(abs(corr[p[j], j]) for j in range(k)))
    else:
        free, chosen = set(range(k)), []
        for j in range(k):
            i = max(free, key=lambda i: abs(corr[i, j]))
            chosen.append(i)
            free.remove(i)
        order = tuple(chosen)
    signs = [-1.0 if corr[order[j], j] < 0 else 1.0 for j in range(k)]
    return list(order), signs


def orient_latents(fm: FeatureModel, values: np.ndarray, codes: np.ndarray) -> tuple[list[int], list[float]]:
    """Reorder/flip ``fm``'s latents in place by :func:`orientation` of its encodings ``values``; returns
    ``(order, signs)``. Encodings of the oriented model are ``values[:, order] * signs`` exactly."""
    order, signs = orientation(values, codes)
    if order != list(range(fm.latent_dim)) or any(s < 0 for s in signs):
        fm.reorder_latents_(order, signs)
        logger.info("latents oriented to the coding: order %s, signs %s", order, signs)
    return order, signs
