"""Finding the linear layers of a model by name: ``nn.Linear`` and HF GPT-2 ``Conv1D`` (weight stored
``[in, out]``), matched by fnmatch globs or compiled regular expressions.

Shared by the component edits (SVD / decomposed components) and the decomposition, each raising its
own error class.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import GradeditError

__all__ = ["ModulePatterns", "find_linear_modules", "is_conv1d", "is_linear", "logical_weight"]

#: a glob, a compiled regex (full match), or a sequence of them
ModulePatterns = str | re.Pattern[str] | Sequence[str | re.Pattern[str]]


def is_conv1d(module: nn.Module) -> bool:
    """HF GPT-2 style ``Conv1D`` (weight ``[in, out]``), detected without importing transformers."""
    w = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(w, Tensor) and w.dim() == 2 and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def logical_weight(module: nn.Module, error: type[GradeditError] = GradeditError) -> Tensor:
    """The weight ``[out, in]`` (a transposed view for ``Conv1D``); ``error`` if it is not a tensor."""
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        raise error(f"{type(module).__name__}.weight is a {type(w).__name__}, not a tensor")
    return w.T if is_conv1d(module) else w


def _matches(pattern: str | re.Pattern[str], name: str) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def find_linear_modules(model: nn.Module, patterns: ModulePatterns,
                        error: type[GradeditError] = GradeditError) -> dict[str, nn.Module]:
    """Linear / ``Conv1D`` modules whose names match any pattern, in model order.

    A ``str`` pattern is a glob (``"model.layers.*.mlp.gate_proj"``), a compiled ``re.Pattern`` must
    match the whole name. Non-linear modules matched by a wildcard are skipped.

    Raises:
        error: no pattern, a pattern that is not a string/regex, a pattern matching no module, or one
            matching only modules that are not linear layers.
    """
    pats = [patterns] if isinstance(patterns, (str, re.Pattern)) else list(patterns)
    if not pats:
        raise error("no module pattern given; pass e.g. 'model.layers.*.mlp.gate_proj'")
    named = dict(model.named_modules())
    chosen: set[str] = set()
    for pat in pats:
        if not isinstance(pat, (str, re.Pattern)):
            raise error(f"module patterns are glob strings or compiled regexes, got {type(pat).__name__}")
        shown = getattr(pat, "pattern", pat)
        hits = [n for n in named if n and _matches(pat, n)]
        if not hits:
            lin = [n for n, m in named.items() if is_linear(m)]
            raise error(f"module pattern {shown!r} matches no module of {type(model).__name__}; "
                        f"linear modules look like: {', '.join(lin[:4]) or 'none'}")
        lin_hits = [n for n in hits if is_linear(named[n])]
        if not lin_hits:
            kinds = sorted({type(named[n]).__name__ for n in hits})
            raise error(f"module pattern {shown!r} matches {hits[:3]} ({', '.join(kinds)}), which "
                        f"{'is' if len(hits) == 1 else 'are'} not a linear layer (nn.Linear or Conv1D); "
                        f"name the linear layers inside it, e.g. {hits[0]}.<child projection>")
        chosen.update(lin_hits)
    return {n: m for n, m in named.items() if n in chosen}
