"""One seed of GRADIEND training: gradients -> encoder/decoder, evaluation, checkpoints, resume.

The resume checkpoint is ``last/`` (feature model + ``trainer_state.safetensors``: optimiser
tensors, the rest as JSON; no pickle). A NaN/Inf loss or gradient stops training with a
:class:`~gradedit.errors.TrainingError` before the step is applied; ``last/`` and ``best/`` keep
the last good state.

Under ``torchrun`` / ``accelerate launch`` every rank runs the same seed: each computes its share of
every batch's gradient examples, the feature-model gradients are summed over ranks before the step
(:mod:`.parallel`), validation batches are split and gathered, and rank 0 alone writes checkpoints
(every rank resumes from the same ``last/``).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import dist
from ..._files import load_tree, save_tree_atomic, write_json_atomic
from ..._progress import progress
from ...errors import ArtifactError, TrainingError
from ...models.param_map import ParamMap
from ..encode import encode_rows_by_rank
from ..feature_model import FeatureModel
from ..gradients import GradientEngine
from ..rows import Rows
from ..store import GradientStore
from .config import TrainConfig, resolve_feature_device
from .folders import replace_dir, settle_dir
from .optim import FeatureOptimizer
from .parallel import batch_loss, batch_share, batch_total, grad_reducer, loss_denominator, main_only
from .rules import (
    SeedResult,
    class_stats,
    examples_per_epoch,
    grouped_examples,
    is_converged,
    pearson,
    steps_per_epoch,
    stop_reason,
)

# the rules moved to .rules are still importable from here (their old home)
__all__ = ["SeedTrainer", "STATE_FILE", "OLD_STATE_FILE", "LOG_EVERY_S", "grouped_examples", "examples_per_epoch",
           "SeedResult", "pearson", "class_stats", "stop_reason", "is_converged", "steps_per_epoch"]

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.safetensors"
#: the pickle checkpoint of older gradedit versions: refused, never read (unpickling runs code)
OLD_STATE_FILE = "trainer_state.pt"
#: during training, a log line at least this often (seconds), so slow steps never look like a hang
LOG_EVERY_S = 20.0


class SeedTrainer:
    """Trains one FeatureModel from one seed; checkpoints to ``directory`` and resumes from it."""

    #: where the feature model, its optimiser state and the vectors it reads live (``TrainConfig.feature_device``,
    #: resolved in ``__init__``; the CPU for an instance made without it, as some tests of ``_batch`` do)
    device: torch.device = torch.device("cpu")

    def __init__(self, engine: GradientEngine, param_map: ParamMap, cfg: TrainConfig, seed: int,
                 train: Rows, val: Rows, classes: tuple[str, str], directory: Path, metadata: dict[str, Any],
                 store: GradientStore | None = None) -> None:
        self.engine, self.param_map, self.cfg, self.seed = engine, param_map, cfg, seed
        #: training rows' gradients read from here instead of computed (its rows are ``train``'s rows)
        self.store = store
        self.train_rows, self.val_rows, self.classes = train, val, classes
        self.dir = directory
        self.metadata = metadata
        self._groups = train.groups() if cfg.rows_per_gradient > 1 else [list(range(len(train)))]
        self._epoch: tuple[int, list[list[int]]] | None = None
        #: step of the checkpoint in ``last/`` (None: none written yet)
        self._saved_step: int | None = None
        self.device = resolve_feature_device(cfg.feature_device, engine.lm.device)
        #: ``[step, training loss]`` of every optimiser step (kept in the checkpoint across resumes)
        self.step_losses: list[list[float]] = []

    # -- data order: a shuffle per epoch derived from (seed, epoch), so resuming needs no RNG state.
    # rows_per_gradient > 1 averages rows of one (label, factual class) group per gradient, as the
    # gradiend package does: a +1 row averaged with a -1 row would cancel the feature it should show.
    def examples_per_epoch(self) -> int:
        return examples_per_epoch(self._groups, self.cfg.rows_per_gradient)

    def _example_rows(self, example: int) -> list[int]:
        epoch, pos = divmod(example, self.examples_per_epoch())
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch = (epoch, grouped_examples(self._groups, self.cfg.rows_per_gradient, g))
        return list(self._epoch[1][pos])

    def _vectors(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(source [n], target [n]) of one gradient example on the feature device: read from the store, else
        computed now (on the CPU, where both land), then moved once (one move when source is target)."""
        if self.store is not None:
            src, tgt = self.store.example(rows)
        else:
            r = self.train_rows
            texts = [r.texts[i] for i in rows]
            vecs = self.engine.gradient_vectors(texts, r.factual[rows], r.alternative[rows],
                                                [self.cfg.source, self.cfg.target], self.param_map)
            src, tgt = vecs[self.cfg.source], vecs[self.cfg.target]
        moved = src.to(self.device)
        return moved, (moved if tgt is src else tgt.to(self.device))

    def _batch(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) ``[len(rows), n]`` of this rank's examples (``[0, n]`` on a rank without any)."""
        if not rows:
            empty = torch.zeros(0, self.param_map.size, device=self.device)
            return empty, empty
        s, t = self._vectors(rows[0])
        if len(rows) == 1:  # views, no copy: the step reads them as they are
            return s.unsqueeze(0), t.unsqueeze(0)
        src, tgt = s.new_empty(len(rows), *s.shape), t.new_empty(len(rows), *t.shape)
        for k in range(len(rows)):  # one pair beside the batch at a time, not a list of them plus stacked copies
            if k:
                s, t = self._vectors(rows[k])
            src[k], tgt[k] = s, t
            del s, t
        return src, tgt

    def _train_step(self, fm: FeatureModel, opt: FeatureOptimizer, rows: list[list[int]], step: int) -> float:
        """One optimiser step on this rank's examples ``rows`` (all of the batch in one process); returns
        the whole batch's loss (equal on every rank). Nothing is applied on a NaN/Inf loss (TrainingError)."""
        src, tgt = self._batch(rows)
        if self.cfg.fused_step:  # loss, gradients and update chunk by chunk without autograd (train/fused.py)
            local, bad = opt.fused_step(src, tgt, denominator=loss_denominator(self.cfg.train_batch_size, src.shape[-1]))
            total = batch_total(local)
        else:
            rec, _ = fm(src)
            loss, total = batch_loss(rec, tgt, self.cfg.train_batch_size)
            # gradients summed over ranks inside step(): every rank takes the same step
            bad = opt.step(loss) if torch.isfinite(total) else []
        if not torch.isfinite(total):
            raise self._diverged(step, f"the loss is {total.item()}", self._bad_rows(rows, src, tgt))
        if bad:
            raise self._diverged(step, f"the gradient of {', '.join(bad)} is not finite (NaN/Inf)", "")
        return float(total)

    def evaluate(self, fm: FeatureModel) -> tuple[float, dict[str, float], np.ndarray]:
        values = encode_rows_by_rank(self.engine, fm, self.val_rows, self.cfg.source)[:, 0]
        labels = self.val_rows.labels.numpy()
        target = labels != 0
        r = pearson(values[target], labels[target])
        return r, class_stats(values, labels, self.classes), values

    def run(self) -> SeedResult:
        cfg = self.cfg
        t0 = time.time()
        fm, opt, step, history, best = self._start()
        first_step = step
        if step >= cfg.max_steps or stop_reason(history, cfg):
            logger.info("seed %d already trained to step %d", self.seed, step)
        losses: list[float] = []
        bar = progress(total=cfg.max_steps, initial=step, desc=f"GRADIEND seed {self.seed}")
        last_log = time.time()
        while step < cfg.max_steps and not stop_reason(history, cfg):
            # this rank's examples of the batch (all of them in one process)
            rows = [self._example_rows(step * cfg.train_batch_size + j) for j in batch_share(cfg.train_batch_size)]
            losses.append(self._train_step(fm, opt, rows, step))
            step += 1
            self.step_losses.append([step, losses[-1]])
            bar.update(1)
            if step == first_step + 1 or time.time() - last_log >= LOG_EVERY_S:  # a line at least every LOG_EVERY_S
                logger.info("seed %d step %d/%d loss %.4g (%.1f s/step)", self.seed, step, cfg.max_steps,
                            losses[-1], (time.time() - t0) / max(1, step - first_step))
                last_log = time.time()
            if step % cfg.eval_steps == 0 or step == cfg.max_steps:
                logger.info("seed %d step %d: validating on %d rows ...", self.seed, step, len(self.val_rows))
                r, means, _ = self.evaluate(fm)
                history.append({"step": step, "loss": float(np.mean(losses)), "correlation": r, "class_means": means,
                                "seconds": round(time.time() - t0, 2)})
                losses = []
                bar.set_postfix(r=f"{r:+.3f}", loss=f"{history[-1]['loss']:.3g}")
                # the kept model is the last evaluation that beat the best |r| by more than min_delta (the step
                # early stopping counts from; Keras' restore_best_weights rule): with |r| saturated near 1, gains
                # of 1e-6 are noise and must not move the kept model to a later, more drifted step
                if best is None or abs(r) > best["abs_r"] + cfg.early_stopping_min_delta:
                    best = {"abs_r": abs(r), "step": step, "correlation": r, "class_means": means}
                    self._save_model(fm, self.dir / "best", best)
                logger.info("seed %d step %d: validation r %+.3f (best %+.3f at step %d), loss %.4g", self.seed, step,
                            r, best["correlation"], best["step"], history[-1]["loss"])
                last_log = time.time()
                self._checkpoint(fm, opt, step, history, best)
        bar.close()
        if best is None:  # max_steps reached before any evaluation (resumed finished run)
            raise RuntimeError(f"{self.dir} has no evaluated checkpoint; delete it and train again")
        stopped = stop_reason(history, cfg) if step < cfg.max_steps else ""
        if stopped:
            logger.info("seed %d: early stop at step %d of %d: %s", self.seed, step, cfg.max_steps, stopped)
        opt.close()  # the training model and optimiser go before best/ is read, not beside it
        del fm, opt
        best_fm = FeatureModel.from_pretrained(self.dir / "best", device=self.device)
        # the kept model was evaluated when it was saved: no second validation pass is needed
        r, means = self._normalise(best_fm, float(best["correlation"]), dict(best["class_means"]))
        best_fm.metadata.update({"seed": self.seed, "best_step": best["step"], "correlation": r,
                                 "sign_normalised": True})
        self._save_model(best_fm, self.dir / "best", best)
        converged = self._converged(r, means, best["step"])
        res = SeedResult(self.seed, self.dir, best["step"], r, means, converged, history, time.time() - t0,
                         last_step=step, stopped_early=bool(stopped), stop_reason=stopped,
                         step_losses=list(self.step_losses))
        main_only(lambda: write_json_atomic(self.dir / "result.json", {**res.to_dict(), "history": history,
                                                                       "step_losses": res.step_losses}))
        return res

    def _normalise(self, fm: FeatureModel, r: float, means: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Sign normalisation of the kept model (class A encodes positive); returns the matching (r, means)."""
        if means[self.classes[0]] < 0:
            # a run resumed after it had finished may find best/ normalised already (no later evaluation
            # replaced it): flipping it again would undo the normalisation ("correlation" marks older runs)
            if not fm.metadata.get("sign_normalised", "correlation" in fm.metadata):
                fm.flip_sign_()  # negates every encoding exactly (tanh is odd), hence r and the means
            r, means = -r, {k: -v for k, v in means.items()}
        return r, means

    def _converged(self, r: float, means: dict[str, Any], best_step: int) -> bool:
        return is_converged(r, means, best_step, self.cfg)

    def _bad_rows(self, rows: list[list[int]], src: torch.Tensor, tgt: torch.Tensor) -> str:
        """Which training rows gave a NaN/Inf model gradient (``src``/``tgt`` are ``[batch, n]``; under a
        launcher this rank's examples; collective then, the rows of every rank are named)."""
        finite = torch.isfinite(src).all(dim=1) & torch.isfinite(tgt).all(dim=1)
        mine = sorted({i for b, ok in enumerate(finite.tolist()) if not ok for i in rows[b]})
        bad = sorted({i for part in dist.all_gather_json(mine) for i in part})
        if not bad:
            return ""
        shown = "; ".join(repr(self.train_rows.texts[i]) for i in bad[:3])
        return (f"the model gradient of {len(bad)} training row(s) is NaN/Inf (e.g. {shown}): check those rows "
                "and the base model's weights")

    def _diverged(self, step: int, what: str, rows: str) -> TrainingError:
        """The error that stops training at optimiser step ``step + 1`` (nothing of that step was applied)."""
        kept = (f"the last good checkpoint (step {self._saved_step}) is kept in {self.dir / 'last'}"
                if self._saved_step is not None else f"no checkpoint was written yet (the first is at step "
                                                      f"{min(self.cfg.eval_steps, self.cfg.max_steps)})")
        fix = rows or f"lower learning_rate (now {self.cfg.learning_rate:g}) or check the data"
        return TrainingError(f"GRADIEND training of seed {self.seed} stopped at step {step + 1}: {what}; {kept}; {fix}")

    def _new_model(self) -> FeatureModel:
        """A fresh model on the feature device (drawn on the CPU: the same init bits on every device)."""
        return FeatureModel(self.param_map.size, self.cfg.latent_dim, param_map=self.param_map, seed=self.seed,
                            metadata=dict(self.metadata)).to(self.device)

    def _optimizer(self, fm: FeatureModel) -> FeatureOptimizer:
        return FeatureOptimizer(fm, self.cfg, reduce_grad=grad_reducer())

    def _start(self) -> tuple[FeatureModel, FeatureOptimizer, int, list[dict[str, Any]], dict[str, Any] | None]:
        last = self.dir / "last"
        if self.cfg.resume:  # a kill between writing a checkpoint and swapping it in leaves ``last.new``
            main_only(self._settle)
        state = self._read_state(last) if self.cfg.resume else None  # every rank reads the same checkpoint
        if state is not None:
            same = state.get("fingerprint") == self.cfg.training_fingerprint() and state.get("seed") == self.seed
            fm = FeatureModel.from_pretrained(last, device=self.device) if same else None
            if fm is None:
                logger.warning("ignoring checkpoint in %s: it was made with a different configuration", last)
            elif fm.param_map != self.param_map:
                logger.warning("ignoring checkpoint in %s: it was trained on another input space", last)
            else:
                opt = self._optimizer(fm)
                opt.load_state_dict(state["optimizer"])
                logger.info("resuming seed %d from step %d (%s)", self.seed, state["step"], last)
                self.step_losses = [list(x) for x in state.get("step_losses", [])]
                self._saved_step = int(state["step"])
                return fm, opt, int(state["step"]), list(state["history"]), state.get("best")
        main_only(self._fresh_dir)  # after every rank has read what was there
        fm = self._new_model()
        dist.broadcast_tensors(fm.parameters())  # the same seed gives the same init; rank 0's bits, to be sure
        return fm, self._optimizer(fm), 0, [], None

    def _settle(self) -> None:
        settle_dir(self.dir / "last")
        settle_dir(self.dir / "best")

    def _fresh_dir(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)

    def _read_state(self, last: Path) -> dict[str, Any] | None:
        """The training state in ``last/`` (None when there is none); never unpickles anything."""
        fix = f"delete {self.dir} to train this seed from the start"
        if not (last / STATE_FILE).is_file():
            if (last / OLD_STATE_FILE).is_file():
                raise ArtifactError(f"{last / OLD_STATE_FILE} is a pickle checkpoint of an older gradedit, which is "
                                    f"never loaded (unpickling runs code); {fix}")
            return None
        state = load_tree(last / STATE_FILE, fix)
        if not isinstance(state, dict) or not {"step", "history", "optimizer", "seed", "fingerprint"} <= set(state):
            raise ArtifactError(f"{last / STATE_FILE} is not a GRADIEND training checkpoint; {fix}")
        return state

    def _save_model(self, fm: FeatureModel, target: Path, best: dict[str, Any]) -> None:
        fm.metadata.update({"best_step": best["step"]})
        main_only(lambda: replace_dir(target, lambda tmp: fm.save_pretrained(tmp)))

    def _checkpoint(self, fm: FeatureModel, opt: FeatureOptimizer, step: int,
                    history: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
        state = {"step": step, "history": history, "best": best, "optimizer": opt.state_dict(), "seed": self.seed,
                 "fingerprint": self.cfg.training_fingerprint(), "step_losses": self.step_losses}

        def write(tmp: Path) -> None:
            fm.save_pretrained(tmp)
            save_tree_atomic(tmp / STATE_FILE, state)

        main_only(lambda: replace_dir(self.dir / "last", write))
        self._saved_step = step
