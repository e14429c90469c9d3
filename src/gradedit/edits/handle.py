"""Binding an edit to a model (name resolution) and ``EditHandle`` (the restore side of ``apply_``)."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..models.param_map import ParamMap
from .terms import EditError

logger = logging.getLogger(__name__)

# Handles applied and not yet removed, oldest first (to enforce LIFO removal on shared parameters).
ACTIVE_HANDLES: list[EditHandle] = []


class EditHandle:
    """An applied edit; :meth:`remove` puts the touched entries back bit-exactly.

    Handles on overlapping parameters must be removed in reverse order of application (LIFO), since
    each restores the values it saw when applied; out-of-order removal raises ``RuntimeError`` before
    touching anything. ``remove()`` on a removed handle is a no-op. Not thread-safe.
    """

    def __init__(self, snapshot: ParamMap | None, params: dict[str, torch.Tensor], saved: torch.Tensor | None,
                 ids: frozenset[int], description: str) -> None:
        self._snapshot, self._params, self._saved = snapshot, params, saved
        self._ids = ids
        self._active = True
        self.description = description

    @property
    def active(self) -> bool:
        """Whether the edit is still applied."""
        return self._active

    @property
    def snapshot_size(self) -> int:
        """Number of parameter entries held for the restore (0 once removed)."""
        return self._snapshot.size if self._snapshot is not None else 0

    def remove(self) -> None:
        """Restore the snapshot. Raises ``RuntimeError`` if a later handle on the same parameters is active."""
        if not self._active:
            logger.debug("handle for %s already removed", self.description)
            return
        pos = next((i for i, h in enumerate(ACTIVE_HANDLES) if h is self), None)
        later = [h for h in ACTIVE_HANDLES[pos + 1:] if h._ids & self._ids] if pos is not None else []
        if later:
            raise RuntimeError(f"cannot remove {self.description} while {len(later)} later edit(s) on the same "
                               f"parameters are applied ({later[-1].description}); remove handles in reverse "
                               "order of application (LIFO)")
        if self._snapshot is not None and self._saved is not None:
            with torch.no_grad():
                self._snapshot.assign_(self._params, self._saved)
        self._active = False
        self._snapshot, self._params, self._saved = None, {}, None
        if pos is not None:
            del ACTIVE_HANDLES[pos]

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"EditHandle({self.description}, active={self._active})"


@dataclass
class Binding:
    """Terms resolved against one model: per term ``{given name: canonical name}`` and the parameters."""

    names: list[dict[str, str]]
    params: dict[str, torch.nn.Parameter]


def resolve_name(name: str, alias: Mapping[str, str]) -> str:
    if name in alias:
        return alias[name]
    close = difflib.get_close_matches(name, list(alias), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise EditError(f"the model has no parameter {name!r}{hint}")


def param_table(model: torch.nn.Module) -> tuple[dict[str, str], dict[str, torch.nn.Parameter]]:
    """``(alias -> canonical name, canonical name -> parameter)``; tied weights share a canonical name."""
    first: dict[int, str] = {}
    alias: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        alias[name] = first.setdefault(id(p), name)
    return alias, dict(model.named_parameters())
