"""Rank-1 components of linear layers from the SVD: ``W = Σ_c σ_c u_c v_cᵀ``.

Conventions (every function in ``gradedit.edits`` that takes a :class:`Component` follows them):

- ``W`` is the layer's map in ``[out, in]`` orientation, ``y = W x (+ b)``. For ``nn.Linear`` that is
  the stored weight; GPT-2's ``Conv1D`` stores ``[in, out]``, so there ``W = weight.T`` (handled here;
  edits are written back in the stored orientation).
- ``U [out]`` and ``V [in]`` are **unit** singular vectors and ``sigma`` is kept separate, so a
  component's *activation* on an input ``x`` is ``V·x`` and its *write* is ``sigma · (V·x) · U``.
- ``component.edit(s)`` is ``W' = W + (s − 1) σ U Vᵀ``: ``s = 1`` is the identity, ``s = 0`` removes
  the component, and only that component's singular value changes (``σ → s·σ``; a negative ``s``
  flips its write direction).

SVDs are computed in float64 once per weight and cached in memory, keyed by the parameter object and
a checksum of its current bytes: any change to the weight — including writes through ``.data`` (as
``rewrite_base_model(inplace=True)`` does), which leave torch's version counter alone — is decomposed
again. The checksum reads the weight once (much cheaper than the SVD it guards).
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import operator
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch

from ...models import LanguageModel
from ...models.linear import ModulePatterns, find_linear_modules, is_conv1d
from ...models.linear import logical_weight as _logical_weight
from ..terms import EditError
from ..weight_edit import WeightEdit

logger = logging.getLogger(__name__)

__all__ = ["Component", "ComponentSet", "clear_svd_cache", "linear_modules", "logical_weight", "svd_components"]


# id(parameter) -> (weak reference to it, content checksum at decomposition, U [out, k], S [k], Vh [k, in]),
# in [out, in] orientation; an entry is dropped when its parameter is garbage-collected
_SVD_CACHE: dict[int, tuple[weakref.ref, tuple[Any, ...], torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _checksum(t: torch.Tensor) -> tuple[Any, ...]:
    """Shape, dtype and a BLAKE2b digest of the tensor's bytes: changes whenever any entry changes."""
    flat = t.detach().reshape(-1).contiguous().cpu()
    data = flat.view(torch.uint8).numpy()
    # numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12; the buffer protocol works on 3.11 too
    return tuple(t.shape), str(t.dtype), hashlib.blake2b(data, digest_size=16).digest()  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Component:
    """One rank-1 piece ``sigma · U Vᵀ`` of a linear layer (``[out, in]`` orientation).

    Attributes:
        module_name: the linear module (as in ``model.named_modules()``).
        index: rank of the singular value within the module (0 = largest).
        U: unit left singular vector ``[out]`` (the write direction).
        V: unit right singular vector ``[in]`` (the read direction).
        sigma: the singular value.
        stored_transposed: the weight is stored ``[in, out]`` (GPT-2 ``Conv1D``).
    """

    module_name: str
    index: int
    U: torch.Tensor
    V: torch.Tensor
    sigma: float
    stored_transposed: bool = False

    @property
    def label(self) -> str:
        """``"<module>#<index>"``."""
        return f"{self.module_name}#{self.index}"

    @property
    def write(self) -> torch.Tensor:
        """The write vector ``sigma · U`` ``[out]``."""
        return self.sigma * self.U

    def weight(self) -> torch.Tensor:
        """The component as a dense ``[out, in]`` matrix ``sigma · U Vᵀ``."""
        return self.sigma * torch.outer(self.U, self.V)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable identity of the component (no tensors)."""
        return {"module": self.module_name, "index": self.index, "sigma": self.sigma}

    def edit(self, s: float) -> WeightEdit:
        """``W' = W + (s − 1) σ U Vᵀ`` as a :class:`WeightEdit` (stored orientation handled)."""
        rows, cols = (self.V, self.write) if self.stored_transposed else (self.write, self.V)
        meta = {"method": "component_scale", "components": [{**self.to_dict(), "s": float(s)}]}
        return WeightEdit.component_scale(self.module_name, rows, cols, float(s), metadata=meta)


class ComponentSet(Sequence[Component]):
    """An ordered, indexable collection of components (possibly from several modules)."""

    def __init__(self, components: Sequence[Component]) -> None:
        self._items = list(components)
        bad = [type(c).__name__ for c in self._items if not isinstance(c, Component)]
        if bad:
            raise EditError(f"a ComponentSet holds Component objects, got {bad[:3]}")

    @overload
    def __getitem__(self, i: int) -> Component: ...
    @overload
    def __getitem__(self, i: slice | Sequence[int] | torch.Tensor) -> ComponentSet: ...

    def __getitem__(self, i: Any) -> Component | ComponentSet:
        if isinstance(i, slice):
            return ComponentSet(self._items[i])
        if isinstance(i, torch.Tensor):
            i = i.tolist()
        if isinstance(i, (list, tuple)):
            return ComponentSet([self._items[int(j)] for j in i])
        return self._items[int(i)]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Component]:
        return iter(self._items)

    def __add__(self, other: ComponentSet) -> ComponentSet:
        return ComponentSet(self._items + list(other))

    def __repr__(self) -> str:
        mods = self.modules
        return f"ComponentSet({len(self)} components in {len(mods)} modules)"

    @property
    def modules(self) -> list[str]:
        """Module names in order of first appearance."""
        return list(dict.fromkeys(c.module_name for c in self._items))

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self._items]

    def find(self, module_name: str, index: int) -> int:
        """Position of the component ``module_name#index`` in this set."""
        for pos, c in enumerate(self._items):
            if c.module_name == module_name and c.index == index:
                return pos
        raise KeyError(f"{module_name}#{index} is not in this set")

    def groups(self) -> dict[str, tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per module: (positions in the set, ``V [k, in]``, ``U [k, out]``, ``sigma [k]``)."""
        out: dict[str, tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for m in self.modules:
            pos = [i for i, c in enumerate(self._items) if c.module_name == m]
            cs = [self._items[i] for i in pos]
            out[m] = (pos, torch.stack([c.V for c in cs]), torch.stack([c.U for c in cs]),
                      torch.tensor([c.sigma for c in cs], dtype=cs[0].V.dtype))
        return out

    def edit(self, idx: int | Sequence[int], s: float | Sequence[float]) -> WeightEdit:
        """Scale component(s) ``idx`` by ``s`` (one scalar, or one per index) as one ``WeightEdit``."""
        # duck-typed on purpose: idx is any index-like scalar (int, numpy int, 0-d tensor) or an iterable of
        # them, s any numbers.Real or an iterable; mypy cannot narrow by try/except or by the numbers ABCs
        try:
            idxs = [operator.index(idx)]  # type: ignore[arg-type]  # a sequence raises TypeError, handled below
        except TypeError:
            idxs = [operator.index(i) for i in idx]  # type: ignore[union-attr]  # idx is not index-like here
        ss = [float(s)] * len(idxs) if isinstance(s, numbers.Real) else [float(x) for x in s]  # type: ignore[union-attr]  # mypy does not treat float as numbers.Real
        if len(ss) != len(idxs):
            raise EditError(f"got {len(idxs)} component indices but {len(ss)} scales; give one scale per index")
        if not idxs:
            raise EditError("no component index given")
        edits = [self[i].edit(x) for i, x in zip(idxs, ss)]
        meta = {"method": "component_scale", "components": [e.metadata["components"][0] for e in edits]}
        return WeightEdit(tuple(t for e in edits for t in e.terms), meta)


def _model_of(lm_or_model: LanguageModel | torch.nn.Module) -> torch.nn.Module:
    return lm_or_model.model if isinstance(lm_or_model, LanguageModel) else lm_or_model


def linear_modules(lm_or_model: LanguageModel | torch.nn.Module,
                   patterns: ModulePatterns) -> dict[str, torch.nn.Module]:
    """Linear (``nn.Linear`` / ``Conv1D``) modules whose names match, in model order
    (:func:`gradedit.models.linear.find_linear_modules`; a ``str`` is a glob, a ``re.Pattern`` must
    match the whole name; non-linear modules matched by a wildcard are skipped).

    Raises:
        EditError: a pattern matches no module, or matches only modules that are not linear layers.
    """
    return find_linear_modules(_model_of(lm_or_model), patterns, EditError)


def logical_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight in ``[out, in]`` orientation (a transposed view for ``Conv1D``)."""
    return _logical_weight(module, EditError)


def _svd(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cached thin SVD of the module's ``[out, in]`` weight: ``U [out, k]``, ``S [k]``, ``Vh [k, in]``."""
    param = module.weight
    if not isinstance(param, torch.Tensor):
        raise EditError(f"{type(module).__name__}.weight is a {type(param).__name__}, not a tensor")
    key = id(param)
    hit = _SVD_CACHE.get(key)
    checksum = _checksum(param)
    if hit is not None and hit[0]() is param and hit[1] == checksum:
        return hit[2], hit[3], hit[4]
    with torch.no_grad():
        W = logical_weight(module).detach().to(torch.float64)
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    out = (U.to(dtype), S.to(dtype), Vh.to(dtype))
    _SVD_CACHE[key] = (weakref.ref(param, lambda _r: _SVD_CACHE.pop(key, None)), checksum, *out)
    return out


def clear_svd_cache() -> None:
    """Forget every cached decomposition."""
    _SVD_CACHE.clear()


def svd_components(lm: LanguageModel | torch.nn.Module, modules: ModulePatterns,
                   top: int | None = None) -> ComponentSet:
    """Rank-1 SVD components of the matching linear layers (see the module docstring).

    Args:
        modules: glob pattern(s) or compiled regex(es) over module names.
        top: keep the ``top`` largest singular values per module (``None``: all ``min(out, in)``).

    Returns:
        A :class:`ComponentSet`, module by module in model order, each by decreasing ``sigma``.
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise EditError(f"top must be a positive int or None, got {top!r}")
    comps: list[Component] = []
    for name, mod in linear_modules(lm, modules).items():
        U, S, Vh = _svd(mod)
        k = S.numel() if top is None else min(top, S.numel())
        transposed = is_conv1d(mod)
        comps.extend(Component(name, i, U[:, i], Vh[i], float(S[i]), transposed) for i in range(k))
        logger.debug("%s: %d of %d components", name, k, S.numel())
    return ComponentSet(comps)
