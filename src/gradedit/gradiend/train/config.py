"""``TrainConfig``: every knob of GRADIEND training, validated; unknown keys are an error."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..._config import ConfigFields
from ...errors import ConfigError
from ..feature_model import Part
from ..gradients import Source

#: ``TrainConfig.gradient_store`` values
GRADIENT_STORE_CHOICES: tuple[str, ...] = ("off", "fp32", "bf16")
#: ``TrainConfig.optimizer_state`` values (precision of the AdamW moments; the weights stay fp32)
OPTIMIZER_STATE_CHOICES: tuple[str, ...] = ("fp32", "bf16", "bf16-sr")
#: device types ``TrainConfig.feature_device`` accepts (``meta`` holds no numbers; ``mps`` lacks the fused
#: step's float64 sums; others are untested)
FEATURE_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")


@dataclass
class TrainConfig(ConfigFields):
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
        early_stopping_min_delta: the smallest |r| gain that counts as an improvement, for stopping and
            for the kept model alike (kept: the last evaluation that improved by more than this).
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
        mlm_head: causal LMs only: take the gradients through an MLM head that reads context on both
            sides of ``[MASK]`` (:mod:`gradedit.gradiend.mlm_head`) instead of the LM's next-token logits.
            ``False`` (default): off; ``True``: train one on the run's data (train rows fit it, val rows
            pick the pooling length) into ``experiment_dir/mlm_head``, reused while data and base model
            match; a path: a head saved by ``MLMHead.save_pretrained``.
        mlm_head_pooling: pooling lengths tried when the head is trained (hidden states pooled from the
            placeholder on; the lowest validation loss wins).
        optimizer_in_backward: ``True`` steps each encoder-decoder weight with AdamW inside backward, the
            moment autograd has accumulated its gradient, and frees that gradient at once (torch's
            optimizer-in-backward pattern). Bit-identical to ``False`` (same fused AdamW kernel per
            tensor) but measured to save no peak memory here: the decoder's two gradients and the
            reconstruction's gradient come from one autograd node, so 3n gradient-sized tensors exist at
            once either way. A NaN/Inf gradient stops training as before, but weights stepped earlier in
            that backward keep their update in memory (never on disk: ``last/`` keeps the previous checkpoint).
        fused_step: ``True`` computes the MSE loss, the gradients and the AdamW update a chunk of the input
            space at a time without autograd (:mod:`gradedit.gradiend.train.fused`): no reconstruction,
            gradient or MSE temporary of n entries exists: the step's peak drops by 4n numbers (the reconstruction,
            its gradient, the decoder's two gradients; measured with one example per step, more with a larger
            batch), 2n of which the loop's stacked batch copies take back today. Equal to the default up to floating-point summation
            order (measured on a tiny model: max |Δw| ~1e-6 after 20 steps).
        optimizer_state: precision of the AdamW moments (exp_avg, exp_avg_sq): ``"fp32"`` (default),
            ``"bf16"`` (half their memory: 6n fp32 numbers -> 6n bf16; the update is computed in fp32 and
            the moments rounded to nearest) or ``"bf16-sr"`` (rounded stochastically, unbiased; the random
            bits follow from the model's init seed and the step, so resuming is exact). The weights stay
            fp32 either way; bf16 moments change the trained model slightly.
        feature_device: where the feature model lives (its 3n weights, AdamW moments, the gradient vectors it
            reads): ``None`` (default) = the base model's device; ``"cpu"``, ``"cuda"`` (the current GPU: the
            rank's own under a launcher) or ``"cuda:N"``. E.g. the base model on ``cuda:0``
            and the feature model with its optimiser state on ``"cuda:1"``, or on ``"cpu"`` when the GPU is too
            small. Each example's gradient vectors move to it once, before the encoder; the decoder's update
            moves to the base model for a rewrite; checkpoints are device-independent. Not part of the
            training fingerprint (a run may resume on another device).
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
    mlm_head: bool | str = False
    mlm_head_pooling: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    optimizer_in_backward: bool = False
    fused_step: bool = False
    optimizer_state: str = "fp32"
    feature_device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS_NAME: ClassVar[str] = "TrainConfig key(s)"

    def __post_init__(self) -> None:
        bad = self.config_error
        if isinstance(self.experiment_dir, os.PathLike):
            self.experiment_dir = os.fspath(self.experiment_dir)
        if isinstance(self.params, str):
            raise bad(f"params must be a list of glob patterns, e.g. ['*.mlp.*'], got the single string {self.params!r}")
        if isinstance(self.params, tuple):
            self.params = list(self.params)
        self.check_fields()  # types (source, target, post_prune_part choices included), finite floats
        for name in ("latent_dim", "train_batch_size", "rows_per_gradient", "max_steps", "eval_steps",
                     "eval_max_size", "max_seeds", "min_convergent_seeds", "pre_prune_samples"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.min_convergent_seeds > self.max_seeds:
            raise bad(f"min_convergent_seeds ({self.min_convergent_seeds}) cannot exceed max_seeds ({self.max_seeds}); "
                      "raise max_seeds or lower min_convergent_seeds")
        p = self.early_stopping_patience
        if p is not None and p < 1:
            raise bad(f"early_stopping_patience must be a positive integer or None, got {p!r}")
        if not self.early_stopping_min_delta >= 0:
            raise bad(f"early_stopping_min_delta must be >= 0, got {self.early_stopping_min_delta}")
        if not self.learning_rate > 0:
            raise bad(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise bad(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("pre_prune_topk", "post_prune_topk"):
            _check_topk(name, getattr(self, name))
        if isinstance(self.mlm_head_pooling, tuple):
            self.mlm_head_pooling = list(self.mlm_head_pooling)
        if not self.mlm_head_pooling or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                            for n in self.mlm_head_pooling):
            raise bad(f"mlm_head_pooling must be a non-empty list of positive ints, got {self.mlm_head_pooling!r}")
        if isinstance(self.mlm_head, str) and not self.mlm_head.strip():
            raise bad("mlm_head must be True/False or the path of a saved MLM head, got an empty string")
        if self.gradient_store not in GRADIENT_STORE_CHOICES:
            raise bad(f"gradient_store must be one of {GRADIENT_STORE_CHOICES}, got {self.gradient_store!r}")
        if self.optimizer_state not in OPTIMIZER_STATE_CHOICES:
            raise bad(f"optimizer_state must be one of {OPTIMIZER_STATE_CHOICES}, got {self.optimizer_state!r}")
        if self.fused_step and self.optimizer_in_backward:
            raise bad("fused_step and optimizer_in_backward are two ways to make the update; set one of them")
        if self.feature_device is not None:
            _check_feature_device(self.feature_device)

    # from_dict / to_dict / replace: ConfigFields (unknown keys raise ConfigError with the known ones)
    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """The config saved in ``path`` (JSON); a file that is not a JSON object raises ConfigError."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not a readable TrainConfig ({type(err).__name__}: {err}); "
                              "give a JSON object of TrainConfig fields") from None
        return cls.from_dict(values)

    def training_fingerprint(self) -> dict[str, Any]:
        """The fields that change what training produces (used to decide whether resuming is valid)."""
        d = self.to_dict()
        if d["gradient_store"] != "bf16":  # "fp32" trains bit-identically to "off"; older runs stay resumable
            d.pop("gradient_store")
        d.pop("optimizer_in_backward")  # bit-identical updates; the checkpoint format is the same either way
        if d["optimizer_state"] == "fp32":  # the default: older runs stay resumable
            d.pop("optimizer_state")
        if not d["fused_step"]:
            d.pop("fused_step")
        d.pop("feature_device")  # where the feature model lives does not change what it learns (float rounding aside)
        if d["mlm_head"] is False:  # without a head the pooling lengths change nothing; older runs stay resumable
            d.pop("mlm_head")
            d.pop("mlm_head_pooling")
        for k in ("experiment_dir", "resume", "max_seeds", "min_convergent_seeds", "max_steps", "eval_steps",
                  "post_prune_topk", "post_prune_part", "early_stopping_patience", "early_stopping_min_delta"):
            d.pop(k)
        return d


def _check_topk(name: str, v: float | int | None) -> None:
    if isinstance(v, float) and not 0.0 < v <= 1.0:
        raise ConfigError(f"{name} as a fraction must be in (0, 1], got {v}; e.g. 0.05 keeps 5 %")
    if isinstance(v, int) and v < 1:
        raise ConfigError(f"{name} as a count must be >= 1, got {v}; give a count of entries or a fraction")


def _check_feature_device(value: str) -> None:
    fix = "give 'cpu', 'cuda', 'cuda:N' (or None: the base model's device)"
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"feature_device {value!r} is not a device; {fix}") from None
    if dev.type not in FEATURE_DEVICE_TYPES:
        raise ConfigError(f"feature_device {value!r} is a {dev.type!r} device, which cannot train a feature model; {fix}")


def resolve_feature_device(value: str | None, base: torch.device) -> torch.device:
    """The device of the feature model for ``TrainConfig.feature_device`` ``value`` next to a base model on
    ``base`` (``None``: ``base``). ``"cuda"`` becomes the current GPU's index (what tensors report).

    Raises:
        ConfigError: a CUDA device on a machine without CUDA, or a GPU index the machine lacks.
    """
    if value is None:
        return torch.device(base)
    _check_feature_device(value)
    dev = torch.device(value)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"feature_device={value!r} but this machine has no CUDA; set feature_device='cpu' or "
                              "None (the base model's device)")
        count = torch.cuda.device_count()
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= count:
            raise ConfigError(f"feature_device={value!r} but this machine has {count} GPU(s) (cuda:0..cuda:{count - 1}); "
                              "choose one of them")
    return dev
