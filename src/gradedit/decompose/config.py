"""Configuration of a parameter decomposition (validated; unknown keys are an error), and
:class:`ConfigFields`, the checks every gradedit config dataclass shares (``TrainConfig`` too)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union

from ..errors import ConfigError, DecomposeConfigError

__all__ = ["ConfigFields", "DecomposeConfig", "Objective", "value_fits"]

Objective = Literal["layer", "output"]

C = TypeVar("C", bound="ConfigFields")


def _type_name(tp: Any) -> str:
    """``a number``, ``an int or None``, ``one of ('a', 'b')``, ``a list of str`` ... for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"one of {args}"
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if origin is list:
        return f"a list of {getattr(args[0], '__name__', args[0])}"
    if origin is dict:
        return f"a dict with {getattr(args[0], '__name__', args[0])} keys"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


_NAMES: dict[Any, str] = {type(None): "None", Any: "any value", int: "an int", float: "a number", str: "a string",
                          bool: "true or false"}


def value_fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (bools are not numbers; an int is a float;
    a tuple passes for a list)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(value_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(value_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(value_fits(k, args[0]) for k in value)
    return isinstance(value, tp)


class ConfigFields:
    """Mixin of gradedit's config dataclasses: ``from_dict`` (unknown keys refused), ``to_dict``,
    ``replace``, and :meth:`check_fields` (every field of its annotated type, every float finite),
    all raising :meth:`config_error` (a :class:`~gradedit.errors.ConfigError`)."""

    #: how ``from_dict`` names unknown keys: ``unknown <KEYS_NAME> [...]; known: [...]``
    KEYS_NAME: ClassVar[str] = "option(s)"

    @classmethod
    def config_error(cls, message: str) -> ConfigError:
        """The error a bad value raises (subclasses may prefix the message or use a subclass)."""
        return ConfigError(message)

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a mapping; unknown keys raise :meth:`config_error` with the list of known ones."""
        if not isinstance(values, Mapping):
            raise cls.config_error(f"{cls.__name__} needs a mapping of its fields, got {type(values).__name__}; "
                                   "give a dict such as {'seed': 0}")
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(map(str, set(values) - set(known)))
        if unknown:
            raise cls.config_error(f"unknown {cls.KEYS_NAME} {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated like :meth:`from_dict`; unknown keys raise)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def check_fields(self) -> None:
        """Every field holds a value of its annotated type and every float is finite, else
        :meth:`config_error` naming the field, the value and the type wanted (with the default as an example)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, tp = getattr(self, f.name), hints[f.name]
            if not value_fits(value, tp):
                example = ("" if f.default is dataclasses.MISSING or f.default is None
                           else f", e.g. {f.default!r} (the default)")
                raise self.config_error(f"{f.name} must be {_type_name(tp)}, got {value!r} "
                                        f"({type(value).__name__}){example}")
            if isinstance(value, float) and not math.isfinite(value):
                raise self.config_error(f"{f.name} must be finite, got {value!r}")


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
