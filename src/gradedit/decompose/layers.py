"""Per-layer components ``V [d_in, C]``, ``U [C, d_out]`` and their causal-importance MLPs.

A decomposed layer computes, for an input ``x`` with inner activations ``a = x V`` ``[..., C]``,
component masks ``m [..., C]`` and a residual mask ``m_δ [...]``::

    y_masked = y + (a ⊙ (m − m_δ)) U + (m_δ − 1) (y − b)

where ``y = W x + b`` is the layer's own output. This equals ``(a ⊙ m) U + m_δ · Δx + b`` with the
residual ``Δ = W − (VU)ᵀ``, and with every mask at 1 it is ``y`` itself, bit for bit (the added terms
are exact zeros), so the target model is reproduced exactly and its weights are never touched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..errors import DecompositionError
from ..models.linear import find_linear_modules as _find_linear_modules
from ..models.linear import is_conv1d, logical_weight

__all__ = [
    "ComponentLayer", "LayerInfo", "find_linear_modules", "is_conv1d", "logical_weight",
    "lower_leaky_hard_sigmoid", "upper_leaky_hard_sigmoid", "model_fingerprint", "resolve_components",
]


def find_linear_modules(model: nn.Module, patterns: str | Sequence[str]) -> dict[str, nn.Module]:
    """Linear / ``Conv1D`` modules whose names match a name or fnmatch pattern, in model order
    (:func:`gradedit.models.linear.find_linear_modules`).

    Raises:
        DecompositionError: no pattern, a pattern matching nothing, or only non-linear modules.
    """
    return _find_linear_modules(model, patterns, DecompositionError)


def resolve_components(names: Sequence[str], n_components: int | Mapping[str, int]) -> dict[str, int]:
    """``C`` per module from an int or ``{pattern: C}`` (first matching pattern wins)."""
    def check(c: Any, where: str) -> int:
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise DecompositionError(f"n_components{where} must be an int >= 1, got {c!r}")
        return c

    if isinstance(n_components, Mapping):
        out: dict[str, int] = {}
        for n in names:
            hit = next((p for p in n_components if fnmatch.fnmatchcase(n, p)), None)
            if hit is None:
                raise DecompositionError(f"module {n!r} matches no key of n_components {sorted(n_components)}; "
                                         f"add a pattern for it (e.g. '*': 64)")
            out[n] = check(n_components[hit], f"[{hit!r}]")
        return out
    c = check(n_components, "")
    return {n: c for n in names}


def model_fingerprint(modules: Mapping[str, nn.Module]) -> dict[str, str]:
    """Per module: sha256 (16 hex) of its name, stored weight/bias shapes, dtypes and contents."""
    out: dict[str, str] = {}
    for name in sorted(modules):
        h = hashlib.sha256(name.encode())
        mod = modules[name]
        pairs: list[tuple[str, Tensor | None]] = [("weight", cast(Tensor, mod.weight)),
                                                 ("bias", cast("Tensor | None", getattr(mod, "bias", None)))]
        for tag, t in pairs:
            if t is None:
                h.update(f"{tag}=None;".encode())
                continue
            t = t.detach().to("cpu").contiguous()
            h.update(f"{tag}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()[:16]
    return out


class _LowerLeaky(torch.autograd.Function):
    """``clamp(x, 0, 1)``; below 0 a gradient that would raise ``x`` passes at slope ``alpha``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        zero = torch.zeros_like(grad)
        below = torch.where(grad < 0, ctx.alpha * grad, zero)
        return torch.where(x <= 0, below, torch.where(x <= 1, grad, zero)), None


def lower_leaky_hard_sigmoid(x: Tensor, alpha: float) -> Tensor:
    """Importance used for masks: values in ``[0, 1]`` (dead components can be revived by gradient)."""
    return cast(Tensor, _LowerLeaky.apply(x, alpha))


def upper_leaky_hard_sigmoid(x: Tensor, alpha: float) -> Tensor:
    """Importance used by the minimality loss: ``clamp(x, 0, 1)``, continued with slope ``alpha`` above 1."""
    return torch.where(x > 1, 1 + alpha * (x - 1), x.clamp(0.0, 1.0))


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about a decomposed layer."""

    name: str
    d_in: int
    d_out: int
    C: int
    has_bias: bool
    stored_transposed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "d_in": self.d_in, "d_out": self.d_out, "C": self.C,
                "has_bias": self.has_bias, "stored_transposed": self.stored_transposed}

    @classmethod
    def of(cls, name: str, module: nn.Module, C: int) -> LayerInfo:
        d_out, d_in = logical_weight(module).shape
        return cls(name, int(d_in), int(d_out), C, getattr(module, "bias", None) is not None, is_conv1d(module))


class ComponentLayer(nn.Module):
    """Learnable components of one layer plus one causal-importance MLP per component.

    Parameters: ``V [d_in, C]``, ``U [C, d_out]``; importance MLP ``w1, b1, w2 [C, H]``, ``b2 [C]``
    mapping each inner activation ``a_c`` (a scalar, times the fixed ``ci_in_scale``) to a
    pre-sigmoid logit: ``logit_c = Σ_h w2[c,h] · gelu(a_c · s · w1[c,h] + b1[c,h]) + b2[c]``.
    """

    ci_in_scale: Tensor

    def __init__(self, info: LayerInfo, hidden: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.info = info
        C, H = info.C, hidden

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator)

        # a random tight frame: orthonormal columns (C <= d_in) or orthonormal rows scaled (C > d_in), so
        # that a least-squares U needs no cancelling between components (a square Gaussian V would)
        q, _ = torch.linalg.qr(randn(max(info.d_in, C), min(info.d_in, C)))
        v = q[: info.d_in] if C <= info.d_in else q.T * math.sqrt(C / info.d_in)
        self.V = nn.Parameter(v.contiguous())
        self.U = nn.Parameter(randn(C, info.d_out) / math.sqrt(C))
        self.w1 = nn.Parameter(randn(C, H) * math.sqrt(2.0))
        self.b1 = nn.Parameter(torch.zeros(C, H))
        self.w2 = nn.Parameter(randn(C, H) / math.sqrt(H))
        self.b2 = nn.Parameter(torch.zeros(C))
        # 1 / RMS norm of the layer's inputs, so the importance MLPs see O(1) activations on any model
        self.register_buffer("ci_in_scale", torch.ones(()))

    def inner(self, x: Tensor) -> Tensor:
        """Inner activations ``x V`` ``[..., C]`` for inputs ``x [..., d_in]``."""
        return x.to(self.V.dtype) @ self.V

    def logits(self, a: Tensor) -> Tensor:
        """Pre-sigmoid importance ``[..., C]`` from inner activations ``a [..., C]``."""
        h = torch.nn.functional.gelu((a * self.ci_in_scale).unsqueeze(-1) * self.w1 + self.b1)
        return (h * self.w2).sum(-1) + self.b2

    def importance(self, x: Tensor, alpha: float = 0.01) -> Tensor:
        """Causal importance ``g [..., C]`` in ``[0, 1]`` for inputs ``x [..., d_in]``."""
        return lower_leaky_hard_sigmoid(self.logits(self.inner(x)), alpha)

    def weight(self) -> Tensor:
        """Sum of the components, ``(V U)ᵀ`` ``[d_out, d_in]``."""
        return (self.V @ self.U).T

    def masked_change(self, a: Tensor, y_nobias: Tensor, mask: Tensor, delta_mask: Tensor | None) -> Tensor:
        """``y_masked − y`` for ``a [..., C]``, ``y − b`` ``[..., d_out]``, ``mask [..., C]``, ``delta_mask [...]``.

        ``delta_mask=None`` means the residual is fully on (``m_δ = 1``).
        """
        if delta_mask is None:
            return (a * (mask - 1)) @ self.U
        md = delta_mask.unsqueeze(-1)
        return (a * (mask - md)) @ self.U + (md - 1) * y_nobias
