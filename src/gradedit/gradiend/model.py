"""``ModelWithGradiend``: a base language model together with a trained GRADIEND feature model."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from ..data.schema import PairDataset
from ..edits import WeightEdit
from ..errors import EditError
from ..models import LanguageModel, load_model
from ..models.dispatch import refuse_dispatched
from ..models.param_map import ParamMap
from .encode import encode_rows
from .feature_model import FeatureModel
from .gradients import GradientEngine, Source
from .mlm_head import MLMHead
from .rewrite_io import save_rewrite
from .rows import Rows, rows_of

logger = logging.getLogger(__name__)

#: the folder of a run's MLM head, beside its ``model/`` (``TrainConfig.mlm_head=True``)
HEAD_FOLDER = "mlm_head"


def check_finite(**values: Any) -> None:
    """EditError when a float (learning rate, feature factor) is NaN or infinite: it would fill the model with NaN."""
    for name, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise EditError(f"{name} must be finite, got {v!r}; give a finite number such as the decoder selection's")


class ModelWithGradiend:
    """Base model + feature model: encode rows, rewrite the base model.

    Args:
        lm: the base model (the one the feature model was trained on).
        feature_model: a trained ``FeatureModel`` with a ``param_map``.
        source: which gradient the encoder reads (``factual`` | ``alternative`` | ``diff``);
            defaults to the one recorded in the feature model's metadata.
        mlm_head: the MLM head the feature model was trained through (causal LMs with
            ``TrainConfig.mlm_head``): encodings then read gradients of the head's logits. Rewrites and
            the decoder evaluation act on the base model as always.
    """

    def __init__(self, lm: LanguageModel, feature_model: FeatureModel, source: Source | None = None,
                 mlm_head: MLMHead | None = None) -> None:
        if feature_model.param_map is None:
            raise ValueError("the feature model has no param_map; it cannot be tied to a base model")
        named = dict(lm.model.named_parameters())
        missing = [n for n in feature_model.param_map.names if n not in named]
        if missing:
            raise ValueError(f"{lm.name} has no parameters {missing[:3]}...; was the feature model trained on another model?")
        wrong = [n for n, s in zip(feature_model.param_map.names, feature_model.param_map.shapes)
                 if tuple(named[n].shape) != tuple(s)]
        if wrong:
            raise ValueError(f"parameter shapes differ from the feature model's for {wrong[:3]}")
        self.lm = lm
        self.feature_model = feature_model
        self.source: Source = source or feature_model.metadata.get("source", "factual")
        if mlm_head is None and feature_model.metadata.get("mlm_head"):
            raise ValueError("the feature model was trained through an MLM head; pass mlm_head=MLMHead.from_pretrained("
                             "<run>/mlm_head, lm)")
        self.mlm_head = mlm_head
        self.engine = GradientEngine(lm, {n: named[n] for n in feature_model.param_map.names}, head=mlm_head)

    @classmethod
    def from_pretrained(cls, path: str | Path, lm: LanguageModel | None = None, *,
                        feature_device: str | torch.device | None = None) -> ModelWithGradiend:
        """Reload a saved run: ``path`` is a feature-model folder or an experiment dir holding ``model/``.

        The base model is loaded from the id recorded in the metadata unless ``lm`` is given; the feature
        model goes to ``feature_device`` (``None``: the base model's device).
        """
        path = Path(path)
        if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
            path = path / "model"
        fm = FeatureModel.from_pretrained(path)
        if lm is None:
            base = fm.metadata.get("base_model")
            if not base:
                raise ValueError(f"{path} records no base_model; pass lm=load_model(...)")
            lm = load_model(base)
        fm = fm.to(lm.device if feature_device is None else feature_device)
        head = None
        if fm.metadata.get("mlm_head"):  # the run's head sits beside model/
            head = MLMHead.from_pretrained(path.parent / HEAD_FOLDER, lm).to(lm.device)
        return cls(lm, fm, mlm_head=head)

    @property
    def param_map(self) -> ParamMap:
        """The feature model's ``param_map``: the base-model entries its inputs are."""
        pmap = self.feature_model.param_map
        if pmap is None:
            raise ValueError("the feature model has no param_map; it cannot be tied to a base model")
        return pmap

    def save_pretrained(self, path: str | Path) -> Path:
        return self.feature_model.save_pretrained(path)

    # -- encoding ------------------------------------------------------------------------------------
    def encode(self, data: PairDataset, *, batch_size: int = 8, method: str = "jvp") -> np.ndarray:
        """One encoded value per row of ``data`` (latent_dim 1) -> [N]; [N, k] for k > 1."""

        values = encode_rows(self.engine, self.feature_model, self.rows(data), self.source,
                             batch_size=batch_size, method=method)
        return values[:, 0] if self.feature_model.latent_dim == 1 else values

    def rows(self, data: PairDataset) -> Rows:
        """The model inputs of ``data`` for this model's gradients (the MLM head's full texts with one)."""
        rows = rows_of(data, self.lm)
        if self.mlm_head is None:
            return rows
        return Rows(self.mlm_head.texts(data), rows.factual, rows.alternative, rows.labels, rows.classes)

    def encode_rows(self, rows: Rows, *, batch_size: int = 8, method: str = "jvp") -> np.ndarray:
        """Encoded values ``[N, k]`` of prepared model inputs (texts, token ids) with this model's source."""
        return encode_rows(self.engine, self.feature_model, rows, self.source, batch_size=batch_size, method=method)

    # -- rewriting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def apply_update_(self, model: torch.nn.Module, learning_rate: float, feature_factor: float) -> None:
        """In place: θ ← θ + learning_rate · decoder(feature_factor) on the mapped entries."""
        check_finite(learning_rate=learning_rate, feature_factor=feature_factor)
        named = dict(model.named_parameters())
        params = {n: named[n].data for n in self.param_map.names}
        # the update [n] is made where the feature model lives and moved to the base model once
        vec = self.feature_model.update_vector(feature_factor, learning_rate).to(params[self.param_map.names[0]].device)
        self.param_map.scatter_add_(params, vec)

    def as_edit(self, learning_rate: float, feature_factor: float) -> WeightEdit:
        """The rewrite ``learning_rate · decoder(feature_factor)`` as a ``WeightEdit`` (indexed on the param map).

        ``with mwg.as_edit(lr, ff).applied(lm.model):`` equals ``mwg.applied(lr, ff)``; ``edit * a`` rescales it.
        """
        check_finite(learning_rate=learning_rate, feature_factor=feature_factor)
        vec = self.feature_model.update_vector(feature_factor, learning_rate).detach().to(self.lm.device)
        return WeightEdit.indexed(self.param_map, vec, metadata={
            "method": "gradiend", "base_model": self.lm.name,
            "learning_rate": float(learning_rate), "feature_factor": float(feature_factor)})

    @contextlib.contextmanager
    def applied(self, learning_rate: float, feature_factor: float) -> Iterator[None]:
        """Apply the rewrite to ``self.lm.model`` in place for the ``with`` block; restore bit-exactly.

        Only the mapped entries are snapshotted (not the model), so a sweep costs no copies.
        """
        pmap = self.param_map
        named = dict(self.lm.model.named_parameters())
        params = {n: named[n].data for n in pmap.names}
        with torch.no_grad():
            saved = pmap.gather(params)
        try:
            self.apply_update_(self.lm.model, learning_rate, feature_factor)
            yield
        finally:
            pmap.assign_(params, saved)

    def rewrite_base_model(self, learning_rate: float, feature_factor: float, *, inplace: bool = False,
                           output_dir: str | Path | None = None, info: dict[str, Any] | None = None) -> PreTrainedModel:
        """The base model rewritten by ``learning_rate · decoder(feature_factor)``: a plain HF model.

        ``inplace=False`` (default) returns a modified copy and leaves ``self.lm`` untouched.
        With ``output_dir`` the model, its tokenizer and ``rewrite_info.json`` are saved there.
        """
        check_finite(learning_rate=learning_rate, feature_factor=feature_factor)  # before the copy
        refuse_dispatched(self.lm.model, "rewrite_base_model (a copy of the whole rewritten model)")
        model = self.lm.model if inplace else copy.deepcopy(self.lm.model)
        self.apply_update_(model, learning_rate, feature_factor)
        if output_dir is not None:

            save_rewrite(model, self.lm, Path(output_dir), {
                "learning_rate": learning_rate, "feature_factor": feature_factor,
                "base_model": self.lm.name, **self.feature_model.metadata, **(info or {})})
        return model
