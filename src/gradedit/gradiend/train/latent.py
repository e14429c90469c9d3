"""``LatentTrainer``: one GRADIEND feature model with ``k`` latents trained on several classes at once.

Training is the paper's (reconstruction of the target gradient from the source gradient); what
changes is how a seed is validated, kept and oriented: the encodings ``[N, k]`` are compared with each
row's target code (:mod:`gradedit.gradiend.latents`), the kept step is the one with the best multiple
correlation ``R``, and the kept model's latents are permuted and sign-flipped (exactly) so that latent
``j`` lines up with code component ``j``.

The gradiend reference package accepts ``latent_dim > 1`` but only half uses it: its per-dimension
metrics correlate every latent with the same scalar ±1 label of a class pair, class means and the
sign normalisation use the first latent only, its decoder evaluation rewrites with a scalar feature
factor, and a supervised mode needs label vectors its data never provides. Here every class has a
``k``-dim code, rows of all class pairs train one model, every latent is measured and oriented, and
the decoder is swept per (latent, direction) through a one-latent view of the model.

Under ``torchrun`` / ``accelerate launch`` it behaves like :class:`Trainer`: training is data parallel, the
validation and ``evaluate_latents`` encodings are split over the ranks in whole batches and gathered in row
order (:func:`~gradedit.gradiend.encode.encode_rows_by_rank`: the single process's bits), so every rank
computes the same ``R``, kept step and orientation; the decoder sweeps split their scoring passes; rank 0
alone writes files, and every rank returns the same result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ... import dist
from ..._files import write_json_atomic
from ...data.schema import PairDataset
from ...errors import ConfigError, DataError
from ...models import LanguageModel
from ...models.param_map import ParamMap
from ..encode import encode_rows_by_rank
from ..evaluate.decoder import evaluate_decoder
from ..evaluate.results import DecoderResults
from ..feature_model import FeatureModel
from ..latents import Coding, LatentMetrics, class_codes, latent_metrics, orient_latents, row_codes
from ..model import ModelWithGradiend
from ..rows import Rows, balanced_cap
from ..store import GradientStore
from .config import TrainConfig
from .loop import SeedTrainer
from .parallel import main_only
from .trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["LatentSeedTrainer", "LatentTrainer"]


class LatentSeedTrainer(SeedTrainer):
    """A seed of k-latent training: validation by :func:`latent_metrics` against the rows' codes.

    ``correlation`` in the history is the multiple correlation ``R``; ``class_means`` maps each factual
    class to its mean latent ``[k]``.
    """

    def __init__(self, *args: Any, val_codes: np.ndarray, codes: Mapping[str, np.ndarray], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.val_codes, self.codes = val_codes, codes

    def _metrics(self, fm: FeatureModel) -> tuple[LatentMetrics, np.ndarray]:
        values = encode_rows_by_rank(self.engine, fm, self.val_rows, self.cfg.source)  # equal on every rank
        return latent_metrics(values, self.val_codes, self.val_rows.classes or []), values

    def evaluate(self, fm: FeatureModel) -> tuple[float, dict[str, Any], np.ndarray]:
        m, values = self._metrics(fm)
        return m.multiple_r, m.class_means, values

    def _normalise(self, fm: FeatureModel, r: float, means: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Orient the kept model's latents to the codes (idempotent: an oriented model stays as it is); the
        encodings are gathered in row order, so every rank takes the same orientation."""
        values = encode_rows_by_rank(self.engine, fm, self.val_rows, self.cfg.source)
        order, signs = orient_latents(fm, values, self.val_codes)
        m = latent_metrics(values[:, order] * np.asarray(signs), self.val_codes, self.val_rows.classes or [])
        fm.metadata["latent_metrics_val"] = m.to_dict()
        return m.multiple_r, m.class_means

    def _converged(self, r: float, means: dict[str, Any], best_step: int) -> bool:
        pts = [np.asarray(v) for v in means.values()]
        gap = min(float(np.linalg.norm(p - q)) for i, p in enumerate(pts) for q in pts[i + 1:])
        return bool(r >= self.cfg.min_correlation and gap >= self.cfg.min_class_mean and best_step > 0)


class LatentTrainer(Trainer):
    """Train one feature model with ``k = config.latent_dim`` latents on all rows between ``classes``.

    Args:
        lm, data, neutral, config, input_space: as for :class:`Trainer`.
        classes: the classes (at least two; rows whose factual and alternative class are both among
            them train the model).
        coding: ``"simplex"`` (``k = C − 1``), ``"one-vs-rest"`` (``k = C``) or ``{class: [k numbers]}``;
            ``config.latent_dim`` must equal the coding's ``k``.

    Raises:
        ConfigError: fewer than two classes, a class not in the data, or ``latent_dim`` != the coding's k.
    """

    def __init__(self, lm: LanguageModel, data: PairDataset, classes: Sequence[str],
                 neutral: Sequence[str] | None = None, config: TrainConfig | Mapping[str, Any] | None = None,
                 coding: Coding = "simplex", input_space: ParamMap | None = None) -> None:
        self.coding = coding
        super().__init__(lm, data, classes, neutral=neutral, config=config, input_space=input_space)
        k = len(next(iter(self.codes.values())))
        if self.config.latent_dim != k:
            raise ConfigError(f"the {coding if isinstance(coding, str) else 'given'} coding of {len(self.classes)} "
                              f"classes has k = {k} latents but TrainConfig.latent_dim is {self.config.latent_dim}; "
                              f"set latent_dim={k}")

    def _set_classes(self, data: PairDataset, target_classes: Sequence[str]) -> None:
        names = [str(c) for c in ([target_classes] if isinstance(target_classes, str) else target_classes)]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"LatentTrainer needs at least two different classes, got {names}")
        missing = [c for c in names if c not in data.classes]
        if missing:
            raise ConfigError(f"class(es) {missing} not in the data; its classes are {data.classes}")
        # several classes: every method that treats ``classes`` as a pair is overridden here
        self.classes = cast(tuple[str, str], tuple(names))
        self.codes = class_codes(names, self.coding)
        frame = data.to_frame()
        keep = frame["factual_class"].isin(names) & frame["alternative_class"].isin(names)
        self.data = data.where(keep.to_numpy())

    def _rows(self, split: str, *, cap: int | None = None, seed: int = 0) -> Rows:
        return self._labelled(split, cap=cap, seed=seed)[0]

    def _labelled(self, split: str, *, cap: int | None = None, seed: int = 0) -> tuple[Rows, list[str]]:
        """Rows of ``split`` between two of the classes (identity rows only for training with
        ``use_identity_rows``) and their alternative classes. ``labels`` number the ordered class pairs
        (1, 2, ...; 0 = identity) so a cap balances the pairs; ``classes`` are the factual classes."""
        part = self.data.split(split)
        frame = part.to_frame()
        same = (frame["factual_class"] == frame["alternative_class"]).to_numpy()
        if not self.config.use_identity_rows or split != "train":
            part, frame, same = part.where(~same), frame[~same], same[~same]
        if len(part) == 0:
            raise DataError(f"the {split!r} split has no rows between the classes {list(self.classes)}; add rows "
                            "(or re-split the data)")
        texts, f, a, _ = part.model_inputs(self.lm)
        pairs = {p: i + 1 for i, p in enumerate((x, y) for x in self.classes for y in self.classes if x != y)}
        fc, ac = frame["factual_class"].astype(str).tolist(), frame["alternative_class"].astype(str).tolist()
        labels = torch.tensor([0.0 if s else float(pairs[(x, y)]) for x, y, s in zip(fc, ac, same)])
        idx = list(range(len(fc)))
        if cap:  # balanced_cap keeps the rows' order; the index travels as the "class"
            kept = balanced_cap(Rows(list(texts), f, a, labels, [str(i) for i in idx]), cap, seed)
            idx = [int(i) for i in kept.classes or []]
        rows = Rows(list(texts), f, a, labels, fc).subset(idx)
        return rows, [ac[i] for i in idx]

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "coding": {c: v.tolist() for c, v in self.codes.items()}}

    def _seed_trainer(self, seed: int, train: Rows, val: Rows, pmap: ParamMap,
                      store: GradientStore | None) -> SeedTrainer:
        again, alternative = self._labelled("val", cap=self.config.eval_max_size, seed=self.config.seed)
        if again.texts != val.texts:
            raise RuntimeError("validation rows changed between two reads; this is a bug")
        codes = row_codes(val.classes or [], alternative, self.codes, self.config.source)
        return LatentSeedTrainer(self.engine, pmap, self.config, seed, train, val, self.classes,
                                 self.experiment_dir / f"seed_{seed}", self.metadata(), store=store,
                                 val_codes=codes, codes=self.codes)

    # -- after training ------------------------------------------------------------------------------
    def evaluate_latents(self, split: str = "test", batch_size: int = 8) -> LatentMetrics:
        """Encoder metrics per latent on ``split`` (all rows between the classes); saved as
        ``experiment_dir/latent_metrics_<split>.json`` (by rank 0 under a launcher; the rows are encoded
        split over the ranks and every rank returns the same metrics)."""
        dist.init()
        rows, alternative = self._labelled(split)
        mwg = self.get_model()
        values = encode_rows_by_rank(mwg.engine, mwg.feature_model, rows, mwg.source, batch_size=batch_size)
        codes = row_codes(rows.classes or [], alternative, self.codes, self.config.source)
        m = latent_metrics(values, codes, rows.classes or [])
        main_only(lambda: write_json_atomic(self.experiment_dir / f"latent_metrics_{split}.json",
                                            {"split": split, **m.to_dict()}))
        return m

    def evaluate_encoder(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("a LatentTrainer has several classes: use trainer.evaluate_latents(split) for its "
                          "encoder metrics (per latent)")

    def latent_model(self, j: int) -> ModelWithGradiend:
        """The one-latent view of latent ``j`` (encode it; rewrite with ``decode(ff) = W_d[:, j]·ff + b_d``)."""
        return ModelWithGradiend(self.lm, self.feature_model.latent(j), source=self.config.source)

    def latent_poles(self, j: int, split: str = "val") -> tuple[str, str]:
        """The classes at the positive and negative end of latent ``j`` (highest / lowest class mean)."""
        means = self.feature_model.metadata.get("latent_metrics_val", {}).get("class_means")
        if not means:
            means = self.evaluate_latents(split).class_means
        order = sorted(means, key=lambda c: means[c][j])
        return order[-1], order[0]

    def evaluate_decoder(self, *args: Any, **kwargs: Any) -> DecoderResults:
        raise ConfigError("a LatentTrainer has several latents: use trainer.evaluate_latent_decoders() for a sweep "
                          "per (latent, direction)")

    def evaluate_latent_decoders(self, latents: Sequence[int] | None = None, directions: Sequence[bool] = (True, False),
                                 split: str = "val", max_neutral: int = 64, use_cache: bool = True,
                                 **kwargs: Any) -> dict[str, DecoderResults]:
        """A decoder sweep per (latent ``j``, direction): :func:`evaluate_decoder` on latent ``j``'s
        one-latent view, over the rows between its two poles (:meth:`latent_poles`), strengthening
        (``True``) or weakening (``False``) each pole. ``kwargs`` go to ``evaluate_decoder``
        (``feature_factors``, ``learning_rates``, ``selector``, ``refine_steps``, ...). Keys
        ``"latent<j>_strengthen"`` / ``"latent<j>_weaken"``; each saved as ``decoder_<key>.json`` (by rank 0
        under a launcher, where every sweep splits its scoring passes over the ranks)."""
        dist.init()
        out: dict[str, DecoderResults] = {}
        neutral = self._neutral_texts(max_neutral)
        for j in (range(self.config.latent_dim) if latents is None else latents):
            pos, neg = self.latent_poles(j)
            view = self.latent_model(j)
            frame = self.data.to_frame()
            pair = frame["factual_class"].isin([pos, neg]) & frame["alternative_class"].isin([pos, neg])
            data = self.data.where(pair.to_numpy()).with_targets([pos, neg]).split(split)
            for inc in directions:
                key = f"latent{j}_{'strengthen' if inc else 'weaken'}"
                res = evaluate_decoder(view, data, (pos, neg), neutral, increase_target_probabilities=inc,
                                       cache_dir=self.experiment_dir / "decoder" if use_cache else None, split=split,
                                       **kwargs)
                res.info["latent"], res.info["poles"] = j, [pos, neg]
                main_only(partial(res.save, self.experiment_dir / f"decoder_{key}.json"))
                out[key] = res
        return out

    def rewrite_base_model(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("a LatentTrainer rewrites one latent at a time: "
                          "trainer.latent_model(j).rewrite_base_model(learning_rate=, feature_factor=) with a point "
                          "of evaluate_latent_decoders()")

    @classmethod
    def load(cls, experiment_dir: str | Path, lm: LanguageModel | None = None) -> Trainer:
        raise ConfigError("LatentTrainer.load is not supported yet; rebuild the LatentTrainer with the same data "
                          "and config (train() resumes or reuses the finished run)")
