"""``WeightEdit``: the one edit object every method produces, applied in place and restored bit-exactly.

An edit is a list of terms (see :mod:`gradedit.edits.terms`); each adds ``scale · ΔW`` to parameters::

    edit = WeightEdit.rank_one("model.layers.0.mlp.down_proj", u, v) + WeightEdit.dense({name: d})
    with (0.5 * edit).applied(model):      # snapshot of the touched entries, restored on exit
        ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..models.param_map import ParamMap
from .handle import ACTIVE_HANDLES, Binding, EditHandle, param_table, resolve_name
from .io import read_edit, save_edit
from .peft_export import export_lora
from .terms import DenseTerm, EditError, EditTerm, IndexedTerm, LowRankTerm, compute_dtype, weight_name

if TYPE_CHECKING:
    from .peft_export import LoraExport

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class WeightEdit:
    """A sum of weight updates ``ΔW`` on named parameters (see the constructors).

    Attributes:
        terms: the updates, applied in order.
        metadata: JSON-serialisable provenance (``base_model``, ``method``, ...), saved with the edit.
    """

    terms: tuple[EditTerm, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        terms = tuple(self.terms)
        bad = [type(t).__name__ for t in terms if not isinstance(t, EditTerm)]
        if bad:
            raise EditError(f"terms must be EditTerm instances, got {bad}")
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "metadata", dict(self.metadata or {}))

    # -- constructors ----------------------------------------------------------------------------------

    @classmethod
    def dense(cls, deltas: Mapping[str, torch.Tensor], *, scale: float = 1.0,
              metadata: Mapping[str, Any] | None = None) -> WeightEdit:
        """``W[name] += scale · delta`` for each ``{param_name: delta}`` (delta has the parameter's shape)."""
        return cls(tuple(DenseTerm(scale=scale, param=str(n), delta_tensor=d) for n, d in deltas.items()),
                   dict(metadata or {}))

    @classmethod
    def low_rank(cls, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *, scale: float = 1.0,
                 metadata: Mapping[str, Any] | None = None) -> WeightEdit:
        """``W += scale · B @ A`` per ``{module_or_param_name: (B [out, r], A [r, in])}``.

        A module name ``m`` means ``m.weight``. ``out``/``in`` are the weight's dims as stored
        (``[in, out]`` for GPT-2's ``Conv1D``, so there ``B`` is ``[in, r]`` and ``A`` is ``[r, out]``).
        """
        terms = []
        for name, pair in factors.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise EditError(f"{name}: expected a pair (B [out, r], A [r, in]), got {type(pair).__name__}")
            terms.append(LowRankTerm(scale=scale, param=weight_name(name), B=pair[0], A=pair[1]))
        return cls(tuple(terms), dict(metadata or {}))

    @classmethod
    def rank_one(cls, module_name: str, u: torch.Tensor, v: torch.Tensor, *, scale: float = 1.0,
                 metadata: Mapping[str, Any] | None = None) -> WeightEdit:
        """``W += scale · u vᵀ`` on ``module_name``'s weight; ``u [out]``, ``v [in]``."""
        u, v = _vector("u", u), _vector("v", v)
        term = LowRankTerm(scale=scale, param=weight_name(module_name), B=u[:, None], A=v[None, :], label="rank_one")
        return cls((term,), dict(metadata or {}))

    @classmethod
    def component_scale(cls, module_name: str, U_c: torch.Tensor, V_c: torch.Tensor, s: float, *,
                        metadata: Mapping[str, Any] | None = None) -> WeightEdit:
        """Scale the rank-1 component ``U_c V_cᵀ`` of a weight by ``s``: ``W' = W + (s − 1) · U_c V_cᵀ``.

        ``s = 1`` is the identity, ``s = 0`` removes the component. ``U_c [out]``, ``V_c [in]``.
        """
        u, v = _vector("U_c", U_c), _vector("V_c", V_c)
        term = LowRankTerm(scale=float(s) - 1.0, param=weight_name(module_name), B=u[:, None], A=v[None, :],
                           label="component_scale")
        return cls((term,), dict(metadata or {}))

    @classmethod
    def indexed(cls, param_map: ParamMap, vec: torch.Tensor, *, scale: float = 1.0,
                metadata: Mapping[str, Any] | None = None) -> WeightEdit:
        """``param.view(-1)[idx] += scale · vec_part`` for every parameter of ``param_map``; ``vec [n]``."""
        return cls((IndexedTerm(scale=scale, param_map=param_map, vec=vec),), dict(metadata or {}))

    # -- algebra ---------------------------------------------------------------------------------------

    def __add__(self, other: object) -> WeightEdit:
        """Both edits' terms, in order; on a metadata key clash the left edit wins."""
        if not isinstance(other, WeightEdit):
            return NotImplemented
        return WeightEdit(self.terms + other.terms, {**other.metadata, **self.metadata})

    def __radd__(self, other: object) -> WeightEdit:
        if isinstance(other, int) and other == 0:  # sum([...])
            return self
        return NotImplemented

    def scaled(self, alpha: float) -> WeightEdit:
        """Every term's ``scale`` multiplied by ``alpha`` (``ΔW → alpha · ΔW``); tensors are shared."""
        return WeightEdit(tuple(t.scaled(alpha) for t in self.terms), self.metadata)

    def __mul__(self, alpha: object) -> WeightEdit:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            return NotImplemented
        return self.scaled(float(alpha))

    __rmul__ = __mul__

    def __neg__(self) -> WeightEdit:
        return self.scaled(-1.0)

    # -- introspection ---------------------------------------------------------------------------------

    @property
    def param_names(self) -> list[str]:
        """Names of the parameters the edit touches, in order of first appearance (as given)."""
        return list(dict.fromkeys(n for t in self.terms for n in t.param_names))

    def __len__(self) -> int:
        return len(self.terms)

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for t in self.terms:
            label = getattr(t, "label", t.kind)
            kinds[label] = kinds.get(label, 0) + 1
        desc = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "empty"
        return f"WeightEdit({desc}; {len(self.param_names)} params)"

    def delta(self, name: str, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Dense total update ``ΔW`` for one parameter (full shape; a module name means its weight).

        With ``model`` the name may be any alias of a (tied) parameter, the result is on the
        parameter's device, and an untouched parameter gives zeros. Without ``model`` the name must be
        one the edit touches.
        """
        if model is not None:
            binding = self._bind(model)
            alias = param_table(model)[0]
            key = name if name in alias or weight_name(name) not in alias else weight_name(name)
            canon = resolve_name(key, alias)
            p = binding.params[canon]
            pairs = [(t, g) for t, m in zip(self.terms, binding.names) for g, c in m.items() if c == canon]
            dtype = compute_dtype(p.dtype, *(t.dtype for t, _ in pairs))
            out = torch.zeros(p.shape, dtype=dtype, device=p.device)
        else:
            key = name if name in self.param_names else weight_name(name)
            pairs = [(t, key) for t in self.terms if key in t.param_names]
            if not pairs:
                raise EditError(f"the edit does not touch {name!r}; it touches {self.param_names}")
            dtype = compute_dtype(*(t.dtype for t, _ in pairs))
            out = torch.zeros(pairs[0][0].shape_of(key), dtype=dtype, device=pairs[0][0].device)
        for t, given in pairs:
            out += t.delta(given, dtype, out.device)
        return out

    def norm(self) -> float:
        """Frobenius norm of the total update ``sqrt(Σ_params ‖Σ_terms ΔW‖²)``.

        Low-rank-only parameters use ``‖BA‖² = Σ (BᵀB) ⊙ (AAᵀ)`` (no dense ``ΔW``); a parameter touched
        by one indexed term uses its entries; other parameters are densified one at a time (float64).
        """
        total = 0.0
        for name in self.param_names:
            ts = [t for t in self.terms if name in t.param_names and t.scale != 0.0]
            if not ts:
                continue
            dev = ts[0].device
            low_rank = [t for t in ts if isinstance(t, LowRankTerm)]
            if len(low_rank) == len(ts):
                fs = [t.factors(torch.float64, dev) for t in low_rank]
                B, A = torch.cat([b for b, _ in fs], 1), torch.cat([a for _, a in fs], 0)
                total += float(((B.T @ B) * (A @ A.T)).sum())
            elif len(ts) == 1 and isinstance(ts[0], IndexedTerm):
                total += float(ts[0].part(name).double().square().sum())
            else:
                d = ts[0].delta(name, torch.float64, dev)
                for t in ts[1:]:
                    d = d + t.delta(name, torch.float64, dev)
                total += float(d.square().sum())
        return total**0.5

    # -- applying --------------------------------------------------------------------------------------

    def _bind(self, model: torch.nn.Module) -> Binding:
        """Resolve every name against ``model`` and check shapes/dtypes, before anything is touched."""
        alias, params = param_table(model)
        names: list[dict[str, str]] = []
        for term in self.terms:
            mapping = {}
            for given in term.param_names:
                canon = resolve_name(given, alias)
                p = params[canon]
                if not p.is_floating_point():
                    raise EditError(f"{given} is {p.dtype}; only floating-point parameters can be edited")
                want, got = tuple(term.shape_of(given)), tuple(p.shape)
                if want != got:
                    raise EditError(_shape_message(term, given, want, got))
                mapping[given] = canon
            names.append(mapping)
        return Binding(names, params)

    def _apply_terms(self, binding: Binding) -> None:
        for term, mapping in zip(self.terms, binding.names):
            if term.scale != 0.0:
                term.apply_({g: binding.params[c].detach() for g, c in mapping.items()})

    def apply_(self, model: torch.nn.Module) -> EditHandle:
        """Apply in place; the returned handle's ``remove()`` restores the touched entries bit-exactly.

        Only touched tensors are snapshotted (only the touched entries for indexed terms). Factors
        are cast to each parameter's device; ``ΔW`` is formed in the promotion of the term's and the
        parameter's dtypes, then cast to the parameter's dtype. See :class:`EditHandle` for LIFO rules.
        """
        binding = self._bind(model)
        snapshot = self._snapshot_map(binding)
        description = repr(self)
        if snapshot is None:
            return EditHandle(None, {}, None, frozenset(), description)
        params = {c: binding.params[c].detach() for c in snapshot.names}
        with torch.no_grad():
            saved = snapshot.gather(params)
            try:
                self._apply_terms(binding)
            except BaseException:
                snapshot.assign_(params, saved)
                raise
        handle = EditHandle(snapshot, params, saved, frozenset(id(binding.params[c]) for c in snapshot.names),
                            description)
        ACTIVE_HANDLES.append(handle)
        logger.debug("applied %s (snapshot of %d entries)", description, snapshot.size)
        return handle

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[EditHandle]:
        """``with edit.applied(model):`` the edit is in place; restored bit-exactly on exit, even on error."""
        handle = self.apply_(model)
        try:
            yield handle
        finally:
            handle.remove()

    def merge(self, model: torch.nn.Module) -> None:
        """Apply in place permanently (no snapshot, no restore)."""
        binding = self._bind(model)
        with torch.no_grad():
            self._apply_terms(binding)
        logger.info("merged %s", self)

    def _snapshot_map(self, binding: Binding) -> ParamMap | None:
        """A ParamMap of the entries the edit writes: whole tensors, or the union of indexed entries."""
        full: set[str] = set()
        parts: dict[str, list[torch.Tensor]] = {}
        for term, mapping in zip(self.terms, binding.names):
            if term.scale == 0.0:
                continue
            for given, canon in mapping.items():
                idx = term.touched(given)
                parts.setdefault(canon, [])
                if idx is None:
                    full.add(canon)
                else:
                    parts[canon].append(idx)
        if not parts:
            return None
        names = list(parts)
        indices = [None if n in full else torch.unique(torch.cat(parts[n])) for n in names]
        return ParamMap(names, [tuple(binding.params[n].shape) for n in names], indices)

    # -- persistence and export ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``edit.safetensors`` + ``edit.json`` (see :func:`gradedit.edits.io.save_edit`)."""
        return save_edit(self, Path(directory))

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> WeightEdit:
        """Read a folder written by :meth:`save`."""
        terms, metadata = read_edit(Path(directory), device=device)
        return cls(terms, metadata)

    def export_lora(self, directory: str | Path, model: torch.nn.Module, *, rank: int | None = None,
                    energy: float | None = None) -> LoraExport:
        """Write a peft LoRA adapter equal to this edit (see :func:`gradedit.edits.peft_export.export_lora`)."""
        return export_lora(self, Path(directory), model, rank=rank, energy=energy)


def _vector(what: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim != 1:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise EditError(f"{what} must be a 1-D tensor, got {shape}")
    return t


def _shape_message(term: EditTerm, given: str, want: Sequence[int], got: Sequence[int]) -> str:
    if isinstance(term, LowRankTerm):
        what = f"B @ A is {tuple(want)} (B {tuple(term.B.shape)}, A {tuple(term.A.shape)})"
    else:
        what = f"the {term.kind} update has shape {tuple(want)}"
    msg = f"{given}: {what}, expected the parameter's shape {tuple(got)}"
    if len(want) == 2 and tuple(want)[::-1] == tuple(got):
        msg += " (transposed? shapes follow the weight as stored, e.g. [in, out] for GPT-2 Conv1D)"
    return msg
