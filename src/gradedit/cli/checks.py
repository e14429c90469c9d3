"""Checks the commands make before any model loads (so a typo costs milliseconds, not a model load):
data specs and their classes, run folders (with a hint when the run is one level down), new output
folders, neutral text, edit and rewrite folders. Nothing here imports torch, pandas or transformers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = ["NEUTRAL_TEXTS", "DataSpec", "NoEditFound", "check_classes", "check_langs", "check_run_class", "data_spec",
           "edit_source", "finite_float", "neutral_choice", "neutral_texts", "new_folder", "read_lines", "run_classes", "run_dir",
           "run_neutral"]

NEUTRAL_TEXTS = 256
"""Neutral sentences ``train`` records by default (the decoder scores the first 64)."""

RUN_FILES = ("train_config.json", "data.csv", "model/config.json")


def finite_float(value: str) -> float:
    """argparse ``type=`` for a number flag: a finite float (``nan``/``inf`` are refused as a usage error)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number; give e.g. 1e-3")
    return number


class NoEditFound(Exception):  # noqa: N818 - a result, not a failure of gradedit
    """A command ran correctly but found no edit worth saving (exit code 3)."""


@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` names: a file/folder or a built-in feature; its class ids and language when known."""

    spec: str
    feature: str | None
    classes: tuple[str, ...] | None
    lang: str | None

    @property
    def is_file(self) -> bool:
        return self.feature is None or Path(self.spec).exists()


def _file_classes(path: Path) -> tuple[str, ...] | None:
    """Class ids of a pair-data file or per-class folder, read without pandas (None: not readable here)."""
    if path.is_dir():
        stems = sorted({p.stem for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".parquet", ".jsonl")})
        return tuple(stems) or None
    seen: dict[str, None] = {}
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as fh:
                for row in csv.DictReader(fh):
                    for key in ("factual_class", "alternative_class"):
                        if row.get(key):
                            seen.setdefault(row[key])
        elif suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        row = json.loads(line)
                        for key in ("factual_class", "alternative_class"):
                            if row.get(key) is not None:
                                seen.setdefault(str(row[key]))
        else:
            return None  # Parquet: checked when the data loads
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error):
        return None  # the loader reports the problem with the file's own words
    return tuple(seen) or None


def data_spec(spec: str) -> DataSpec:
    """Resolve ``--data``: an existing file/folder, else a built-in feature name (``NAME`` or ``NAME:A-B``).

    Raises:
        FileNotFoundError: neither a file/folder nor a built-in feature (the message lists the features).
        ConfigError: a built-in feature with unknown classes.
    """
    from ..data import catalog

    path = Path(spec)
    if path.exists():
        classes = _file_classes(path)
        hit = catalog.lang_of_classes(classes) if classes else None
        return DataSpec(spec, hit[0] if hit else None, classes, hit[1] if hit else None)
    base = spec.partition(":")[0]
    if base not in catalog.CATALOG:
        raise FileNotFoundError(f"--data {spec!r} is neither a data file/folder nor a built-in feature "
                                f"({', '.join(catalog.names())})")
    entry, chosen = catalog.parse(spec)
    return DataSpec(spec, entry.name, chosen or entry.classes, entry.lang)


def check_classes(data: DataSpec, classes: list[str]) -> None:
    """``--classes A B``: two different ids, both in the data (when its classes can be read cheaply)."""
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ConfigError(f"--classes needs two different class ids, got {classes}")
    if data.classes is None:
        return
    bad = [c for c in classes if c not in data.classes]
    if bad:
        what = f"feature {data.feature!r}" if not data.is_file else f"{data.spec}"
        raise ConfigError(f"class(es) {bad} not in {what}; its classes are {', '.join(data.classes)}")


def check_langs(langs: list[str], flag: str) -> None:
    """Every language has a Bible to read text from (``--langs``, ``--target``, ``--others``)."""
    from ..data.bible import DEFAULT_TRANSLATION

    bad = [lang for lang in langs if lang not in DEFAULT_TRANSLATION]
    if bad:
        raise ConfigError(f"{flag}: no Bible text for {', '.join(map(repr, bad))}; languages: {', '.join(DEFAULT_TRANSLATION)}")


def read_lines(file: str | Path, what: str) -> list[str]:
    """The non-empty stripped lines of a UTF-8 text file (``what`` names the flag in errors)."""
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file (give a text file with one text per line)")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({err.reason})") from None
    if not lines:
        raise ConfigError(f"{what} {path} holds no text (one text per line)")
    return lines


def neutral_choice(value: str | None, data: DataSpec) -> tuple[str, str | list[str]]:
    """``train --neutral``: (source description, a language code or the texts of a file).

    Default: the data's language (from the feature name, or from the classes of a file that
    ``data build`` wrote). Raises ConfigError when neither is known.
    """
    from ..data import catalog

    if value is None:
        if data.lang is None:
            raise ConfigError(f"cannot tell the language of {data.spec} (its classes match no built-in feature); give "
                             f"--neutral FILE (one neutral text per line) or --neutral LANG ({', '.join(catalog.NEUTRAL_LANGS)})")
        return f"features.neutral({data.lang!r}, n={NEUTRAL_TEXTS})", data.lang
    return _neutral_flag(value)


def neutral_texts(chosen: str | list[str]) -> list[str]:
    """The texts of a :func:`neutral_choice` / :func:`run_neutral` result (a language loads its corpus)."""
    if isinstance(chosen, list):
        return chosen
    from ..data import features

    return features.neutral(chosen, n=NEUTRAL_TEXTS)


def _neutral_flag(value: str) -> tuple[str, str | list[str]]:
    """``--neutral FILE|LANG``: a file's lines, or a language for ``features.neutral``."""
    from ..data import catalog

    if Path(value).is_file() or value not in catalog.NEUTRAL_LANGS:
        return value, read_lines(value, "--neutral")
    return f"features.neutral({value!r}, n={NEUTRAL_TEXTS})", value


def _is_run(path: Path) -> bool:
    return all((path / f).is_file() for f in RUN_FILES)


def run_dir(value: str) -> Path:
    """A finished training run folder; the error names the sub-folder that is one (``runs/demo`` → ``runs/demo/run``)."""
    path = Path(value)
    if _is_run(path):
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; give a run folder written by gradedit train")
    inner = sorted(p for p in path.iterdir() if p.is_dir() and _is_run(p))
    if inner:
        raise FileNotFoundError(f"{path} is not a run folder, but {inner[0]} is: give {inner[0]}")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    raise FileNotFoundError(f"{path} is not a finished gradedit run (missing {', '.join(missing)}); "
                            f"train it first with gradedit train --out {path}")


def run_classes(run: Path) -> list[str]:
    """The target classes a run recorded (``model/config.json`` metadata)."""
    try:
        meta = json.loads((run / "model" / "config.json").read_text(encoding="utf-8")).get("metadata") or {}
    except (OSError, ValueError):
        return []
    return [str(c) for c in meta.get("classes") or []]


def run_neutral(run: Path, override: str | None) -> tuple[str, str | list[str]] | None:
    """The neutral text a step on ``run`` should use: ``None`` = the run's own ``neutral.json``;
    else (source, language or texts) from ``--neutral FILE|LANG``. Raises ConfigError when the run
    records none and no ``--neutral`` is given (runs trained before ``train`` recorded it)."""
    from ..data import catalog

    if override is not None:
        return _neutral_flag(override)
    try:
        texts = json.loads((run / "neutral.json").read_text(encoding="utf-8")).get("texts")
    except (OSError, ValueError, AttributeError):
        texts = None
    if not texts:
        raise ConfigError(f"{run} records no neutral text (neutral.json; runs trained before gradedit train recorded "
                         f"it): give --neutral FILE (one text per line) or --neutral LANG "
                         f"({', '.join(catalog.NEUTRAL_LANGS)})")
    return None


def check_run_class(run: Path, target_class: str | None) -> None:
    """``--target-class`` is one of the run's classes."""
    classes = run_classes(run)
    if target_class is not None and classes and target_class not in classes:
        raise ConfigError(f"--target-class {target_class!r} is not a class of {run}; its classes are {', '.join(classes)}")


def new_folder(value: str, flag: str = "--out") -> Path:
    """An output folder that must not exist yet."""
    path = Path(value)
    if path.exists():
        raise FileExistsError(f"{flag} {path} exists; give a new folder (nothing is overwritten)")
    return path


def edit_source(value: str) -> tuple[str, Path, str | None]:
    """``blast``'s folder: ``("rewrite", path, base model)`` for a rewritten model (``rewrite_info.json``)
    or ``("edit", path, base model or None)`` for a saved ``WeightEdit`` (``edit.json``)."""
    path = Path(value)
    if (path / "rewrite_info.json").is_file():
        info = json.loads((path / "rewrite_info.json").read_text(encoding="utf-8"))
        return "rewrite", path, info.get("base_model")
    if (path / "edit.json").is_file():
        try:
            doc = json.loads((path / "edit.json").read_text(encoding="utf-8"))
            base = doc.get("base_model") or (doc.get("metadata") or {}).get("base_model")
        except (OSError, ValueError, AttributeError):
            base = None  # WeightEdit.load reports a corrupt file
        return "edit", path, base
    if path.is_dir() and (_is_run(path) or any(_is_run(p) for p in path.iterdir() if p.is_dir())):
        raise FileNotFoundError(f"{path} is a training run, not an edit: save a rewrite first "
                                f"(gradedit rewrite RUN --target-class C --out DIR), then gradedit blast DIR")
    raise FileNotFoundError(f"{path} holds neither rewrite_info.json (a folder from gradedit rewrite) nor "
                            f"edit.json (a folder from gradedit edit or WeightEdit.save)")
