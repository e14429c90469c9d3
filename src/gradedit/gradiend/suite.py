"""``Suite``: one GRADIEND feature model per class pair of a multi-class feature, then their comparison.

::

    suite = Suite(lm, data, pairs="all", neutral=texts, config={"max_steps": 200},
                  experiment_dir="runs/de-articles")
    suite.train()                      # resumable: finished pairs are skipped on a rerun
    comp = suite.compare(k=1000)       # gradedit.gradiend.compare.Comparison, saved in runs/.../compare

What the pairs share: the base model (one ``LanguageModel``, used in place), the pair data (one
``PairDataset``, its target tokens checked once), and — with ``share_pre_pruning`` and a
``pre_prune_topk`` — ONE pre-pruning statistics pass: mean |diff gradient| over ``pre_prune_samples``
rows drawn from all pairs (balanced over pair and label), giving every pair the same input space.
That costs one pass instead of one per pair, and the pairs then compare on identical supports.

Each pair trains with the public ``Trainer`` in ``experiment_dir/pairs/<A>-vs-<B>`` (class ids go
through ``_files.safe_name``: an id that could leave the folder is refused, never rewritten). The
shared input space is handed to it as ``Trainer(..., input_space=...)``.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import lock_folder, safe_join, safe_name, write_json_atomic
from ..data.schema import PairDataset
from ..models import LanguageModel
from ..models.param_map import ParamMap
from .compare import Comparison, RunInfo, compare_models, load_run
from .compare.report import DEFAULT_TOPK
from .feature_model import FeatureModel, Part
from .gradients import GradientEngine
from .rows import Rows, rows_of
from .train import TrainConfig, Trainer
from .train.pruning import pre_prune

logger = logging.getLogger(__name__)

__all__ = ["Suite", "one_vs_rest", "suite_pairs"]

STATE_FILE = "suite.json"
SHARED_DIR = "shared_pre_prune"
REST = "not_{}"


def one_vs_rest(data: PairDataset, cls: str) -> PairDataset:
    """``data`` with every class other than ``cls`` renamed ``not_<cls>``: rows between two other classes
    become identity rows (label 0); target classes ``(cls, not_<cls>)``."""
    frame = data.to_frame().drop(columns="label")
    rest = REST.format(cls)
    for col in ("factual_class", "alternative_class"):
        frame[col] = frame[col].where(frame[col] == cls, rest)
    return PairDataset.from_frame(frame, target_classes=[cls, rest])


def _pair_counts(data: PairDataset) -> dict[frozenset[str], int]:
    frame = data.to_frame()
    frame = frame[(frame["split"] == "train") & (frame["factual_class"] != frame["alternative_class"])]
    counts: dict[frozenset[str], int] = {}
    for f, a in zip(frame["factual_class"], frame["alternative_class"]):
        key = frozenset((str(f), str(a)))
        counts[key] = counts.get(key, 0) + 1
    return counts


def suite_pairs(data: PairDataset, pairs: str | Sequence[Sequence[str]] = "all") -> list[tuple[str, str]]:
    """The class pairs a suite trains: ``"all"`` = every pair of classes with training rows between them
    (classes sorted, pairs without rows skipped with a log line), ``"one-vs-rest"`` = ``(c, not_c)`` for
    every class, or an explicit list of ``(A, B)`` (class A encoded positive).

    Raises:
        ValueError: an unknown mode, a pair of unknown or equal classes, a repeated pair, no pair at all.
    """
    classes = data.classes
    if isinstance(pairs, str):
        if pairs == "one-vs-rest":
            return [(c, REST.format(c)) for c in classes]
        if pairs != "all":
            raise ValueError(f"pairs must be 'all', 'one-vs-rest' or a list of (A, B) pairs, got {pairs!r}")
        counts = _pair_counts(data)
        out = [(a, b) for a, b in itertools.combinations(classes, 2) if counts.get(frozenset((a, b)))]
        skipped = len(classes) * (len(classes) - 1) // 2 - len(out)
        if skipped:
            logger.info("suite: %d class pair(s) have no training rows between them and are skipped", skipped)
    else:
        out = [(str(p[0]), str(p[1])) for p in pairs]
        for a, b in out:
            if a == b or a not in classes or b not in classes:
                raise ValueError(f"pair ({a!r}, {b!r}) is not two different classes of the data; its classes are "
                                 f"{classes}")
        if len({frozenset(p) for p in out}) != len(out):
            raise ValueError("a class pair is listed twice; give each pair once")
    if not out:
        raise ValueError("no class pair to train: the data has no training rows between two of its classes")
    return out


def _sample(parts: Sequence[Rows], total: int, seed: int) -> Rows:
    """At most about ``total`` rows over all ``parts``, balanced over (part, label) groups (>= 1 each)."""
    rng = np.random.default_rng(seed)
    groups = [(i, np.flatnonzero(p.labels.numpy() == v)) for i, p in enumerate(parts) for v in np.unique(p.labels.numpy())]
    per = max(1, total // max(1, len(groups)))
    texts, fact, alt = [], [], []
    for i, idx in groups:
        for j in np.sort(rng.permutation(idx)[:per]).tolist():
            texts.append(parts[i].texts[j])
            fact.append(int(parts[i].factual[j]))
            alt.append(int(parts[i].alternative[j]))
    return Rows(texts, torch.tensor(fact), torch.tensor(alt), torch.zeros(len(texts)))


class Suite:
    """Train one feature model per class pair and compare them (see the module docstring).

    Args:
        lm: the base model (used in place, never copied).
        data: multi-class pair data with train/val/test splits.
        pairs: ``"all"``, ``"one-vs-rest"`` or a list of ``(A, B)`` (see :func:`suite_pairs`).
        neutral: neutral texts for every pair's Trainer (encoder/decoder evaluation).
        config: a ``TrainConfig`` or dict for every pair; its ``experiment_dir`` is replaced per pair.
        experiment_dir: the suite's folder (default: ``config.experiment_dir``).
        share_pre_pruning: one pre-pruning pass for all pairs (needs ``config.pre_prune_topk``).
        evaluate: evaluate each new pair's encoder on its test split (the comparison shows that r).
    """

    def __init__(self, lm: LanguageModel, data: PairDataset, pairs: str | Sequence[Sequence[str]] = "all", *,
                 neutral: Sequence[str] | None = None, config: TrainConfig | Mapping[str, Any] | None = None,
                 experiment_dir: str | Path | None = None, share_pre_pruning: bool = True,
                 evaluate: bool = True) -> None:
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config or {}))
        self.lm, self.config, self.neutral = lm, cfg, list(neutral) if neutral is not None else None
        self.experiment_dir = Path(experiment_dir if experiment_dir is not None else cfg.experiment_dir)
        self.share_pre_pruning, self.evaluate = share_pre_pruning, evaluate
        self.one_vs_rest = pairs == "one-vs-rest"
        self.pairs = suite_pairs(data, pairs)
        for pair in self.pairs:  # every pair's folder name, before anything trains
            self.pair_name(pair)
        data.validate_tokens(lm)  # once for all pairs (a Trainer re-checks only its own rows)
        self.data = data
        self.shared_map: ParamMap | None = None

    # -- pairs ------------------------------------------------------------------------------------------
    @staticmethod
    def pair_name(pair: Sequence[str]) -> str:
        """``"A-vs-B"``; UnsafeName when it cannot be a folder name (a ``/``, a control character, too long)."""
        return safe_name(f"{pair[0]}-vs-{pair[1]}", "class pair")

    def pair_dir(self, pair: Sequence[str]) -> Path:
        return safe_join(self.experiment_dir / "pairs", self.pair_name(pair), "class pair")

    def pair_data(self, pair: tuple[str, str]) -> PairDataset:
        """The rows a pair's Trainer gets: its one-vs-rest relabelling, or the rows whose factual and
        alternative classes are both in the pair (rows of other pairs would only be label-0 rows that
        training skips and encoder evaluation pays for)."""
        if self.one_vs_rest:
            return one_vs_rest(self.data, pair[0])
        frame = self.data.to_frame()
        inside = (frame["factual_class"].isin(pair) & frame["alternative_class"].isin(pair)).to_numpy()
        return self.data if inside.all() else self.data.where(inside)

    def pair_config(self, pair: tuple[str, str]) -> TrainConfig:
        return self.config.replace(experiment_dir=str(self.pair_dir(pair)))

    def trainer(self, pair: tuple[str, str], input_space: ParamMap | None = None) -> Trainer:
        """A fresh ``Trainer`` for one pair (loading nothing), on ``input_space`` when given."""
        return Trainer(self.lm, self.pair_data(pair), list(pair), neutral=self.neutral, config=self.pair_config(pair),
                       input_space=input_space)

    def _record(self, pair: tuple[str, str]) -> dict[str, Any]:
        cfg = self.pair_config(pair).to_dict()
        cfg.pop("experiment_dir")
        return {"classes": list(pair), "config": cfg, "model": self.lm.name,
                "data": self.pair_data(pair).with_targets(list(pair)).fingerprint(),
                "shared_pre_pruning": self.share_pre_pruning and self.config.pre_prune_topk is not None}

    def _state(self) -> dict[str, Any]:
        path = self.experiment_dir / STATE_FILE
        if not path.is_file():
            return {"pairs": {}}
        try:
            state = json.loads(path.read_text())
            return state if isinstance(state.get("pairs"), dict) else {"pairs": {}}
        except (OSError, ValueError):
            logger.warning("%s is unreadable; every pair is checked again", path)
            return {"pairs": {}}

    def is_done(self, pair: tuple[str, str]) -> bool:
        """The pair finished earlier with the same config, data and base model."""
        rec = self._state()["pairs"].get(self.pair_name(pair))
        return rec == {**self._record(pair), "finished": True} and (self.pair_dir(pair) / "model" / "config.json").is_file()

    # -- shared pre-pruning -----------------------------------------------------------------------------
    def _train_rows(self, pair: tuple[str, str]) -> Rows:
        part = self.pair_data(pair).with_targets(list(pair)).split("train")
        if not self.config.use_identity_rows:
            part = part.where(part.to_frame()["label"].to_numpy() != 0)
        return rows_of(part, self.lm)

    def shared_input_space(self) -> ParamMap:
        """The input space every pair shares: one pre-pruning pass over rows of all pairs (cached in
        ``experiment_dir/shared_pre_prune`` for reruns)."""
        cfg = self.config
        if cfg.pre_prune_topk is None:
            raise ValueError("sharing pre-pruning needs config.pre_prune_topk; set it or share_pre_pruning=False")
        path = self.experiment_dir / SHARED_DIR
        fingerprint = cfg.training_fingerprint()
        fingerprint.pop("gradient_store", None)
        key = {"fingerprint": fingerprint, "pairs": [list(p) for p in self.pairs], "data": self.data.fingerprint(),
               "model": self.lm.name, "one_vs_rest": self.one_vs_rest}
        if (path / "key.json").is_file() and json.loads((path / "key.json").read_text()) == key:
            pm = FeatureModel.from_pretrained(path).param_map
            if pm is not None:
                logger.info("suite: reusing the shared pre-pruned input space in %s", path)
                return pm
        sample = _sample([self._train_rows(p) for p in self.pairs], cfg.pre_prune_samples, cfg.seed)
        logger.info("suite: one shared pre-pruning pass over %d rows of %d pairs", len(sample), len(self.pairs))
        engine = GradientEngine(self.lm, cfg.params, include_embeddings=cfg.include_embeddings)
        pmap = pre_prune(engine, sample.texts, sample.factual, sample.alternative, cfg.pre_prune_topk)
        (path / "key.json").unlink(missing_ok=True)
        FeatureModel(pmap.size, 1, param_map=pmap, seed=0, metadata={"purpose": "shared pre-pruning map"}).save_pretrained(path)
        write_json_atomic(path / "key.json", key)
        return pmap

    # -- training ---------------------------------------------------------------------------------------
    def train(self) -> dict[str, FeatureModel]:
        """Train every pair not finished before (a pair interrupted mid-training resumes from its last
        checkpoint through ``Trainer``); returns ``{pair name: feature model}``."""
        with lock_folder(self.experiment_dir):
            share = self.share_pre_pruning and self.config.pre_prune_topk is not None
            todo = [p for p in self.pairs if not self.is_done(p)]
            logger.info("suite: %d of %d pairs to train in %s", len(todo), len(self.pairs), self.experiment_dir)
            if share and todo:
                self.shared_map = self.shared_input_space()
            for i, pair in enumerate(todo, 1):
                logger.info("suite: pair %d/%d %s", i, len(todo), self.pair_name(pair))
                trainer = self.trainer(pair, input_space=self.shared_map)
                trainer.train()
                if self.evaluate:
                    trainer.evaluate_encoder(split="test")
                state = self._state()
                state["pairs"][self.pair_name(pair)] = {**self._record(pair), "finished": True}
                write_json_atomic(self.experiment_dir / STATE_FILE, state)
        return {self.pair_name(p): FeatureModel.from_pretrained(self.pair_dir(p) / "model") for p in self.pairs}

    # -- comparison -------------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        """The trained pairs as comparison inputs (named ``A-vs-B``)."""
        missing = [self.pair_name(p) for p in self.pairs if not (self.pair_dir(p) / "model" / "config.json").is_file()]
        if missing:
            raise FileNotFoundError(f"pairs not trained yet: {missing}; run suite.train() first")
        return [load_run(self.pair_dir(p), self.pair_name(p)) for p in self.pairs]

    def compare(self, k: int | float = DEFAULT_TOPK, part: Part = "decoder-weight", *, cross: bool = True,
                out: str | Path | None = None, max_rows: int | None = 32) -> Comparison:
        """Compare the pairs' feature models (with cross-encoding on each pair's test rows unless
        ``cross=False``) and save the report in ``out`` (default ``experiment_dir/compare``)."""
        data = {self.pair_name(p): self.pair_data(p) for p in self.pairs}
        comp = compare_models(self.runs(), k=k, part=part, lm=self.lm if cross else None, data=data,
                              max_rows=max_rows, class_data=self.data)
        comp.save(self.experiment_dir / "compare" if out is None else Path(out),
                  title=f"Suite of {len(self.pairs)} class pairs ({self.lm.name})")
        return comp

    def run(self, k: int | float = DEFAULT_TOPK, part: Part = "decoder-weight", **compare_kw: Any) -> Comparison:
        """:meth:`train`, then :meth:`compare`."""
        self.train()
        return self.compare(k, part, **compare_kw)
