"""Configuration of a parameter decomposition (validated; unknown keys are an error)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from .._config import ConfigFields
from ..errors import ConfigError, DecomposeConfigError

__all__ = ["DecomposeConfig", "Objective"]

Objective = Literal["layer", "output"]

@dataclass
class DecomposeConfig(ConfigFields):
    """Hyper-parameters of :func:`gradedit.decompose.decompose` (SPD-style, Bushnaq et al. 2025).

    Every loss is scale-free, so coefficients carry over between a toy model and an LM:
    faithfulness is ``Σ‖W − (VU)ᵀ‖² / Σ‖W‖²``, layer reconstruction is the masked layer's MSE divided
    by the mean square of the layer's bias-free target output, output reconstruction is KL (LMs) or
    MSE divided by the mean square of the target output.

    Attributes:
        objective: ``"layer"`` reconstructs each decomposed layer's own output from cached inputs
            (cheap); ``"output"`` reconstructs the whole model's output (SPD's objective).
        steps: optimiser steps of the main phase (after the faithfulness warm-up).
        batch_size: rows per step: tokens (``"layer"``) or examples / packed text blocks (``"output"``).
        seed: seeds initialisation, batch sampling and mask noise (one ``torch.Generator``).
        lr: Adam learning rate of the main phase; ``lr_schedule`` ``"cosine"`` or ``"constant"``,
            decaying to ``lr * lr_final_frac`` after a linear warm-up of ``lr_warmup_frac * steps``.
        ci_lr: learning rate of the importance MLPs (``None``: ``lr``). Adam moves every parameter by
            about ``lr`` per step, so components of a large model (entries ~0.03) want a far smaller ``lr``
            than the O(1) importance MLPs.
        faithfulness_warmup_steps / faithfulness_warmup_lr: steps fitting ``(VU)ᵀ`` to ``W`` alone,
            before the main phase (as in SPD, from a random ``U``); ``None`` or 0: no warm-up, ``U`` starts
            at the (ridge) least-squares fit to ``W`` instead.
        faithfulness_rows: in the main phase, estimate faithfulness from this many random output rows
            per layer (unbiased, cheaper for wide layers); ``None``: every row.
        faithfulness_coeff, stoch_coeff, layerwise_coeff, importance_coeff: loss weights;
            ``layerwise_coeff`` (one layer masked at a time) is used by ``objective="output"`` only.
        p_start, p_end, p_anneal_start_frac, p_anneal_end_frac: the importance-minimality exponent
            ``p`` of ``Σ|g|^p`` falls linearly from ``p_start`` to ``p_end`` over that part of training.
        importance_warmup_frac: the importance coefficient ramps linearly from 0 to ``importance_coeff``
            over this share of the main phase (lets components separate before sparsity bites).
        frequency_beta: weight of the frequency term ``mean_c · log2(1 + sum_c)`` (VPD); 0 turns it off.
        init: ``V`` starts ``"random"`` (a random tight frame, unit-norm-ish columns; right for dense LM
            activations) or at
            ``"data"``: random input rows of its layer, unit norm (far more reliable on sparse toy inputs,
            ill-conditioned on anisotropic LM activations).
        ci_hidden: hidden width of each component's causal-importance MLP (scalar in, scalar out).
        leaky_alpha: slope of the leaky hard sigmoid outside ``[0, 1]``.
        delta_component: mask the residual ``Δ = W − (VU)ᵀ`` with its own random mask in training.
        grad_clip: clip the global gradient norm (``None``: no clipping).
        seq_len: tokens per packed block when the inputs are texts.
        max_pool_rows: rows of the cached pool for ``objective="layer"`` (tokens), taken from the start.
        output_loss: ``"auto"`` (KL for language models, MSE otherwise), ``"kl"`` or ``"mse"``.
        fire_threshold: a component *fires* on a row when its importance exceeds this.
        stats_rows: rows used for the statistics stored with the result.
        checkpoint_every: steps between checkpoints when ``out`` is given (0: only at the end).
        log_every: steps between progress-bar updates of the loss terms.
    """

    objective: Objective = "layer"
    steps: int = 2000
    batch_size: int = 256
    seed: int = 0
    lr: float = 1e-3
    ci_lr: float | None = None
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    lr_warmup_frac: float = 0.0
    lr_final_frac: float = 0.0
    faithfulness_warmup_steps: int | None = None
    faithfulness_warmup_lr: float = 1e-2
    faithfulness_coeff: float = 1.0
    faithfulness_rows: int | None = None
    stoch_coeff: float = 1.0
    layerwise_coeff: float = 1.0
    importance_coeff: float = 3e-3
    importance_warmup_frac: float = 0.0
    p_start: float = 2.0
    p_end: float = 0.4
    p_anneal_start_frac: float = 0.0
    p_anneal_end_frac: float = 1.0
    importance_eps: float = 1e-12
    frequency_beta: float = 0.0
    init: Literal["random", "data"] = "random"
    ci_hidden: int = 16
    leaky_alpha: float = 0.01
    delta_component: bool = True
    grad_clip: float | None = None
    seq_len: int = 64
    max_pool_rows: int = 65536
    output_loss: Literal["auto", "kl", "mse"] = "auto"
    fire_threshold: float = 0.1
    stats_rows: int = 8192
    checkpoint_every: int = 100
    log_every: int = 10

    KEYS_NAME: ClassVar[str] = "decomposition option(s)"

    @classmethod
    def config_error(cls, message: str) -> ConfigError:
        return DecomposeConfigError(f"DecomposeConfig: {message}")

    def __post_init__(self) -> None:
        bad = self.config_error
        if self.faithfulness_warmup_steps is None:
            self.faithfulness_warmup_steps = 0
        self.check_fields()  # types (Literal choices included), finite floats
        for name in ("steps", "batch_size", "ci_hidden", "seq_len", "max_pool_rows", "stats_rows", "log_every"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("seed", "faithfulness_warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        for name in ("lr", "faithfulness_warmup_lr", "p_start", "p_end"):
            if not getattr(self, name) > 0:
                raise bad(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("faithfulness_coeff", "stoch_coeff", "layerwise_coeff", "importance_coeff",
                     "frequency_beta", "leaky_alpha", "importance_eps"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr_warmup_frac", "lr_final_frac", "p_anneal_start_frac", "p_anneal_end_frac", "fire_threshold",
                     "importance_warmup_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.p_anneal_end_frac < self.p_anneal_start_frac:
            raise bad("p_anneal_end_frac must be >= p_anneal_start_frac")
        if self.ci_lr is not None and not self.ci_lr > 0:
            raise bad(f"ci_lr must be > 0 or None, got {self.ci_lr!r}")
        if self.faithfulness_rows is not None and self.faithfulness_rows < 1:
            raise bad(f"faithfulness_rows must be a positive int or None, got {self.faithfulness_rows!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")

    # ------------------------------------------------------------------ schedules
    def p_at(self, step: int) -> float:
        """Importance-minimality exponent at main-phase ``step`` (linear anneal)."""
        frac = step / max(self.steps, 1)
        a, b = self.p_anneal_start_frac, self.p_anneal_end_frac
        if frac <= a or b == a:
            return self.p_start if frac <= a else self.p_end
        t = min((frac - a) / (b - a), 1.0)
        return self.p_start + (self.p_end - self.p_start) * t

    def importance_coeff_at(self, step: int) -> float:
        """Importance-minimality coefficient at main-phase ``step`` (linear ramp, then constant)."""
        ramp = self.importance_warmup_frac * self.steps
        return self.importance_coeff * (min(1.0, (step + 1) / ramp) if ramp > 0 else 1.0)

    def lr_at(self, step: int) -> float:
        """Main-phase learning rate at ``step`` (linear warm-up, then cosine or constant)."""
        warm = int(self.lr_warmup_frac * self.steps)
        if step < warm:
            return self.lr * (step + 1) / warm
        if self.lr_schedule == "constant":
            return self.lr
        t = (step - warm) / max(self.steps - warm, 1)
        final = self.lr * self.lr_final_frac
        return final + (self.lr - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    # ------------------------------------------------------------------ (de)serialisation
    # from_dict / to_dict / replace: ConfigFields (unknown keys raise DecomposeConfigError naming them)
    def training_hash(self) -> str:
        """Hash of every option that changes the trained result (not logging/checkpoint cadence)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("checkpoint_every", "log_every", "stats_rows")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
