"""Feature models to compare, read from training runs (``gradedit train`` / ``Trainer`` folders) or from
bare feature-model folders, with what the comparison shows beside them (classes, encoder r)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..feature_model import FeatureModel

logger = logging.getLogger(__name__)

__all__ = ["RunInfo", "load_run", "load_runs", "unique_names"]

MODEL_DIR = "model"
DATA_FILE = "data.csv"


@dataclass
class RunInfo:
    """One feature model of a comparison.

    Attributes:
        name: its label in tables and plots (unique within a comparison).
        model: the feature model.
        path: the run folder (``None`` for a model built in memory).
        classes: ``(A, B)``, class A encoded positive (from the model's metadata; ``None`` if unknown).
        base_model: the base model id the feature model was trained on (metadata).
        encoder_r: the encoder's Pearson r: on the test split when ``encoder_results_test.json``
            exists, else the chosen seed's validation r from ``seed_report.json``; ``None`` if neither.
        encoder_r_split: ``"test"``, ``"val"`` or ``None``, where ``encoder_r`` comes from.
    """

    name: str
    model: FeatureModel
    path: Path | None = None
    classes: tuple[str, str] | None = None
    base_model: str | None = None
    encoder_r: float | None = None
    encoder_r_split: str | None = None

    @property
    def data_path(self) -> Path | None:
        """The run's pair data (``data.csv``), if it has one."""
        if self.path is None or not (self.path / DATA_FILE).is_file():
            return None
        return self.path / DATA_FILE

    @classmethod
    def from_model(cls, name: str, fm: FeatureModel, encoder_r: float | None = None) -> RunInfo:
        """Wrap an in-memory feature model (classes and base model from its metadata)."""
        classes = fm.metadata.get("classes")
        return cls(name, fm, None, tuple(classes) if classes else None, fm.metadata.get("base_model"),
                   encoder_r, None if encoder_r is None else "given")


def _encoder_r(run: Path) -> tuple[float | None, str | None]:
    test = run / "encoder_results_test.json"
    try:
        if test.is_file():
            return float(json.loads(test.read_text())["correlation"]), "test"
        report = run / "seed_report.json"
        if report.is_file():
            d = json.loads(report.read_text())
            chosen = [s for s in d["seeds"] if s["seed"] == d["chosen_seed"]]
            if chosen:
                return float(chosen[0]["correlation"]), "val"
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("could not read the encoder r of %s (%s); shown as n/a", run, err)
    return None, None


def load_run(path: str | Path, name: str | None = None) -> RunInfo:
    """A run folder (holding ``model/``) or a feature-model folder (holding ``config.json``).

    Raises:
        FileNotFoundError: neither kind of folder (the message says what is missing).
    """
    path = Path(path)
    if (path / MODEL_DIR / "config.json").is_file():
        run, model_dir = path, path / MODEL_DIR
    elif (path / "config.json").is_file():
        run, model_dir = None, path
    else:
        raise FileNotFoundError(f"{path} holds neither model/config.json (a training run) nor config.json "
                                "(a feature model); give a folder written by gradedit train")
    fm = FeatureModel.from_pretrained(model_dir)
    classes = fm.metadata.get("classes")
    r, split = _encoder_r(run) if run is not None else (None, None)
    return RunInfo(name or path.name, fm, run, (str(classes[0]), str(classes[1])) if classes else None,
                   fm.metadata.get("base_model"), r, split)


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Short unique labels: the folder names, with parent folders added where names repeat."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while True:
        names = ["/".join(pp[-depth:]) for pp in parts]
        if len(set(names)) == len(names) or depth >= max(len(pp) for pp in parts):
            return names
        depth += 1


def load_runs(paths: Sequence[str | Path]) -> list[RunInfo]:
    """:func:`load_run` for each path, named by :func:`unique_names`.

    Raises:
        ValueError: fewer than two paths, or a path given twice.
    """
    ps = [Path(p) for p in paths]
    if len(ps) < 2:
        raise ValueError(f"a comparison needs at least two feature models, got {len(ps)}")
    resolved = [p.resolve() for p in ps]
    if len(set(resolved)) != len(resolved):
        raise ValueError("the same run is given twice; give each run once")
    return [load_run(p, n) for p, n in zip(ps, unique_names(ps))]
