"""``TrainConfig``: every knob of GRADIEND training, validated; unknown keys are an error."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..feature_model import PARTS, Part
from ..gradients import SOURCES, Source

#: ``TrainConfig.gradient_store`` values
GRADIENT_STORE_CHOICES: tuple[str, ...] = ("off", "fp32", "bf16")


@dataclass
class TrainConfig:
    """GRADIEND training configuration.

    Attributes:
        experiment_dir: every artefact of the run goes below this folder.
        source: gradient fed to the encoder: ``"factual"``, ``"alternative"`` or ``"diff"`` (default: with
            ``"diff"`` neutral rows all encode to ``tanh(b_e)``; read the encoder with
            ``evaluate_encoder(source="factual")`` for a neutral distribution).
        target: gradient the decoder reconstructs (same choices); ``"diff"`` in the paper.
        params: glob patterns of base-model parameters forming the input space (``None``: all
            transformer-block weight matrices).
        include_embeddings: add the embedding matrices to the input space.
        latent_dim: number of feature neurons (1 in the paper).
        learning_rate: AdamW learning rate of the encoder–decoder.
        weight_decay: AdamW weight decay.
        train_batch_size: gradient examples per optimiser step.
        rows_per_gradient: data rows averaged into one gradient example (1 = per-row gradients); the
            rows of one example share their label and factual class.
        max_steps: optimiser steps per seed.
        eval_steps: evaluate the encoder on the validation split every this many steps (10: early
            stopping can keep an early model, which measured better for rewriting).
        eval_max_size: cap on validation rows per evaluation (balanced over classes).
        early_stopping_patience: stop a seed after this many evaluations in a row without a
            validation |r| above the best so far by more than ``early_stopping_min_delta``
            (``None``: always train ``max_steps``); the best step's model is kept either way.
        early_stopping_min_delta: the smallest |r| gain that counts as an improvement.
        seed: first seed; further seeds are seed+1, seed+2, ...
        max_seeds: seeds to try at most.
        min_convergent_seeds: stop once this many seeds converged.
        min_correlation: convergence needs validation |r| at least this.
        min_class_mean: convergence needs class means of opposite sign with |mean| at least this.
        pre_prune_topk: keep only the top entries (int count or fraction in (0, 1]) by mean |diff
            gradient| over ``pre_prune_samples`` training rows BEFORE training; ``None`` = no pre-pruning.
        pre_prune_samples: rows used to rank entries for pre-pruning.
        post_prune_topk: after training, keep the top entries by ``post_prune_part`` importance
            (default 5 %; ``None`` keeps all).
        post_prune_part: ``encoder-weight``, ``decoder-weight``, ``decoder-bias`` or ``decoder-sum``.
        use_identity_rows: also train on rows with label 0 (factual == alternative class).
        resume: continue from the last checkpoint of an interrupted run with the same config.
        gradient_store: ``"off"`` (default) computes every training row's gradient at every step;
            ``"fp32"`` / ``"bf16"`` extracts each row's source/target gradient once into
            ``experiment_dir/gradient_store`` (sharded safetensors, reused by later runs on the same
            data, base model and input space) and trains every epoch and seed from it. ``"fp32"`` trains
            bit-identically to ``"off"``; ``"bf16"`` halves the disk use and rounds the stored gradients.
            Disk use is rows x input entries x 4 (fp32) or 2 (bf16) bytes, per distinct source/target.
    """

    experiment_dir: str = "runs/gradiend"
    source: Source = "diff"
    target: Source = "diff"
    params: list[str] | None = None
    include_embeddings: bool = False
    latent_dim: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    train_batch_size: int = 4
    rows_per_gradient: int = 1
    max_steps: int = 200
    eval_steps: int = 10
    eval_max_size: int = 64
    early_stopping_patience: int | None = 3
    early_stopping_min_delta: float = 1e-3
    seed: int = 0
    max_seeds: int = 1
    min_convergent_seeds: int = 1
    min_correlation: float = 0.5
    min_class_mean: float = 0.1
    pre_prune_topk: float | int | None = None
    pre_prune_samples: int = 16
    post_prune_topk: float | int | None = 0.05
    post_prune_part: Part = "decoder-weight"
    use_identity_rows: bool = False
    resume: bool = True
    gradient_store: str = "off"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.experiment_dir = str(self.experiment_dir)
        for name in ("source", "target"):
            if getattr(self, name) not in SOURCES:
                raise ValueError(f"{name} must be one of {SOURCES}, got {getattr(self, name)!r}")
        positive_ints = ["latent_dim", "train_batch_size", "rows_per_gradient", "max_steps", "eval_steps",
                         "eval_max_size", "max_seeds", "min_convergent_seeds", "pre_prune_samples"]
        for name in positive_ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.min_convergent_seeds > self.max_seeds:
            raise ValueError("min_convergent_seeds cannot exceed max_seeds")
        p = self.early_stopping_patience
        if p is not None and (not isinstance(p, int) or isinstance(p, bool) or p < 1):
            raise ValueError(f"early_stopping_patience must be a positive integer or None, got {p!r}")
        if not self.early_stopping_min_delta >= 0:
            raise ValueError(f"early_stopping_min_delta must be >= 0, got {self.early_stopping_min_delta}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("pre_prune_topk", "post_prune_topk"):
            _check_topk(name, getattr(self, name))
        if self.gradient_store not in GRADIENT_STORE_CHOICES:
            raise ValueError(f"gradient_store must be one of {GRADIENT_STORE_CHOICES}, got {self.gradient_store!r}")
        if self.post_prune_part not in PARTS:
            raise ValueError(f"post_prune_part must be one of {PARTS}, got {self.post_prune_part!r}")
        if self.params is not None:
            if isinstance(self.params, str) or not all(isinstance(p, str) for p in self.params):
                raise ValueError("params must be a list of glob patterns, e.g. ['*.mlp.*']")
            self.params = list(self.params)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated; unknown keys raise)."""
        merged = self.to_dict()
        merged.update(changes)
        return TrainConfig.from_dict(merged)

    def training_fingerprint(self) -> dict[str, Any]:
        """The fields that change what training produces (used to decide whether resuming is valid)."""
        d = self.to_dict()
        if d["gradient_store"] != "bf16":  # "fp32" trains bit-identically to "off"; older runs stay resumable
            d.pop("gradient_store")
        for k in ("experiment_dir", "resume", "max_seeds", "min_convergent_seeds", "max_steps", "eval_steps",
                  "post_prune_topk", "post_prune_part", "early_stopping_patience", "early_stopping_min_delta"):
            d.pop(k)
        return d


def _check_topk(name: str, v: float | int | None) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} must be an int count or a float fraction, got {v!r}")
    if isinstance(v, float) and not 0.0 < v <= 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1], got {v}")
    if isinstance(v, int) and v < 1:
        raise ValueError(f"{name} as a count must be >= 1, got {v}")
