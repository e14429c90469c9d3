"""The random-edit control: an edit of the same structure and per-parameter norm, random directions."""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..edits import DenseTerm, EditError, EditTerm, IndexedTerm, LowRankTerm, WeightEdit

logger = logging.getLogger(__name__)

#: added to the seed, so that a control never reproduces directions a user drew with the same
#: small seed (``torch.Generator().manual_seed(0)`` for both would give identical noise)
SEED_SALT = 0x9E3779B9


def _randn_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard normal noise with ``t``'s shape, dtype and device (drawn in fp32 on the CPU)."""
    return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=t.dtype)


def _lowrank_norm(B: torch.Tensor, A: torch.Tensor) -> float:
    """``‖B @ A‖_F`` without forming ``B @ A``: ``sqrt(Σ (BᵀB) ⊙ (AAᵀ))`` in float64."""
    B, A = B.double(), A.double()
    return float(((B.T @ B) * (A @ A.T)).sum().clamp_min(0.0)) ** 0.5


def _ratio(want: float, got: float) -> float:
    return want / got if got > 0 else 0.0


def _random_term(term: EditTerm, gen: torch.Generator) -> EditTerm:
    """A term of the same kind, parameters, shapes, rank and scale, with random directions whose
    unscaled update has the original term's unscaled norm (per parameter for indexed terms)."""
    if isinstance(term, DenseTerm):
        noise = _randn_like(term.delta_tensor, gen)
        r = _ratio(float(term.delta_tensor.double().norm()), float(noise.double().norm()))
        return dataclasses.replace(term, delta_tensor=noise * r)
    if isinstance(term, LowRankTerm):
        B, A = _randn_like(term.B, gen), _randn_like(term.A, gen)
        r = _ratio(_lowrank_norm(term.B, term.A), _lowrank_norm(B, A))
        return dataclasses.replace(term, B=B * r, A=A)
    if isinstance(term, IndexedTerm):
        vec = _randn_like(term.vec, gen)
        pm = term.param_map
        for start, size in zip(pm.offsets, pm.sizes):
            part = slice(start, start + size)
            vec[part] *= _ratio(float(term.vec[part].double().norm()), float(vec[part].double().norm()))
        return dataclasses.replace(term, vec=vec)
    raise EditError(f"random_like does not know how to randomise a {type(term).__name__}")


def _rescale_param(term: EditTerm, name: str, factor: float) -> EditTerm:
    """``term`` with its update on ``name`` multiplied by ``factor`` (other parameters unchanged)."""
    if isinstance(term, DenseTerm):
        return dataclasses.replace(term, delta_tensor=term.delta_tensor * factor)
    if isinstance(term, LowRankTerm):
        return dataclasses.replace(term, B=term.B * factor)
    if isinstance(term, IndexedTerm):
        i = term.param_map.names.index(name)
        start, size = term.param_map.offsets[i], term.param_map.sizes[i]
        vec = term.vec.clone()
        vec[start : start + size] *= factor
        return dataclasses.replace(term, vec=vec)
    raise EditError(f"random_like does not know how to rescale a {type(term).__name__}")


def random_like(edit: WeightEdit, model: torch.nn.Module, seed: int = 0) -> WeightEdit:
    """A random edit with ``edit``'s structure: the same terms (kinds, parameters, shapes, scales,
    low-rank ranks), random Gaussian directions, and the same Frobenius norm of the total update
    ``‖ΔW_p‖`` on every parameter ``p``.

    Noise comes from a local ``torch.Generator`` seeded with ``SEED_SALT + seed`` (the global RNG is
    untouched).
    ``model`` is only used to check that ``edit`` fits it. Parameters touched by several terms are
    rescaled together after drawing, so their summed update also matches.

    Raises:
        EditError: the edit does not fit ``model`` (unknown parameter, wrong shape).
    """
    edit._bind(model)  # validate names and shapes before drawing anything
    gen = torch.Generator().manual_seed(SEED_SALT + int(seed))
    terms = [_random_term(t, gen) for t in edit.terms]
    for name in edit.param_names:
        users = [i for i, t in enumerate(edit.terms) if name in t.param_names and t.scale != 0.0]
        if len(users) < 2:
            continue  # one term: its norm already matches
        want = float(edit.delta(name).double().norm())
        got = float(WeightEdit(tuple(terms)).delta(name).double().norm())
        factor = _ratio(want, got)
        for i in users:
            terms[i] = _rescale_param(terms[i], name, factor)
    meta = {**edit.metadata, "method": "random_control", "control_of": edit.metadata.get("method"), "seed": int(seed)}
    out = WeightEdit(tuple(terms), meta)
    logger.debug("random control for %r: norm %.4g (edit %.4g)", edit, out.norm(), edit.norm())
    return out
