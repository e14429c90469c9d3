"""``Trainer``: the GRADIEND facade — data + model + config in, a trained feature model out.

The method names follow the gradiend tutorial (``train``, ``get_model``,
``plot_training_convergence``) so its users can switch without relearning.

``Trainer.train()`` under ``torchrun`` / ``accelerate launch`` joins the process group itself and
trains data parallel (see :mod:`.parallel` and docs/scaling.md); every rank returns the same model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy
import safetensors
import torch
import transformers

from ... import dist
from ..._files import write_json_atomic
from ..._version import __version__
from ...data.schema import PairDataset
from ...errors import ArtifactError, ConfigError, DataError
from ...models import LanguageModel
from ...models.param_map import ParamMap
from ..feature_model import FeatureModel
from ..gradients import GradientEngine
from ..mlm_head import MLMHead
from ..model import ModelWithGradiend
from ..rows import Rows, balanced_cap
from ..store import STORE_DIR, GradientStore, extract_store, store_key
from .after import AfterTraining
from .config import TrainConfig, resolve_feature_device
from .head import check_head_config, head_rows, run_head
from .loop import SeedResult, SeedTrainer
from .parallel import lock_on_main, main_only
from .postprune import post_prune
from .pruning import pre_prune

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
DATA_FILE = "data.csv"
NEUTRAL_FILE = "neutral.json"
CONFIG_FILE = "train_config.json"


def _cached_pre_prune(path: Path, key: dict[str, Any]) -> ParamMap | None:
    """The pre-pruned map saved in ``path`` for exactly ``key``; ``None`` when absent, made for another
    key, or left incomplete/corrupt by an interrupted run (then it is recomputed)."""
    if not (path / "key.json").is_file():
        if path.exists():
            logger.warning("pre-pruning cache %s has no key.json (interrupted run?); recomputing it", path)
        return None
    try:
        if json.loads((path / "key.json").read_text()) != key:
            return None
        pmap = FeatureModel.from_pretrained(path).param_map
    except (OSError, ValueError) as err:  # JSON, artefact and missing-file errors
        logger.warning("pre-pruning cache %s is unreadable (%s); recomputing it", path, err)
        return None
    if pmap is None:
        return None
    logger.info("reusing the pre-pruned input space in %s", path)
    return pmap


def _checked_neutral(neutral: Sequence[str] | None) -> list[str] | None:
    """``neutral`` as a list (``None`` stays ``None``); an empty list, a single string, non-strings or only
    blank texts raise DataError."""
    if neutral is None:
        return None
    fix = "give a list of neutral texts (e.g. gradedit.data.features.neutral('en')) or neutral=None"
    if isinstance(neutral, (str, bytes)):
        raise DataError(f"neutral is a single string, not a list of texts; {fix}")
    texts = list(neutral)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"neutral[{bad}] is {type(texts[bad]).__name__}, not a string; {fix}")
    if not any(t.strip() for t in texts):
        raise DataError(f"neutral holds no text ({len(texts)} blank or no entries); {fix}")
    return texts


class Trainer(AfterTraining):
    """Train a GRADIEND feature model for two target classes of a ``PairDataset``.

    Args:
        lm: the base model (used in place, never copied).
        data: rows with train/val/test splits.
        target_classes: ``[A, B]``; class A is encoded as positive.
        neutral: optional neutral texts (used by encoder/decoder evaluation).
        config: a ``TrainConfig`` or a dict of its fields (unknown keys raise).
        input_space: a precomputed input space (a ``ParamMap`` over parameters that ``config.params``
            selects, e.g. one pre-pruning shared by several trainers, or ``FeatureModel.param_map`` of
            an earlier run): training uses it as is and skips pre-pruning (``pre_prune_topk`` is then
            ignored). A checkpoint trained on another input space is not resumed.
    """

    def __init__(self, lm: LanguageModel, data: PairDataset, target_classes: Sequence[str],
                 neutral: Sequence[str] | None = None, config: TrainConfig | Mapping[str, Any] | None = None,
                 input_space: ParamMap | None = None) -> None:
        if config is None:
            config = TrainConfig()
        elif isinstance(config, Mapping):
            config = TrainConfig.from_dict(config)
        elif not isinstance(config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig or a dict of its fields, got {type(config).__name__}")
        self.lm, self.config = lm, config
        self._set_classes(data, target_classes)
        self.data.validate_tokens(lm)
        self.neutral = _checked_neutral(neutral)
        self.experiment_dir = Path(config.experiment_dir)
        check_head_config(lm, config)
        self.engine = GradientEngine(lm, config.params, include_embeddings=config.include_embeddings)
        #: the input space given to the constructor (``None``: pre-pruned, or every selected entry)
        self.input_space = self._checked_input_space(input_space)
        self.seed_results: list[SeedResult] = []
        self._model: FeatureModel | None = None
        #: the gradient store of the last ``train()`` (dtype, folder, rows, entries, disk_bytes, seconds)
        self._store_info: dict[str, Any] | None = None

    # -- data ----------------------------------------------------------------------------------------
    def _set_classes(self, data: PairDataset, target_classes: Sequence[str]) -> None:
        """Check the target classes; set ``self.classes`` and ``self.data`` (labels for them)."""
        targets = tuple(target_classes) if not isinstance(target_classes, str) else (target_classes,)
        if len(targets) != 2 or targets[0] == targets[1]:
            raise ConfigError(f"target_classes must be two different class ids, got {list(targets)}; "
                              f"choose two of the data's classes {data.classes}")
        missing = [c for c in targets if c not in data.classes]
        if missing:
            raise ConfigError(f"target class(es) {missing} not in the data; its classes are {data.classes}: "
                              "choose two of them")
        self.classes = (str(targets[0]), str(targets[1]))
        self.data = data.with_targets(list(self.classes))

    def _rows(self, split: str, *, cap: int | None = None, seed: int = 0) -> Rows:
        part = self.data.split(split)
        if not self.config.use_identity_rows or split != "train":
            part = part.where(part.to_frame()["label"].to_numpy() != 0)
        if len(part) == 0:
            raise DataError(f"the {split!r} split has no rows of classes {list(self.classes)}; add rows of both classes "
                            f"to it (or re-split the data)")
        rows = head_rows(part, self.lm, self.engine.head)
        return balanced_cap(rows, cap, seed) if cap else rows

    def metadata(self) -> dict[str, Any]:
        head = self.engine.head
        extra = {} if head is None else {"mlm_head": {"pooling_length": head.pooling_length, "tokens": head.tokens}}
        return {**extra, "base_model": self.lm.name, "source": self.config.source, "target": self.config.target,
                "classes": list(self.classes), "data_fingerprint": self.data.fingerprint(),
                "gradedit_version": __version__}

    # -- training -------------------------------------------------------------------------------------
    def _checked_input_space(self, space: ParamMap | None) -> ParamMap | None:
        """``space`` if it indexes parameters this trainer computes gradients for, with their shapes."""
        if space is None:
            return None
        if not isinstance(space, ParamMap):
            raise ConfigError(f"input_space must be a ParamMap (e.g. FeatureModel.param_map), got {type(space).__name__}")
        params = self.engine.params
        outside = [n for n in space.names if n not in params]
        if outside:
            raise ConfigError(f"input_space holds parameters that config.params does not select: {outside[:3]}; build "
                              f"it over the trainer's parameters ({len(params)} selected) or widen TrainConfig.params")
        wrong = [(n, s, tuple(params[n].shape)) for n, s in zip(space.names, space.shapes) if tuple(params[n].shape) != s]
        if wrong:
            n, s, real = wrong[0]
            raise ConfigError(f"input_space was built for another model: {n} has shape {s} there, {real} in "
                              f"{self.lm.name}; build it from this model")
        return space

    def _input_space(self, train: Rows) -> ParamMap:
        cfg = self.config
        if self.input_space is not None:
            logger.info("training on the given input space (%d entries); no pre-pruning", self.input_space.size)
            return self.input_space
        path = self.experiment_dir / "pre_prune"
        fingerprint = cfg.training_fingerprint()
        fingerprint.pop("gradient_store", None)  # how gradients are stored does not change the pre-pruning
        key = {"fingerprint": fingerprint, "data": self.data.fingerprint(), "model": self.lm.name}
        if cfg.pre_prune_topk is None:
            return ParamMap.from_params(self.engine.params)
        cached = _cached_pre_prune(path, key)
        if cached is not None:
            return cached
        sample = balanced_cap(train, cfg.pre_prune_samples, cfg.seed)
        pmap = pre_prune(self.engine, sample.texts, sample.factual, sample.alternative, cfg.pre_prune_topk)
        holder = FeatureModel(pmap.size, 1, param_map=pmap, seed=0, metadata={"purpose": "pre-pruning map"})

        def save() -> None:
            (path / "key.json").unlink(missing_ok=True)  # the key is written last: no key beside a half-written map
            holder.save_pretrained(path)
            write_json_atomic(path / "key.json", key)

        main_only(save)
        return pmap

    def _gradient_store(self, train: Rows, pmap: ParamMap) -> GradientStore | None:
        """The store of ``train``'s gradients over ``pmap`` (extracted now unless ``experiment_dir`` already
        holds it), or ``None`` with ``gradient_store="off"``."""
        cfg = self.config
        if cfg.gradient_store == "off":
            return None
        t0 = time.time()
        key = store_key(self.engine, train, pmap, classes=self.classes, split="train", source=cfg.source,
                        target=cfg.target, dtype=cfg.gradient_store)
        store = extract_store(self.experiment_dir / STORE_DIR, self.engine, train, pmap, key)
        self._store_info = {"dtype": key.dtype, "folder": str(store.folder), "rows": key.n_rows,
                            "entries": key.n_inputs, "disk_bytes": sum(s.bytes or 0 for s in store.index.shards),
                            "extracted_rows": store.extracted_rows, "seconds": round(time.time() - t0, 2)}
        return store

    def train(self) -> FeatureModel:
        """Train up to ``max_seeds`` seeds; keep the best convergent one in ``experiment_dir/model``.

        One process at a time per ``experiment_dir``: it is locked for the whole run.

        Under ``torchrun`` / ``accelerate launch`` every rank calls it: each computes its share of every
        batch's gradient examples (and of the gradient store, pre-pruning and validation), the gradients
        are summed over ranks before each step, rank 0 alone locks and writes ``experiment_dir`` (a
        folder every rank sees) and every rank returns the same model.

        With ``gradient_store`` on, the training rows' gradients are read from (and first extracted
        into) ``experiment_dir/gradient_store``.

        Raises:
            FolderLocked: another process is training in ``experiment_dir``.
            TrainingError: a NaN/Inf loss or gradient (the last good checkpoint is kept), or too little
                free disk for the gradient store.
            ArtifactError: ``experiment_dir/gradient_store`` holds a store of other data, another input
                space, base model, source/target or dtype (delete it to extract again).
        """
        dist.init()
        logger.info("feature model on %s (base model on %s)", self.feature_device, self.lm.device)  # checked before any work
        with contextlib.ExitStack() as stack:
            lock_on_main(stack, self.experiment_dir)
            return self._train()

    def _train(self) -> FeatureModel:
        cfg = self.config
        t0 = time.time()
        self.engine.head = self._head()
        train = self._rows("train")
        val = self._rows("val", cap=cfg.eval_max_size, seed=cfg.seed)
        pmap = self._input_space(train)
        logger.info("training GRADIEND on %d rows (%d val), input space %d entries", len(train), len(val), pmap.size)
        self.seed_results = []
        self._store_info = None
        store = self._gradient_store(train, pmap)
        try:
            main_only(self._save_inputs)  # after the store check: a refused run leaves the folder's inputs as they were
            for k in range(cfg.max_seeds):
                seed = cfg.seed + k
                st = self._seed_trainer(seed, train, val, pmap, store)
                res = st.run()
                self.seed_results.append(res)
                logger.info("seed %d: r=%+.3f means=%s converged=%s", seed, res.correlation, res.class_means,
                            res.converged)
                if sum(r.converged for r in self.seed_results) >= cfg.min_convergent_seeds:
                    break
        finally:
            if store is not None:
                store.close()
        chosen = self._choose()
        model = FeatureModel.from_pretrained(chosen.directory / "best", device=self.feature_device)
        model = post_prune(model, self.engine, val, cfg)  # measures the pruned encoder on val again
        model.metadata.update({"seed": chosen.seed, "converged": chosen.converged})
        main_only(lambda: model.save_pretrained(self.experiment_dir / MODEL_DIR))
        self._model = model
        main_only(lambda: self._write_reports(chosen, time.time() - t0, pmap.size))
        return model

    def _head(self) -> MLMHead | None:
        """The run's MLM head (``None`` without one); under a launcher rank 0 trains and saves it, then every
        rank loads the saved head (the same weights everywhere)."""
        if not dist.is_distributed() or self.config.mlm_head is False:
            return run_head(self.lm, self.data, self.config, self.experiment_dir, train=True)
        main_only(lambda: run_head(self.lm, self.data, self.config, self.experiment_dir, train=True))
        return run_head(self.lm, self.data, self.config, self.experiment_dir, train=False)

    def _seed_trainer(self, seed: int, train: Rows, val: Rows, pmap: ParamMap,
                      store: GradientStore | None) -> SeedTrainer:
        return SeedTrainer(self.engine, pmap, self.config, seed, train, val, self.classes,
                           self.experiment_dir / f"seed_{seed}", self.metadata(), store=store)

    def _save_inputs(self) -> None:
        """Keep the data and neutral text beside the run, so ``Trainer.load(dir)`` can rebuild it."""
        self.data.save(self.experiment_dir / DATA_FILE)
        write_json_atomic(self.experiment_dir / NEUTRAL_FILE, {"texts": self.neutral})
        write_json_atomic(self.experiment_dir / CONFIG_FILE, self.config.to_dict())

    @classmethod
    def load(cls, experiment_dir: str | Path, lm: LanguageModel | None = None) -> Trainer:
        """Rebuild the trainer of a finished run (base model from the recorded id unless ``lm`` is given)."""
        from ...models import load_model

        d = Path(experiment_dir)
        missing = [f for f in (DATA_FILE, CONFIG_FILE, MODEL_DIR + "/config.json") if not (d / f).exists()]
        if missing:
            raise FileNotFoundError(f"{d} is not a finished gradedit run (missing {missing}); train it first")
        config = TrainConfig.load(d / CONFIG_FILE).replace(experiment_dir=str(d))
        fm = FeatureModel.from_pretrained(d / MODEL_DIR)
        classes = fm.metadata.get("classes")
        if classes is None:
            raise ArtifactError(f"{d / MODEL_DIR} records no target classes in its metadata, so it was not saved by "
                                "Trainer; train the run again")
        if lm is None:
            lm = load_model(fm.metadata["base_model"])
        data = PairDataset.load(d / DATA_FILE, target_classes=classes)
        neutral = json.loads((d / NEUTRAL_FILE).read_text())["texts"] if (d / NEUTRAL_FILE).is_file() else None
        trainer = cls(lm, data, classes, neutral=neutral, config=config)
        trainer._model = fm.to(trainer.feature_device)
        return trainer

    def _choose(self) -> SeedResult:
        conv = [r for r in self.seed_results if r.converged]
        pool = conv or self.seed_results
        if not conv:
            logger.warning("no seed converged (best |r| = %.3f); keeping the best one anyway",
                           max(abs(r.correlation) for r in pool))
        return max(pool, key=lambda r: abs(r.correlation))

    def _write_reports(self, chosen: SeedResult, seconds: float, input_dim: int) -> None:
        write_json_atomic(self.experiment_dir / "seed_report.json", {
            "chosen_seed": chosen.seed, "converged_seeds": sum(r.converged for r in self.seed_results),
            "seeds": [r.to_dict() for r in self.seed_results]})
        param = next(self.lm.model.parameters())
        write_json_atomic(self.experiment_dir / "run.json", {
            "config": self.config.to_dict(), **self.metadata(), "input_dim": input_dim, "seconds": round(seconds, 1),
            "versions": {"torch": torch.__version__, "python": platform.python_version(),
                         "transformers": transformers.__version__, "numpy": numpy.__version__,
                         "safetensors": safetensors.__version__},
            "model_dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device),
            "seeds_tried": [r.seed for r in self.seed_results], "chosen_seed": chosen.seed,
            "torch_threads": torch.get_num_threads(), "gradient_store": self._store_info})

    # -- results --------------------------------------------------------------------------------------
    @property
    def feature_device(self) -> torch.device:
        """Where the feature model lives: ``config.feature_device``, or the base model's device."""
        return resolve_feature_device(self.config.feature_device, self.lm.device)

    @property
    def feature_model(self) -> FeatureModel:
        if self._model is None:
            path = self.experiment_dir / MODEL_DIR
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"no trained model in {path}; call trainer.train() first")
            self._model = FeatureModel.from_pretrained(path, device=self.feature_device)
        return self._model

    def get_model(self) -> ModelWithGradiend:
        """The trained ``ModelWithGradiend`` (base model + feature model)."""
        if self.config.mlm_head is not False and self.engine.head is None:
            self.engine.head = run_head(self.lm, self.data, self.config, self.experiment_dir, train=False)
        return ModelWithGradiend(self.lm, self.feature_model, source=self.config.source, mlm_head=self.engine.head)

    def training_history(self) -> list[dict[str, Any]]:
        """Evaluation history of every trained seed (read back from disk when needed)."""
        return [dict(h, seed=run["seed"]) for run in self.training_runs() for h in run["history"]]

    def training_runs(self) -> list[dict[str, Any]]:
        """Per trained seed: ``seed``, ``history`` (one dict per evaluation), ``best_step``, ``last_step``,
        ``stopped_early``, ``stop_reason`` and ``step_losses`` (``[step, loss]`` per optimiser step)."""
        if self.seed_results:
            return [{**r.to_dict(), "history": r.history, "step_losses": r.step_losses} for r in self.seed_results]
        return [json.loads(p.read_text()) for p in sorted(self.experiment_dir.glob("seed_*/result.json"))]

    def plot_training_convergence(self, path: str | Path | None = None, ax: Any = None) -> Any:
        """Validation correlation and training loss per step for each seed, the kept (best) step and an
        early stop marked; saved as PNG in experiment_dir."""
        from ...viz.plots import plot_convergence

        fig = plot_convergence(self.training_runs(), self.config.min_correlation, ax=ax)
        target = Path(path) if path else self.experiment_dir / "training_convergence.png"
        if dist.is_main():  # under a launcher every rank holds the figure, rank 0 saves it
            fig.savefig(target, dpi=120, bbox_inches="tight")
        return fig
