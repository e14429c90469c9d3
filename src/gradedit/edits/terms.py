"""The terms a ``WeightEdit`` is made of: small immutable dataclasses, one per kind of update.

Every term adds ``scale · ΔW`` to one or more parameters. Shapes always refer to the parameter tensor
*as stored*: ``[out, in]`` for ``nn.Linear``, ``[in, out]`` for GPT-2's ``Conv1D``, ``[vocab, d]`` for an
embedding. A term never holds a model; it is bound to parameters at apply time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import EditError
from ..models.param_map import ParamMap


def weight_name(name: str) -> str:
    """``"a.b"`` (a module) -> ``"a.b.weight"``; a name ending in ``.weight`` is kept as is."""
    name = str(name)
    if not name:
        raise EditError("a module or parameter name must not be empty")
    return name if name == "weight" or name.endswith(".weight") else f"{name}.weight"


def _check_scale(scale: float) -> float:
    scale = float(scale)
    if not math.isfinite(scale):
        raise EditError(f"scale must be finite, got {scale}")
    return scale


def _check_float(what: str, t: Any, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise EditError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise EditError(f"{what} must be a floating-point tensor, got {t.dtype}")
    if ndim is not None and t.ndim != ndim:
        raise EditError(f"{what} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t.detach()


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype deltas are formed in: the promotion of the term's and the parameter's dtypes."""
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


@dataclass(frozen=True, eq=False)
class EditTerm:
    """Base class: ``scale`` multiplies the term's update; subclasses define the update."""

    kind: ClassVar[str] = "term"
    scale: float

    @property
    def param_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the term's tensors live."""
        raise NotImplementedError

    def scaled(self, alpha: float) -> EditTerm:
        """The same term with ``scale · alpha``."""
        return dataclasses.replace(self, scale=_check_scale(self.scale * float(alpha)))

    def touched(self, name: str) -> torch.Tensor | None:
        """Flat indices of ``name`` this term writes to; ``None`` means every entry."""
        return None

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The full shape of parameter ``name`` this term expects."""
        raise NotImplementedError

    def delta(self, name: str, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Dense ``scale · ΔW`` for ``name`` (full parameter shape) in ``dtype`` on ``device``."""
        raise NotImplementedError

    def apply_(self, params: Mapping[str, torch.Tensor]) -> None:
        """In place: add ``scale · ΔW`` to ``params[name]`` for each of ``param_names``."""
        for name in self.param_names:
            p = params[name]
            p.add_(self.delta(name, compute_dtype(self.dtype, p.dtype), p.device).to(p.dtype))

    def to_state(self, prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str) -> EditTerm:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class DenseTerm(EditTerm):
    """``W[param] += scale · delta``.

    Attributes:
        param: parameter name (as in ``model.named_parameters()``).
        delta: the update, same shape as the parameter.
    """

    kind: ClassVar[str] = "dense"
    param: str
    delta_tensor: torch.Tensor = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if not self.param:
            raise EditError("a dense term needs a parameter name")
        object.__setattr__(self, "delta_tensor", _check_float(f"delta for {self.param}", self.delta_tensor))
        object.__setattr__(self, "scale", _check_scale(self.scale))

    @property
    def param_names(self) -> tuple[str, ...]:
        return (self.param,)

    @property
    def dtype(self) -> torch.dtype:
        return self.delta_tensor.dtype

    @property
    def device(self) -> torch.device:
        return self.delta_tensor.device

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self.delta_tensor.shape)

    def delta(self, name: str, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        d = self.delta_tensor.to(device=device, dtype=dtype)
        return d * self.scale if self.scale != 1.0 else d.clone()

    def to_state(self, prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {"kind": self.kind, "param": self.param, "scale": self.scale, "shape": list(self.delta_tensor.shape)}
        return meta, {prefix + "delta": self.delta_tensor}

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str) -> DenseTerm:
        return cls(scale=meta["scale"], param=meta["param"], delta_tensor=tensors[prefix + "delta"])


@dataclass(frozen=True, eq=False)
class LowRankTerm(EditTerm):
    """``W[param] += scale · B @ A`` with ``B [rows, r]`` and ``A [r, cols]`` (rows × cols = the weight).

    Attributes:
        param: parameter name (``<module>.weight``).
        B: left factor ``[rows, r]``.
        A: right factor ``[r, cols]``.
        label: ``"low_rank"``, ``"rank_one"`` or ``"component_scale"`` (provenance only).
    """

    kind: ClassVar[str] = "low_rank"
    param: str
    B: torch.Tensor = dataclasses.field(repr=False)
    A: torch.Tensor = dataclasses.field(repr=False)
    label: str = "low_rank"

    def __post_init__(self) -> None:
        if not self.param:
            raise EditError("a low-rank term needs a module or parameter name")
        B = _check_float(f"B for {self.param}", self.B, 2)
        A = _check_float(f"A for {self.param}", self.A, 2)
        if B.shape[1] != A.shape[0]:
            raise EditError(f"{self.param}: B is {tuple(B.shape)} and A is {tuple(A.shape)}; "
                            f"expected B [rows, r] and A [r, cols] with the same r")
        object.__setattr__(self, "B", B)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "scale", _check_scale(self.scale))

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    @property
    def param_names(self) -> tuple[str, ...]:
        return (self.param,)

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.B.dtype, self.A.dtype)

    @property
    def device(self) -> torch.device:
        return self.B.device

    def shape_of(self, name: str) -> tuple[int, ...]:
        return (int(self.B.shape[0]), int(self.A.shape[1]))

    def factors(self, dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale · B, A)`` in ``dtype`` on ``device``: ``ΔW = B' @ A'``."""
        B = self.B.to(device=device, dtype=dtype)
        return (B * self.scale if self.scale != 1.0 else B), self.A.to(device=device, dtype=dtype)

    def delta(self, name: str, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        B, A = self.factors(dtype, device)
        return B @ A

    def to_state(self, prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {"kind": self.kind, "param": self.param, "scale": self.scale, "label": self.label,
                "rank": self.rank, "shape": list(self.shape_of(self.param))}
        return meta, {prefix + "B": self.B, prefix + "A": self.A}

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str) -> LowRankTerm:
        return cls(scale=meta["scale"], param=meta["param"], B=tensors[prefix + "B"], A=tensors[prefix + "A"],
                   label=str(meta.get("label", "low_rank")))


@dataclass(frozen=True, eq=False)
class IndexedTerm(EditTerm):
    """``param.view(-1)[idx] += scale · vec_part`` for every parameter of ``param_map`` (GRADIEND).

    Attributes:
        param_map: which flat entries of which parameters ``vec`` addresses.
        vec: the update ``[param_map.size]`` in the map's input-space order.
    """

    kind: ClassVar[str] = "indexed"
    param_map: ParamMap = dataclasses.field(repr=False)
    vec: torch.Tensor = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.param_map, ParamMap):
            raise EditError(f"param_map must be a ParamMap, got {type(self.param_map).__name__}")
        vec = _check_float("vec", self.vec, 1)
        if vec.numel() != self.param_map.size:
            raise EditError(f"vec has {vec.numel()} entries, the param map selects {self.param_map.size}")
        object.__setattr__(self, "vec", vec)
        object.__setattr__(self, "scale", _check_scale(self.scale))

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.param_map.names)

    @property
    def dtype(self) -> torch.dtype:
        return self.vec.dtype

    @property
    def device(self) -> torch.device:
        return self.vec.device

    def _pos(self, name: str) -> int:
        return self.param_map.names.index(name)

    def touched(self, name: str) -> torch.Tensor | None:
        return self.param_map.indices[self._pos(name)]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self.param_map.shapes[self._pos(name)])

    def part(self, name: str) -> torch.Tensor:
        """``scale · vec`` restricted to ``name``'s entries (in ``vec``'s dtype)."""
        i = self._pos(name)
        start, size = self.param_map.offsets[i], self.param_map.sizes[i]
        part = self.vec[start : start + size]
        return part * self.scale if self.scale != 1.0 else part

    def delta(self, name: str, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        i = self._pos(name)
        shape, idx = self.param_map.shapes[i], self.param_map.indices[i]
        part = self.part(name).to(device=device, dtype=dtype)
        if idx is None:
            return part.reshape(shape).clone()
        out = torch.zeros(math.prod(shape), dtype=dtype, device=device)
        out[idx.to(device)] = part
        return out.reshape(shape)

    def apply_(self, params: Mapping[str, torch.Tensor]) -> None:
        self.param_map.scatter_add_(params, self.vec, alpha=self.scale)

    def to_state(self, prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        pm_meta, pm_tensors = self.param_map.to_state()
        tensors = {prefix + k: v for k, v in pm_tensors.items()}
        tensors[prefix + "vec"] = self.vec
        return {"kind": self.kind, "scale": self.scale, "param_map": pm_meta}, tensors

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str) -> IndexedTerm:
        local = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        pm = ParamMap.from_state(meta["param_map"], local)
        return cls(scale=meta["scale"], param_map=pm, vec=tensors[prefix + "vec"])


TERM_TYPES: dict[str, type[EditTerm]] = {t.kind: t for t in (DenseTerm, LowRankTerm, IndexedTerm)}
