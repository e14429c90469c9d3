"""Learned (SPD-style) components as :class:`Component` objects, so every component edit takes them
exactly like SVD components.

A decomposition's component ``c`` of a module has the ``[out, in]`` weight ``outer(U[c], V[:, c])``
(``V [in, C]``, ``U [C, out]``, see :mod:`gradedit.decompose`). As a :class:`Component` it becomes
``U = U[c] / ‖U[c]‖`` ``[out]``, ``V = V[:, c] / ‖V[:, c]‖`` ``[in]`` and ``sigma = ‖U[c]‖ · ‖V[:, c]‖``,
so ``component.edit(s)`` is ``W' = W + (s − 1) · outer(U[c], V[:, c])``: ``s = 0`` ablates the
component, which equals running the model with that component's mask at 0 and every other mask at 1.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

import torch

from ...decompose import Decomposition
from ...errors import DecompositionError
from .svd import Component, ComponentSet

logger = logging.getLogger(__name__)

__all__ = ["component_weight", "decomposed_components"]


def _selected(dec: Decomposition, modules: str | Sequence[str] | None) -> list[str]:
    if modules is None:
        return dec.modules
    pats = [modules] if isinstance(modules, str) else list(modules)
    chosen = [m for m in dec.modules if any(fnmatch.fnmatchcase(m, p) for p in pats)]
    if not chosen:
        raise DecompositionError(f"module pattern(s) {pats} match no decomposed module; decomposed: {dec.modules}")
    return chosen


def decomposed_components(dec: Decomposition, modules: str | Sequence[str] | None = None, *,
                          alive_only: bool = True) -> ComponentSet:
    """The learned components of ``dec`` as a :class:`ComponentSet` (module by module, by index).

    Args:
        modules: names or fnmatch patterns among the decomposed modules (``None``: all).
        alive_only: keep only components that fired on the decomposition's statistics rows
            (``firing_frequency > 0``); without statistics every component is kept.

    Returns:
        Components with ``index`` = the component's index in its module and ``stored_transposed``
        set for GPT-2 ``Conv1D`` layers. Components with a zero weight are skipped.
    """
    comps: list[Component] = []
    for name in _selected(dec, modules):
        V, U = dec.components(name)
        info = dec.infos[name]
        freq = (dec.stats.get(name) or {}).get("firing_frequency")
        nv, nu = V.norm(dim=0), U.norm(dim=1)
        for c in range(info.C):
            if alive_only and freq is not None and not freq[c] > 0:
                continue
            if not (nv[c] > 0 and nu[c] > 0):
                continue
            comps.append(Component(name, c, (U[c] / nu[c]).contiguous(), (V[:, c] / nv[c]).contiguous(),
                                   float(nu[c] * nv[c]), info.stored_transposed))
        logger.debug("%s: %d of %d components", name, sum(c.module_name == name for c in comps), info.C)
    return ComponentSet(comps)


def component_weight(dec: Decomposition, module: str, index: int) -> torch.Tensor:
    """Component ``index`` of ``module`` as a dense ``[out, in]`` matrix ``outer(U[c], V[:, c])``."""
    V, U = dec.components(module)
    return torch.outer(U[index], V[:, index])
