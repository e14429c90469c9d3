"""Parameter selection: which weights of a model take part (transformer blocks, patterns, embeddings)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import torch

__all__ = ["BLOCK_PATTERN", "select_parameters"]


BLOCK_PATTERN = re.compile(r"(^|\.)(layers|layer|h|blocks)\.\d+\.")


def select_parameters(
    model: torch.nn.Module,
    patterns: Sequence[str] | None = None,
    *,
    include_embeddings: bool = False,
    weights_only: bool = True,
) -> dict[str, torch.nn.Parameter]:
    """Parameters by name, in model order.

    Args:
        patterns: glob patterns (``fnmatch``) on parameter names, e.g. ``["*.mlp.*"]``. ``None``
            selects every transformer-block parameter.
        include_embeddings: also select input/output embedding matrices.
        weights_only: skip 1-D parameters (biases, norms) when ``patterns`` is ``None``.

    Raises:
        ValueError: a pattern matches nothing (the message lists a few real names).
    """
    named = dict(model.named_parameters())
    emb_names = _embedding_param_names(model)
    chosen: dict[str, torch.nn.Parameter] = {}
    if patterns is None:
        for n, p in named.items():
            if BLOCK_PATTERN.search(n) and (p.ndim >= 2 or not weights_only):
                chosen[n] = p
    else:
        for pat in patterns:
            hits = [n for n in named if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                sample = ", ".join(list(named)[:4])
                raise ValueError(f"parameter pattern {pat!r} matches nothing (names look like: {sample}, ...)")
            for n in hits:
                chosen[n] = named[n]
    if include_embeddings:
        for n in emb_names:
            chosen[n] = named[n]
    elif patterns is None:
        for n in emb_names:
            chosen.pop(n, None)
    if not chosen:
        raise ValueError("no parameters selected; pass patterns such as ['*.mlp.*']")
    return {n: named[n] for n in named if n in chosen}


def _embedding_param_names(model: torch.nn.Module) -> list[str]:
    ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(model, getter, lambda: None)()
        if mod is not None and getattr(mod, "weight", None) is not None:
            ids.add(id(mod.weight))
    return [n for n, p in model.named_parameters() if id(p) in ids]
