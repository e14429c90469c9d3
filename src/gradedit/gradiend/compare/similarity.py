"""Overlap and similarity of feature models, pairwise: ``[m, m]`` matrices over ``m`` models.

Set measures work on top-k sets (:class:`TopK`, keyed in base-model coordinates); vector measures work
on a part's values over each model's whole support (:class:`SparseVector`), where an entry a model does
not read counts as 0 for it ("on the union of supports").

- ``overlap_counts``: ``|A_i ∩ A_j|`` (diagonal ``|A_i|``);
- ``overlap_min``: ``|A_i ∩ A_j| / min(|A_i|, |A_j|)`` (1 when the smaller set lies inside the larger);
- ``jaccard``: ``|A_i ∩ A_j| / |A_i ∪ A_j|``;
- ``mass_overlap`` (directed): share of model i's top-k importance mass on entries also in ``A_j``;
- ``cosine``: ``⟨a, b⟩ / (‖a‖ ‖b‖)`` of the signed values; ``cosine_abs`` the same of ``|a|``, ``|b|``
  (do the two put their magnitude on the same entries, whatever the signs?);
- ``spearman``: rank correlation of ``a`` and ``b`` on the union of their supports (zeros filled in,
  ties get their average rank).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .topk import SparseVector, TopK

__all__ = ["MATRICES", "cosine_matrix", "intersections", "jaccard", "mass_overlap", "overlap_counts",
           "overlap_min", "rank", "similarity_matrices", "spearman", "spearman_matrix"]

MATRICES = ("overlap_min", "jaccard", "mass_overlap", "cosine", "cosine_abs", "spearman")
"""The similarity matrices :func:`similarity_matrices` returns (besides ``overlap_counts``)."""


def _pairwise(items: Sequence[object], fn: object, diagonal: float) -> np.ndarray:
    m = len(items)
    out = np.full((m, m), diagonal, dtype=np.float64)
    for i, j in itertools.combinations(range(m), 2):
        out[i, j] = out[j, i] = fn(items[i], items[j])  # type: ignore[operator]
    return out


def overlap_counts(topks: Sequence[TopK]) -> np.ndarray:
    """``|A_i ∩ A_j|`` as an int64 ``[m, m]`` matrix; the diagonal holds ``|A_i|``."""
    m = len(topks)
    out = np.zeros((m, m), dtype=np.int64)
    for i in range(m):
        out[i, i] = len(topks[i])
    for i, j in itertools.combinations(range(m), 2):
        out[i, j] = out[j, i] = np.intersect1d(topks[i].keys, topks[j].keys, assume_unique=True).size
    return out


def overlap_min(topks: Sequence[TopK]) -> np.ndarray:
    """``|A_i ∩ A_j| / min(|A_i|, |A_j|)``: ``[m, m]``, diagonal 1."""
    counts = overlap_counts(topks).astype(np.float64)
    sizes = np.diag(counts)
    return counts / np.minimum.outer(sizes, sizes)


def jaccard(topks: Sequence[TopK]) -> np.ndarray:
    """``|A_i ∩ A_j| / |A_i ∪ A_j|``: ``[m, m]``, diagonal 1."""
    counts = overlap_counts(topks).astype(np.float64)
    sizes = np.diag(counts)
    return counts / (np.add.outer(sizes, sizes) - counts)


def mass_overlap(topks: Sequence[TopK]) -> np.ndarray:
    """Directed ``[m, m]``: ``M[i, j]`` = share of model i's top-k importance (``Σ importance``) that
    lies on entries also in model j's top-k set. Not symmetric; diagonal 1."""
    m = len(topks)
    out = np.ones((m, m), dtype=np.float64)
    for i, j in itertools.permutations(range(m), 2):
        a, b = topks[i], topks[j]
        total = float(a.importance.sum())
        shared = np.isin(a.keys, b.keys, assume_unique=True)
        out[i, j] = float(a.importance[shared].sum()) / total if total > 0 else float("nan")
    return out


def intersections(topks: Sequence[TopK]) -> dict[tuple[str, ...], int]:
    """Exclusive regions of the top-k sets (what a Venn diagram or an UpSet chart shows): for each
    combination of models, the number of entries in exactly those models' sets (empty ones left out).
    Keys are tuples of model names in the given order; the counts sum to ``|∪ A_i|``."""
    union = np.unique(np.concatenate([t.keys for t in topks]))
    code = np.zeros(union.size, dtype=np.int64)
    for i, t in enumerate(topks):
        code |= np.isin(union, t.keys, assume_unique=True).astype(np.int64) << i
    values, counts = np.unique(code, return_counts=True)
    out = {}
    for v, c in zip(values.tolist(), counts.tolist()):
        out[tuple(t.model for i, t in enumerate(topks) if v >> i & 1)] = int(c)
    return out


def _dot(a: SparseVector, b: SparseVector) -> float:
    _, ia, ib = np.intersect1d(a.keys, b.keys, assume_unique=True, return_indices=True)
    return float(a.values[ia] @ b.values[ib])


def _cosine(a: SparseVector, b: SparseVector) -> float:
    den = a.norm() * b.norm()
    return _dot(a, b) / den if den > 0 else float("nan")


def cosine_matrix(vectors: Sequence[SparseVector], absolute: bool = False) -> np.ndarray:
    """Cosine of the signed values (``absolute=False``) or of their absolute values, on the union of
    supports: ``[m, m]``, diagonal 1. Entries outside a model's support are 0 for it, so they add to
    neither the dot product nor that model's norm."""
    if absolute:
        vectors = [SparseVector(v.keys, np.abs(v.values)) for v in vectors]
    return _pairwise(vectors, _cosine, 1.0)


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (float64), ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [x.size]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a: SparseVector, b: SparseVector) -> float:
    """Spearman's rank correlation of two sparse vectors on the union of their supports (zeros filled in);
    NaN when either is constant there."""
    union = np.union1d(a.keys, b.keys)
    da, db = np.zeros(union.size), np.zeros(union.size)
    da[np.searchsorted(union, a.keys)] = a.values
    db[np.searchsorted(union, b.keys)] = b.values
    ra, rb = rank(da), rank(db)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra @ ra) * (rb @ rb)))
    return float(ra @ rb) / den if den > 0 else float("nan")


def spearman_matrix(vectors: Sequence[SparseVector]) -> np.ndarray:
    """Pairwise :func:`spearman`: ``[m, m]``, diagonal 1."""
    return _pairwise(vectors, spearman, 1.0)


def similarity_matrices(topks: Sequence[TopK], vectors: Sequence[SparseVector]) -> dict[str, np.ndarray]:
    """Every matrix of the module docstring, by name (``overlap_counts`` plus :data:`MATRICES`)."""
    if len(topks) != len(vectors):
        raise ValueError(f"{len(topks)} top-k sets but {len(vectors)} vectors; give one of each per model")
    return {"overlap_counts": overlap_counts(topks), "overlap_min": overlap_min(topks), "jaccard": jaccard(topks),
            "mass_overlap": mass_overlap(topks), "cosine": cosine_matrix(vectors),
            "cosine_abs": cosine_matrix(vectors, absolute=True), "spearman": spearman_matrix(vectors)}
