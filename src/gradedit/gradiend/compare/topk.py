"""Top-k parameter entries of feature models in BASE-MODEL coordinates, so differently pruned models
(different ``ParamMap``s) compare entry by entry.

Every entry a feature model reads is identified by a *global key*: ``base[name] + flat_index``, where
``base`` places the parameters of all compared models one after another (:class:`KeySpace`). Two
models that both read ``model.layers.3.mlp.down_proj.weight`` flat index 17 give that entry the same
key, whatever their pre-/post-pruning kept; the key maps back to (parameter name, row, col).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._files import write_json_atomic, write_text_atomic
from ...errors import ArtifactError
from ...models.param_map import ParamMap
from ..feature_model import PARTS, FeatureModel, Part

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["KeySpace", "SparseVector", "TopK", "export_topk", "layer_of", "module_of", "part_values",
           "sparse_vector", "topk_of"]

_LAYER = re.compile(r"(?:^|\.)(\d+)(?=\.)")


def layer_of(name: str) -> int | None:
    """The block index of a parameter name (``model.layers.3.mlp...`` → 3, ``transformer.h.0...`` → 0);
    ``None`` for parameters outside the blocks (embeddings, final norm)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def module_of(name: str) -> str:
    """The module type of a parameter name, without the block prefix and the ``.weight``/``.bias``
    suffix: ``model.layers.3.mlp.down_proj.weight`` → ``mlp.down_proj``; outside the blocks the
    module path itself (``model.embed_tokens``)."""
    stem = re.sub(r"\.(weight|bias)$", "", name)
    m = _LAYER.search(stem)
    return stem[m.end() + 1:] if m else stem


@dataclass(frozen=True, eq=False)
class KeySpace:
    """Base-model parameters of several feature models laid end to end: ``key = bases[i] + flat``.

    Attributes:
        names: parameter names (in first-seen order over the models).
        shapes: each parameter's full shape.
        bases: ``[len(names)]`` int64, the first key of each parameter.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    bases: np.ndarray

    @classmethod
    def from_maps(cls, maps: Sequence[ParamMap]) -> KeySpace:
        """The key space of the parameters any of ``maps`` reads.

        Raises:
            ArtifactError: one parameter name has two shapes (the models come from different base models).
        """
        shapes: dict[str, tuple[int, ...]] = {}
        for pm in maps:
            for name, shape in zip(pm.names, pm.shapes):
                seen = shapes.setdefault(name, tuple(shape))
                if seen != tuple(shape):
                    raise ArtifactError(f"parameter {name} has shape {seen} in one feature model and {tuple(shape)} "
                                        "in another; compare feature models of the same base model only")
        names = tuple(shapes)
        sizes = [math.prod(shapes[n]) for n in names]
        bases = np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.int64)]).astype(np.int64)
        return cls(names, tuple(shapes[n] for n in names), bases)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"parameter {name!r} is not in this key space") from None

    def keys(self, pm: ParamMap) -> np.ndarray:
        """Global keys of ``pm``'s entries, in ``pm``'s input-space order: ``[pm.size]`` int64."""
        out = np.empty(pm.size, dtype=np.int64)
        for name, idx, start, size in zip(pm.names, pm.indices, pm.offsets, pm.sizes):
            base = self.bases[self.index(name)]
            flat = np.arange(size, dtype=np.int64) if idx is None else idx.numpy().astype(np.int64)
            out[start:start + size] = base + flat
        return out

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(parameter index [m], flat index [m])`` of global keys."""
        keys = np.asarray(keys, dtype=np.int64)
        which = np.searchsorted(self.bases, keys, side="right") - 1
        return which, keys - self.bases[which]

    def describe(self, keys: np.ndarray) -> dict[str, list[Any]]:
        """Columns ``param``, ``flat_index``, ``row``, ``col``, ``layer``, ``module`` of each key.

        ``row``/``col`` index the parameter as stored (``[out, in]`` for ``nn.Linear``, ``[in, out]`` for
        GPT-2's ``Conv1D``); a 1-D parameter has ``row = flat_index`` and ``col = None``.
        """
        which, flat = self.locate(keys)
        cols: dict[str, list[Any]] = {k: [] for k in ("param", "flat_index", "row", "col", "layer", "module")}
        for w, f in zip(which.tolist(), flat.tolist()):
            name, shape = self.names[w], self.shapes[w]
            width = shape[-1] if len(shape) >= 2 else None
            cols["param"].append(name)
            cols["flat_index"].append(f)
            cols["row"].append(f if width is None else f // width)
            cols["col"].append(None if width is None else f % width)
            cols["layer"].append(layer_of(name))
            cols["module"].append(module_of(name))
        return cols


def part_values(fm: FeatureModel, part: Part = "decoder-weight", latent: int = 0) -> torch.Tensor:
    """The signed per-input values of a part ``[n]``: ``W_e[latent]``, ``W_d[:, latent]``, ``b_d`` or
    ``W_d.sum(1) + b_d`` (``|values|`` is ``fm.importance(part)`` when ``latent_dim == 1``)."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    if not 0 <= latent < fm.latent_dim:
        raise ValueError(f"latent {latent} out of range: the feature model has {fm.latent_dim} latent(s)")
    with torch.no_grad():
        if part == "encoder-weight":
            return fm.encoder_weight[latent].detach().float()
        if part == "decoder-weight":
            return fm.decoder_weight[:, latent].detach().float()
        if fm.decoder_bias is None:
            raise ValueError(f"part={part!r} needs a decoder bias (this feature model has none)")
        if part == "decoder-bias":
            return fm.decoder_bias.detach().float()
        return (fm.decoder_weight.sum(1) + fm.decoder_bias).detach().float()


@dataclass(frozen=True, eq=False)
class SparseVector:
    """One feature model's part as a vector over global keys: ``keys [m]`` sorted ascending, ``values [m]``."""

    keys: np.ndarray
    values: np.ndarray

    def norm(self) -> float:
        return float(np.linalg.norm(self.values))


def sparse_vector(fm: FeatureModel, space: KeySpace, part: Part = "decoder-weight", latent: int = 0) -> SparseVector:
    """``part_values`` of ``fm`` over its whole support (every entry its ``param_map`` reads), keyed globally."""
    pm = _param_map(fm)
    keys = space.keys(pm)
    values = part_values(fm, part, latent).numpy().astype(np.float64)
    order = np.argsort(keys, kind="stable")
    return SparseVector(keys[order], values[order])


@dataclass(frozen=True, eq=False)
class TopK:
    """The ``k`` most important entries of one feature model, most important first.

    Attributes:
        model: the model's name in the comparison.
        part: which part ranked the entries (see ``FeatureModel.importance``).
        keys: ``[k]`` global keys (see :class:`KeySpace`), in rank order.
        values: ``[k]`` signed values of the part (``part_values``).
        importance: ``[k]`` the ranking score (``FeatureModel.importance(part)``), descending.
        space: the key space the keys live in.
    """

    model: str
    part: str
    keys: np.ndarray
    values: np.ndarray
    importance: np.ndarray
    space: KeySpace

    def __len__(self) -> int:
        return int(self.keys.size)

    def to_frame(self) -> pd.DataFrame:
        """One row per entry: ``rank`` (1 = most important), ``param``, ``flat_index``, ``row``, ``col``,
        ``layer``, ``module``, ``value`` (signed), ``importance``."""
        import pandas as pd

        cols = self.space.describe(self.keys)
        frame = pd.DataFrame({"rank": np.arange(1, len(self) + 1), **cols, "value": self.values,
                              "importance": self.importance})
        for c in ("row", "col", "layer"):
            frame[c] = frame[c].astype("Int64")
        return frame


def _param_map(fm: FeatureModel) -> ParamMap:
    if fm.param_map is None:
        raise ValueError("a feature model without a param_map cannot be compared; save it with its param_map")
    return fm.param_map


def topk_of(fm: FeatureModel, name: str, space: KeySpace, k: int | float, part: Part = "decoder-weight",
            latent: int = 0) -> TopK:
    """The top-``k`` entries of ``fm`` by ``part`` importance (ties broken as ``torch.topk``).

    ``k``: an int count (clamped to the model's input size, with a log line) or a float fraction of
    the model's OWN input size — so differently pruned models can yield sets of different sizes.
    """
    pm = _param_map(fm)
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > fm.input_dim:
        logger.info("%s has only %d inputs; its top-k set is all of them (k=%d asked)", name, fm.input_dim, k)
        k = fm.input_dim
    pos = fm.topk(k, part).cpu()
    imp = fm.importance(part).float()[pos].numpy().astype(np.float64)
    values = part_values(fm, part, latent if fm.latent_dim > 1 else 0)[pos].numpy().astype(np.float64)
    keys = space.keys(pm)[pos.numpy()]
    return TopK(name, str(part), keys, values, imp, space)


def export_topk(topks: Sequence[TopK], out: str | Path) -> list[Path]:
    """Write ``topk.csv`` (one row per model and entry) and ``topk.json`` (per model: its entries) into
    ``out``; each atomically. Returns the two paths."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = [t.to_frame().assign(model=t.model, part=t.part) for t in topks]
    table = pd.concat(frames, ignore_index=True)
    table = table[["model", "part", *[c for c in table.columns if c not in ("model", "part")]]]
    csv_path, json_path = out / "topk.csv", out / "topk.json"
    write_text_atomic(csv_path, table.to_csv(index=False))
    payload = {t.model: {"part": t.part, "k": len(t), "entries": _records(f)} for t, f in zip(topks, frames)}
    write_json_atomic(json_path, payload)
    return [csv_path, json_path]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    import pandas as pd

    ints, floats = ("rank", "row", "col", "flat_index"), ("value", "importance")
    recs = []
    for rec in frame[["rank", "param", *ints[1:3], "flat_index", *floats]].to_dict("records"):
        recs.append({k: None if pd.isna(v) else int(v) if k in ints else float(v) if k in floats else str(v)
                     for k, v in rec.items()})
    return recs
