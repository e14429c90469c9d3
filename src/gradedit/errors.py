"""Every public gradedit exception, under one base class :class:`GradeditError`."""

from __future__ import annotations

__all__ = ["GradeditError", "DecompositionError", "TokenError", "DataError", "ArtifactError"]


class GradeditError(Exception):
    """Base class of every error gradedit raises on purpose (bad input, corrupt artefact, ...)."""


class DecompositionError(GradeditError, ValueError):
    """A parameter decomposition got bad input, or a saved one is corrupt or belongs to another model."""


class TokenError(GradeditError, ValueError):
    """A target word is not exactly one token of the model's vocabulary."""


class DataError(GradeditError, ValueError):
    """Malformed pair data; the message names the problem, the row(s) and the fix."""


class ArtifactError(GradeditError, ValueError):
    """A saved artefact (feature model, edit, decomposition) is corrupt, truncated or inconsistent."""
