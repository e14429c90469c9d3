"""Compare GRADIEND feature models: which base-model parameters each uses and how alike they are.

- :mod:`.topk`: top-k entries per model by a part (decoder/encoder weight, bias, their sum) in
  base-model coordinates (:class:`KeySpace`), CSV/JSON export;
- :mod:`.similarity`: overlap counts, ``|A∩B|/min``, Jaccard, mass overlap, cosine (signed and
  absolute) and Spearman of the part values on the union of supports;
- :mod:`.groups`: shares per layer and module type;
- :mod:`.cross`: cross-encoding (encoder i on model j's data, by JVP);
- :mod:`.report`: :func:`compare_models` / :func:`compare_runs` -> :class:`Comparison` (``.save(dir)``
  writes JSON, CSV, figures and a self-contained HTML report).
"""

from __future__ import annotations

from .cross import CrossEncoding, cross_encoding
from .groups import group_table
from .report import DEFAULT_TOPK, Comparison, compare_models, compare_runs
from .runs import RunInfo, load_run, load_runs
from .similarity import (
    cosine_matrix,
    intersections,
    jaccard,
    mass_overlap,
    overlap_counts,
    overlap_min,
    similarity_matrices,
    spearman,
    spearman_matrix,
)
from .topk import (
    KeySpace,
    SparseVector,
    TopK,
    export_topk,
    layer_of,
    module_of,
    part_values,
    sparse_vector,
    topk_of,
)

__all__ = ["DEFAULT_TOPK", "Comparison", "CrossEncoding", "KeySpace", "RunInfo", "SparseVector", "TopK",
           "compare_models", "compare_runs", "cosine_matrix", "cross_encoding", "export_topk", "group_table",
           "intersections", "jaccard", "layer_of", "load_run", "load_runs", "mass_overlap", "module_of",
           "overlap_counts", "overlap_min", "part_values", "similarity_matrices", "sparse_vector", "spearman",
           "spearman_matrix", "topk_of"]
