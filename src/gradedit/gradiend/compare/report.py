"""``compare_models`` / ``compare_runs``: every comparison of several feature models in one
:class:`Comparison`, saved as JSON + CSV + figures + a self-contained HTML report."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._files import json_safe, write_folder, write_json_atomic, write_text_atomic
from ..feature_model import PARTS, FeatureModel, Part
from .cross import CrossEncoding, cross_encoding
from .groups import group_table
from .runs import RunInfo, load_runs
from .similarity import intersections, similarity_matrices
from .topk import KeySpace, TopK, export_topk, sparse_vector, topk_of

if TYPE_CHECKING:
    import pandas as pd

    from ...data.schema import PairDataset
    from ...models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TOPK", "Comparison", "compare_models", "compare_runs"]

DEFAULT_TOPK = 1000
"""Top-k entries per model when none is given (the reference package's default for its Venn plots)."""


@dataclass
class Comparison:
    """Everything compared about ``m`` feature models (see ``gradedit.gradiend.compare``).

    Attributes:
        runs: the models (names, classes, encoder r).
        part: the part that ranked the top-k entries and whose values the vector measures use.
        k: the requested top-k (int count or fraction of each model's input size).
        topks: each model's top-k set in base-model coordinates.
        matrices: ``overlap_counts``, ``overlap_min``, ``jaccard``, ``mass_overlap``, ``cosine``,
            ``cosine_abs``, ``spearman`` (each ``[m, m]``, rows and columns in ``names`` order).
        regions: the exclusive regions of the top-k sets (Venn / UpSet counts).
        layers: share of each model's top-k entries per layer (rows) and model (columns).
        layers_mass: the same weighted by importance.
        modules: share of top-k entries per module type.
        cross: cross-encoding results, when computed.
    """

    runs: list[RunInfo]
    part: str
    k: int | float
    topks: list[TopK]
    matrices: dict[str, np.ndarray]
    regions: dict[tuple[str, ...], int]
    layers: pd.DataFrame
    layers_mass: pd.DataFrame
    modules: pd.DataFrame
    cross: CrossEncoding | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    def matrix_frame(self, name: str) -> pd.DataFrame:
        """One matrix as a DataFrame labelled by model names."""
        import pandas as pd

        if name not in self.matrices:
            raise KeyError(f"no matrix {name!r}; have {sorted(self.matrices)}")
        frame = pd.DataFrame(self.matrices[name], index=self.names, columns=self.names)
        frame.index.name = "model"
        return frame

    def summary(self) -> pd.DataFrame:
        """One row per model: classes, base model, input size, top-k size, encoder r and where it is from."""
        import pandas as pd

        return pd.DataFrame([{
            "model": r.name, "classes": " vs ".join(r.classes) if r.classes else "", "base model": r.base_model or "",
            "inputs": r.model.input_dim, "latents": r.model.latent_dim, "top-k entries": len(t),
            "encoder r": r.encoder_r if r.encoder_r is not None else float("nan"),
            "r from": r.encoder_r_split or "", "source": r.model.metadata.get("source", "")}
            for r, t in zip(self.runs, self.topks)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: names, part, k, matrices, regions (``"a&b"`` keys), groups, cross-encoding."""
        return json_safe({
            "names": self.names, "part": self.part, "k": self.k, "summary": self.summary().to_dict("records"),
            "matrices": {k: v.tolist() for k, v in self.matrices.items()},
            "regions": {"&".join(c): n for c, n in self.regions.items()},
            "layers": _table_dict(self.layers), "layers_mass": _table_dict(self.layers_mass),
            "modules": _table_dict(self.modules), "cross": self.cross.to_dict() if self.cross else None,
            "info": self.info})

    def save(self, out: str | Path, *, html: bool = True, title: str | None = None) -> Path:
        """Write ``comparison.json``, ``matrices/<name>.csv``, ``topk.csv``/``topk.json``, the group tables,
        cross-encoding tables, the figures (PNG) and ``report.html`` (``html=False``: no figures, no page)
        into ``out``. A new folder appears in one step (written aside, then renamed). Returns ``out``."""
        out = Path(out)
        write_folder(out, lambda d: self._write(d, html, title))
        logger.info("comparison of %d feature models written to %s", len(self.runs), out)
        return out

    def _write(self, d: Path, html: bool, title: str | None) -> None:
        write_json_atomic(d / "comparison.json", self.to_dict())
        (d / "matrices").mkdir(exist_ok=True)
        for name in self.matrices:
            write_text_atomic(d / "matrices" / f"{name}.csv", self.matrix_frame(name).to_csv())
        export_topk(self.topks, d)
        for name, table in (("layers", self.layers), ("layers_mass", self.layers_mass), ("modules", self.modules)):
            write_text_atomic(d / f"{name}.csv", table.to_csv())
        if self.cross is not None:
            write_text_atomic(d / "cross_encoding.csv", self.cross.correlation_frame().to_csv())
            write_text_atomic(d / "class_means.csv", self.cross.class_means_frame().to_csv())
        if html:
            from ...viz.compare_page import write_compare_report

            write_compare_report(d, self.report_data(), title=title or f"Comparison of {len(self.runs)} feature models")

    def report_data(self) -> dict[str, Any]:
        """What the HTML report shows, as plain data (the viz layer does not know these classes)."""
        return {"names": self.names, "part": self.part, "k": self.k, "summary": self.summary(),
                "matrices": {n: self.matrix_frame(n) for n in self.matrices}, "regions": self.regions,
                "encoder_r": [r.encoder_r for r in self.runs], "layers": self.layers, "layers_mass": self.layers_mass,
                "modules": self.modules,
                "cross": None if self.cross is None else {"correlation": self.cross.correlation_frame(),
                                                          "class_means": self.cross.class_means_frame(),
                                                          "rows": self.cross.rows, "split": self.cross.split},
                "topk_head": _topk_head(self.topks)}


def _table_dict(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    return {str(c): {str(i): float(v) for i, v in table[c].items()} for c in table.columns}


def _topk_head(topks: Sequence[TopK], n: int = 10) -> pd.DataFrame:
    import pandas as pd

    frames = [t.to_frame().head(n).assign(model=t.model) for t in topks]
    table = pd.concat(frames, ignore_index=True)
    return table[["model", "rank", "param", "row", "col", "value", "importance"]]


def _as_runs(models: Mapping[str, FeatureModel] | Sequence[RunInfo]) -> list[RunInfo]:
    if isinstance(models, Mapping):
        return [RunInfo.from_model(str(n), fm) for n, fm in models.items()]
    return list(models)


def compare_models(models: Mapping[str, FeatureModel] | Sequence[RunInfo], *, k: int | float = DEFAULT_TOPK,
                   part: Part = "decoder-weight", latent: int = 0, lm: LanguageModel | None = None,
                   data: Mapping[str, PairDataset] | None = None, split: str = "test",
                   max_rows: int | None = 32, class_data: PairDataset | None = None) -> Comparison:
    """Compare feature models of one base model (top-k sets, similarity matrices, layer and module
    groups; with ``lm`` also cross-encoding on ``split`` rows).

    Args:
        models: ``{name: FeatureModel}`` or ``RunInfo``s (see :func:`compare_runs` to read run folders).
        k: top-k entries per model: an int count or a fraction of each model's own input size.
        part: ranks the top-k entries and gives the vectors of the cosine/Spearman measures.
        latent: which latent's weights to use for a model with ``latent_dim > 1``.
        lm: the base model; enables cross-encoding (needs each model's classes and data).
        data: pair data per model name for cross-encoding (default: each run's ``data.csv``).
        class_data: data naming the classes of cross-encoding's class means (see ``cross_encoding``).

    Raises:
        ValueError: fewer than two models, duplicate names, an unknown part.
        ArtifactError: the models map one parameter name to different shapes (different base models).
    """
    runs = _as_runs(models)
    if len(runs) < 2:
        raise ValueError(f"a comparison needs at least two feature models, got {len(runs)}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names repeat: {names}; give each model its own name")
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    bases = {r.base_model for r in runs if r.base_model}
    if len(bases) > 1:
        raise ValueError(f"the feature models come from different base models {sorted(bases)}; "
                         "compare models of one base model")
    maps = []
    for r in runs:
        if r.model.param_map is None:
            raise ValueError(f"{r.name} has no param_map; it cannot be placed in base-model coordinates")
        maps.append(r.model.param_map)
    space = KeySpace.from_maps(maps)
    topks = [topk_of(r.model, r.name, space, k, part, latent) for r in runs]
    vectors = [sparse_vector(r.model, space, part, min(latent, r.model.latent_dim - 1)) for r in runs]
    regions = intersections(topks)
    cross = None
    if lm is not None:
        cross = cross_encoding(lm, runs, data=data, split=split, max_rows=max_rows, class_data=class_data)
        for r, own in zip(runs, np.diag(cross.correlation)):
            if r.encoder_r is None:
                r.encoder_r, r.encoder_r_split = float(own), split
    return Comparison(runs, str(part), k, topks, similarity_matrices(topks, vectors), regions,
                      group_table(topks, "layer"), group_table(topks, "layer", weight="mass"),
                      group_table(topks, "module"), cross,
                      {"base_model": next(iter(bases), None), "latent": latent, "parameters": len(space.names),
                       "topk_union": int(sum(regions.values()))})


def compare_runs(paths: Sequence[str | Path], *, k: int | float = DEFAULT_TOPK, part: Part = "decoder-weight",
                 cross: bool = True, lm: LanguageModel | None = None, split: str = "test",
                 max_rows: int | None = 32) -> Comparison:
    """:func:`compare_models` on training-run folders. With ``cross`` the base model recorded in the runs
    is loaded (unless ``lm`` is given) for cross-encoding."""
    runs = load_runs(paths)
    if cross and lm is None:
        from ...models import load_model

        bases = {r.base_model for r in runs}
        if len(bases) != 1 or None in bases:
            raise ValueError(f"cannot tell the base model for cross-encoding (runs record {sorted(map(str, bases))}); "
                             "pass lm= or turn cross-encoding off")
        lm = load_model(str(next(iter(bases))))
    return compare_models(runs, k=k, part=part, lm=lm if cross else None, split=split, max_rows=max_rows)
