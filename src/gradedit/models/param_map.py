"""ParamMap: which entries of which base-model parameters form a GRADIEND input space.

The input space is the concatenation, in order, of the selected flat entries of each parameter.
Global position ``offsets[i] + j`` is the ``j``-th selected entry of parameter ``names[i]``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import EditError

INDEX_KEY = "param_map.indices.{}"


@dataclass(frozen=True, eq=False)
class ParamMap:
    """An ordered selection of flat entries of named parameters. Treat it as immutable.

    Attributes:
        names: parameter names, in input-space order (unique).
        shapes: the full shape of each parameter.
        indices: per parameter ``None`` (all entries) or a strictly increasing int64 CPU tensor of
            flat indices into ``param.view(-1)``. A selection of every entry is stored as ``None``.
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    indices: list[torch.Tensor | None]
    # derived in __post_init__: selected entries per parameter and each block's start
    _sizes: list[int] = field(init=False, repr=False)
    _starts: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [str(n) for n in self.names]
        shapes = [tuple(int(d) for d in s) for s in self.shapes]
        if not (len(names) == len(shapes) == len(self.indices)):
            raise ValueError(
                f"names, shapes and indices differ in length ({len(names)}, {len(shapes)}, {len(self.indices)})"
            )
        if not names:
            raise ValueError("a ParamMap needs at least one parameter")
        if len(set(names)) != len(names):
            dups = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"parameter names repeat: {dups}")
        indices = [_check_index(n, s, i) for n, s, i in zip(names, shapes, self.indices)]
        sizes = [math.prod(s) if i is None else int(i.numel()) for s, i in zip(shapes, indices)]
        starts = [0]
        for s in sizes[:-1]:
            starts.append(starts[-1] + s)
        for key, value in [("names", names), ("shapes", shapes), ("indices", indices),
                           ("_sizes", sizes), ("_starts", starts)]:
            object.__setattr__(self, key, value)

    @classmethod
    def from_params(cls, named: Mapping[str, torch.Tensor]) -> ParamMap:
        """Every entry of every tensor in ``named`` (e.g. ``select_parameters(model)``)."""
        return cls(list(named), [tuple(t.shape) for t in named.values()], [None] * len(named))

    @property
    def size(self) -> int:
        """Total number of selected entries ``n`` (the GRADIEND input dimension)."""
        return self._starts[-1] + self._sizes[-1]

    @property
    def sizes(self) -> list[int]:
        """Selected entries per parameter."""
        return list(self._sizes)

    @property
    def offsets(self) -> list[int]:
        """Start of each parameter's block in the input space (``len(names)`` values)."""
        return list(self._starts)

    # -- moving values between parameters and the input space ------------------------------------

    def gather(self, tensors: Mapping[str, torch.Tensor | None], *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Selected entries of each named tensor, concatenated: ``[n]``.

        ``dtype`` defaults to the promoted dtype of the tensors; the device is that of the first one.
        Differentiable when a tensor requires grad; otherwise written into one preallocated vector.

        Raises:
            KeyError: a parameter of the map has no entry in ``tensors``.
            ValueError: a tensor is ``None`` or has the wrong number of elements.
        """
        ts = [self._tensor(tensors, i) for i in range(len(self.names))]
        if dtype is None:
            dtype = functools.reduce(torch.promote_types, (t.dtype for t in ts))
        if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
            parts = []
            for t, idx in zip(ts, self.indices):
                flat = t.reshape(-1)
                parts.append((flat if idx is None else flat[idx.to(flat.device)]).to(dtype))
            return torch.cat(parts)
        out = torch.empty(self.size, dtype=dtype, device=ts[0].device)
        for t, idx, start, size in zip(ts, self.indices, self._starts, self._sizes):
            flat, dst = t.detach().reshape(-1), out[start : start + size]
            if idx is None:
                dst.copy_(flat)
            elif flat.dtype == dtype and flat.device == dst.device:
                torch.index_select(flat, 0, idx.to(flat.device), out=dst)
            else:
                dst.copy_(flat[idx.to(flat.device)])
        return out

    def scatter(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense ``{name: tensor of the parameter's full shape}``: ``vec``'s entries, zeros elsewhere.

        Each tensor is a fresh copy (dtype and device of ``vec``), never a view of ``vec``.
        """
        self._check_vec(vec)
        out = {}
        for name, shape, idx, start, size in zip(self.names, self.shapes, self.indices, self._starts, self._sizes):
            part = vec[start : start + size]
            if idx is None:
                dense = part.clone()
            else:
                dense = torch.zeros(math.prod(shape), dtype=vec.dtype, device=vec.device)
                dense[idx.to(vec.device)] = part
            out[name] = dense.reshape(shape)
        return out

    @torch.no_grad()
    def scatter_add_(self, params: Mapping[str, torch.Tensor], vec: torch.Tensor, alpha: float = 1.0) -> None:
        """In place: ``params[name].view(-1)[idx] += alpha * vec_part`` for every parameter of the map.

        No dense delta is built; temporaries are at most one parameter's selected entries.
        ``alpha * vec_part`` is computed in ``vec``'s dtype, then cast to the parameter's dtype.

        Exactness: a second call with ``-alpha`` is NOT a bit-exact undo in general (``(p + d) - d``
        may round). For an exact restore, snapshot first and put the values back::

            saved = pm.gather(params)
            pm.scatter_add_(params, vec, alpha)
            ...
            pm.assign_(params, saved)
        """
        self._check_vec(vec)
        flats = self._flat_views(params)  # validate every tensor before touching any
        for flat, idx, start, size in zip(flats, self.indices, self._starts, self._sizes):
            part = vec[start : start + size]
            if alpha != 1.0:
                part = part * alpha
            part = part.to(device=flat.device, dtype=flat.dtype)
            if idx is None:
                flat.add_(part)
            else:
                flat.index_add_(0, idx.to(flat.device), part)

    @torch.no_grad()
    def assign_(self, params: Mapping[str, torch.Tensor], vec: torch.Tensor) -> None:
        """In place: ``params[name].view(-1)[idx] = vec_part`` (exact inverse of ``gather``)."""
        self._check_vec(vec)
        flats = self._flat_views(params)
        for flat, idx, start, size in zip(flats, self.indices, self._starts, self._sizes):
            part = vec[start : start + size].to(device=flat.device, dtype=flat.dtype)
            if idx is None:
                flat.copy_(part)
            else:
                flat.index_copy_(0, idx.to(flat.device), part)

    # -- sub-selections and lookups ---------------------------------------------------------------

    def select(self, global_idx: torch.Tensor) -> ParamMap:
        """A map of only the given input-space positions (strictly increasing); empty params are dropped."""
        g = self._as_global(global_idx)
        if g.numel() == 0:
            raise ValueError("select() got no positions")
        if g.numel() > 1 and not bool((g[1:] > g[:-1]).all()):
            raise ValueError("select() needs strictly increasing positions; pass torch.unique(idx)")
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        indices: list[torch.Tensor | None] = []
        for name, shape, idx, start, size in zip(self.names, self.shapes, self.indices, self._starts, self._sizes):
            lo = int(torch.searchsorted(g, start))
            hi = int(torch.searchsorted(g, start + size))
            if hi == lo:
                continue
            local = g[lo:hi] - start
            names.append(name)
            shapes.append(shape)
            indices.append(local if idx is None else idx[local])
        return ParamMap(names, shapes, indices)

    def locate(self, global_idx: torch.Tensor) -> list[tuple[str, int]]:
        """``(param_name, flat_index)`` of each input-space position, in the given order."""
        g = self._as_global(global_idx)
        which = torch.searchsorted(torch.tensor(self._starts), g, right=True) - 1
        flat = torch.empty_like(g)
        for i, (idx, start) in enumerate(zip(self.indices, self._starts)):
            mask = which == i
            local = g[mask] - start
            flat[mask] = local if idx is None else idx[local]
        return [(self.names[w], f) for w, f in zip(which.tolist(), flat.tolist())]

    # -- persistence ------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(json_dict, tensors)``: names/shapes/counts for JSON, indices as int64 tensors."""
        meta = {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "counts": self.sizes,
            "full": [i is None for i in self.indices],
            "size": self.size,
        }
        tensors = {INDEX_KEY.format(i): idx for i, idx in enumerate(self.indices) if idx is not None}
        return meta, tensors

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> ParamMap:
        """Inverse of ``to_state``; ``tensors`` may hold other keys. Raises ValueError if inconsistent."""
        try:
            names, shapes, full = list(meta["names"]), list(meta["shapes"]), list(meta["full"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"param-map state lacks names/shapes/full: {err!r}") from err
        if len(full) != len(names):
            raise ValueError(f"param-map state has {len(names)} names but {len(full)} 'full' flags")
        indices: list[torch.Tensor | None] = []
        for i, is_full in enumerate(full):
            key = INDEX_KEY.format(i)
            if is_full:
                indices.append(None)
            elif key not in tensors:
                raise ValueError(f"param-map indices {key!r} are missing")
            else:
                indices.append(tensors[key].to("cpu"))
        pm = cls(names, [tuple(s) for s in shapes], indices)
        if "counts" in meta and list(meta["counts"]) != pm.sizes:
            raise ValueError(f"param-map counts {list(meta['counts'])} disagree with the indices {pm.sizes}")
        return pm

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParamMap):
            return NotImplemented
        if self.names != other.names or self.shapes != other.shapes:
            return False
        return all(
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in zip(self.indices, other.indices)
        )

    __hash__ = None  # type: ignore[assignment]  # typeshed types object.__hash__ as a method; None marks unhashable

    def __repr__(self) -> str:
        return f"ParamMap({len(self.names)} params, n={self.size:,})"

    # -- helpers ----------------------------------------------------------------------------------

    def _tensor(self, tensors: Mapping[str, torch.Tensor | None], i: int) -> torch.Tensor:
        name = self.names[i]
        if name not in tensors:
            missing = [n for n in self.names if n not in tensors]
            raise KeyError(f"no tensor for parameter {name!r} ({len(missing)} of the map's params missing)")
        t = tensors[name]
        if t is None:
            raise ValueError(f"tensor for {name!r} is None (was its gradient computed?)")
        if t.device.type == "meta":
            raise EditError(f"{name} is offloaded by a device_map (its weights are not in memory), so it cannot be "
                            f"read or edited; map its layer to 'cpu' or a GPU, not 'disk' (or load without device_map)")
        if t.numel() != math.prod(self.shapes[i]):
            raise ValueError(f"{name}: expected shape {self.shapes[i]}, got {tuple(t.shape)}")
        return t

    def _flat_views(self, params: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        views = []
        for i, name in enumerate(self.names):
            p = self._tensor(params, i)
            if not p.is_contiguous():
                raise ValueError(f"{name} is not contiguous; an in-place update needs a contiguous tensor")
            views.append(p.view(-1))
        return views

    def _check_vec(self, vec: torch.Tensor) -> None:
        if vec.ndim != 1 or vec.numel() != self.size:
            raise ValueError(f"expected a vector of shape [{self.size}], got {tuple(vec.shape)}")

    def _as_global(self, global_idx: torch.Tensor) -> torch.Tensor:
        g = torch.as_tensor(global_idx).reshape(-1).to("cpu")
        if g.is_floating_point() or g.dtype == torch.bool:
            raise TypeError(f"positions must be an integer tensor, got {g.dtype}")
        g = g.long()
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= self.size):
            raise IndexError(f"positions must lie in [0, {self.size}), got [{int(g.min())}, {int(g.max())}]")
        return g


def _check_index(name: str, shape: tuple[int, ...], idx: Any) -> torch.Tensor | None:
    if idx is None:
        return None
    idx = torch.as_tensor(idx).detach().to("cpu")
    if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"{name}: indices must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}")
    idx = idx.long().contiguous()
    numel = math.prod(shape)
    if idx.numel() == 0:
        raise ValueError(f"{name}: selects no entries; leave the parameter out instead")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"{name}: indices must be strictly increasing (sorted, no repeats)")
    if int(idx[0]) < 0 or int(idx[-1]) >= numel:
        raise ValueError(f"{name}: indices must lie in [0, {numel})")
    return None if idx.numel() == numel else idx

