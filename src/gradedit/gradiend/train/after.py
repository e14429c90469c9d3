"""The steps after training, as Trainer methods: decoder evaluation and base-model rewrite.

Kept apart from ``trainer.py`` so each file holds one concept; ``Trainer`` inherits these.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import PreTrainedModel

from ... import dist
from ..._files import safe_join, write_json_atomic
from ...data.schema import PairDataset
from ...errors import ArtifactError, ConfigError, DataError
from ..evaluate.debias import evaluate_debias
from ..evaluate.decoder import evaluate_decoder
from ..evaluate.encoder import EncoderResults
from ..evaluate.encoder import evaluate_encoder as _evaluate_encoder
from ..evaluate.results import DecoderResults, Selection, Selector, result_key
from ..evaluate.selectors import DEBIAS_KEY
from .loop import class_stats, pearson

if TYPE_CHECKING:
    from ...models import LanguageModel
    from ..gradients import Source
    from ..model import ModelWithGradiend
    from .config import TrainConfig

logger = logging.getLogger(__name__)

DECODER_FILE = "decoder_results.json"


class NotEvaluated(ConfigError, KeyError):
    """``rewrite_base_model`` found no decoder selection for a (class, direction): run the decoder
    evaluation for it first. A :class:`~gradedit.errors.ConfigError`, and a ``KeyError`` like any
    missing ``DecoderResults`` entry."""

    __str__ = BaseException.__str__  # the message, not KeyError's repr of it


class AfterTraining:
    """Mixin for ``Trainer``: ``evaluate_encoder``, ``evaluate_decoder`` and ``rewrite_base_model``
    (the gradiend tutorial's names)."""

    # set by ``Trainer.__init__``
    lm: LanguageModel
    config: TrainConfig
    classes: tuple[str, str]
    data: PairDataset
    neutral: list[str] | None
    experiment_dir: Path

    def get_model(self) -> ModelWithGradiend:
        raise NotImplementedError("AfterTraining is a mixin; Trainer.get_model provides the model")

    def _neutral_texts(self, max_texts: int) -> list[str]:
        if not self.neutral:
            raise ConfigError("this step needs neutral text: create the Trainer with neutral=[...] "
                              "(e.g. gradedit.data.features.neutral('en'))")
        return self.neutral[:max_texts]

    def evaluate_encoder(self, split: str = "test", data: PairDataset | None = None,
                         max_size: int | None = None, plot: bool = False, source: Source | None = None) -> EncoderResults:
        """Encode the split's class rows, identity rows, neutral-masked contexts and neutral text.

        ``data`` evaluates any other ``PairDataset`` instead of the trainer's own. ``source`` reads the
        encoder with another gradient than it was trained on (``"factual"`` after ``"diff"`` training:
        neutral rows then spread instead of all encoding to ``tanh(b_e)``). Results are saved as
        ``experiment_dir/encoder_results_<split>[_<source>].json`` (+ rows CSV); ``plot`` writes
        ``encoder_<split>[_<source>].png`` too (the suffix only for a source other than the trained one).
        """
        if self.config.mlm_head is not False:
            raise ConfigError("evaluate_encoder does not read gradients through the MLM head yet (it builds causal-LM "
                              "prompts that end before [MASK]); use trainer.encoder_summary(split) for r, accuracy "
                              "and class means through the head")
        res = _evaluate_encoder(self.get_model(), data if data is not None else self.data, self.classes,
                                neutral=self.neutral, split=split, max_size=max_size, seed=self.config.seed,
                                source=source)
        suffix = f"_{source}" if source is not None and source != self.config.source else ""
        if dist.is_main():  # under torchrun every rank holds the result; rank 0 writes it
            res.save(self.experiment_dir / f"encoder_results_{split}{suffix}.json")
            if plot:
                res.plot(self.experiment_dir / f"encoder_{split}{suffix}.png")
        return res

    def encoder_summary(self, split: str = "test", batch_size: int = 8) -> dict[str, Any]:
        """Encoder quality on the ``split`` rows of the two classes (labels ±1), through the MLM head when
        the run has one: ``correlation`` (Pearson r of encoding and label), ``accuracy`` (sign of the
        encoding == label), ``class_means`` and ``n``. Saved as ``encoder_summary_<split>.json``."""
        part = self.data.split(split)
        part = part.where(part.to_frame()["label"].to_numpy() != 0)
        if len(part) == 0:
            raise DataError(f"the {split!r} split has no rows of classes {list(self.classes)}")
        values = np.asarray(self.get_model().encode(part, batch_size=batch_size), dtype=np.float64).reshape(len(part), -1)
        h = values[:, 0]
        labels = part.to_frame()["label"].to_numpy().astype(np.float64)
        out = {"split": split, "n": len(part), "correlation": pearson(h, labels),
               "accuracy": float((np.sign(h) == labels).mean()), "class_means": class_stats(h, labels, self.classes),
               "mlm_head": self.config.mlm_head is not False}
        if dist.is_main():
            write_json_atomic(self.experiment_dir / f"encoder_summary_{split}.json", out)
        return out

    def evaluate_decoder(self, target_class: str | Sequence[str] | None = None,
                         increase_target_probabilities: bool = True, feature_factors: Sequence[float] | None = None,
                         learning_rates: Sequence[float] | None = None, selector: str | Selector | None = None,
                         plot: bool = False, split: str = "val", max_neutral: int = 64, refine_steps: int = 4,
                         max_rows_per_class: int | None = 64, use_cache: bool = True,
                         bias_prompts: Sequence[str] | None = None, search: str | None = None,
                         derivatives: str = "fd") -> DecoderResults:
        """Sweep feature_factor × learning_rate; select the best point per class under the selector's constraint.

        ``search``: ``"grid"`` (every point, then ``refine_steps`` bisections) or ``"fast"`` (predict the
        constraint boundary from lr-derivatives, ``derivatives`` ``"jvp2"`` or ``"fd"``, then verify it
        with a few real passes); ``None`` = the library default (see :func:`~..evaluate.decoder.evaluate_decoder`).

        Selection scores the ``split`` rows (default ``"val"``), so the encoder's and a report's
        ``"test"`` figures stay held out; every ``Selection`` records its split. ``bias_prompts`` also
        scores each point's bias (then :meth:`evaluate_debias` with the same prompts reuses the points).

        Results are cached under ``experiment_dir/decoder/`` by a fingerprint of all inputs and merged
        into ``experiment_dir/decoder_results.json`` (what ``rewrite_base_model`` uses by default).
        """
        res = evaluate_decoder(
            self.get_model(), self.data.split(split), self.classes, self._neutral_texts(max_neutral),
            target_class=target_class, increase_target_probabilities=increase_target_probabilities,
            feature_factors=feature_factors, learning_rates=learning_rates, selector=selector,
            refine_steps=refine_steps, max_rows_per_class=max_rows_per_class,
            cache_dir=self.experiment_dir / "decoder" if use_cache else None, split=split, bias_prompts=bias_prompts,
            search=search, derivatives=derivatives)
        if dist.is_main():  # ranks would race on the read-merge-write of decoder_results.json
            path = self.experiment_dir / DECODER_FILE
            merged = DecoderResults.load(path).merged(res) if path.is_file() else res
            merged.save(path)
            if plot:
                res.plot(self.experiment_dir / f"decoder_{'strengthen' if increase_target_probabilities else 'weaken'}.png")
        return res

    def evaluate_debias(self, prompts: Sequence[str] | None = None, selector: str | Selector | None = None,
                        feature_factors: Sequence[float] | None = None, learning_rates: Sequence[float] | None = None,
                        plot: bool = False, split: str = "val", max_neutral: int = 64, refine_steps: int = 3,
                        max_rows_per_class: int | None = 64, use_cache: bool = True) -> DecoderResults:
        """Select the rewrite that balances the two classes on neutral prompts (key ``"debias"``).

        ``prompts`` default to the selection half of our occupation templates
        (``gradedit.data.templates``; report the bias on the ``"heldout"`` half). Selector default
        ``"balance:0.02"``: most balanced point with neutral perplexity within +2 %. Merged into
        ``decoder_results.json``, so ``rewrite_base_model(target_class="debias")`` writes it.
        """
        from ...data.templates import occupation_prompts

        if prompts is None:
            prompts = occupation_prompts("selection", self.lm.kind, self.lm.tokenizer.mask_token)
        res = evaluate_debias(
            self.get_model(), self.data.split(split), self.classes, self._neutral_texts(max_neutral), list(prompts),
            feature_factors=feature_factors, learning_rates=learning_rates, selector=selector,
            refine_steps=refine_steps, max_rows_per_class=max_rows_per_class,
            cache_dir=self.experiment_dir / "decoder" if use_cache else None, split=split)
        if dist.is_main():
            path = self.experiment_dir / DECODER_FILE
            (DecoderResults.load(path).merged(res) if path.is_file() else res).save(path)
            if plot:
                res.plot(self.experiment_dir / "decoder_debias.png")
        return res

    def rewrite_base_model(self, decoder_results: DecoderResults | None = None,
                           target_class: str | Sequence[str] | None = None, increase_target_probabilities: bool = True,
                           output_dir: str | Path | None = None) -> PreTrainedModel | list[PreTrainedModel]:
        """The base model rewritten with the configuration selected for ``target_class``: a plain HF model
        (a list for several classes). With ``output_dir``: saved with tokenizer and ``rewrite_info.json``
        (one sub-folder per class when several are given). The trainer's own base model is untouched.

        Raises:
            NoAdmissiblePoint: a selection found no point that moves its metric the requested way
                within its constraint (the message names the requirement that binds); nothing is written.
            ConfigError: no ``target_class``, or a class the run was not trained on.
            NotEvaluated: the decoder was not evaluated for a class in this direction (also a ``KeyError``).
            ArtifactError: a selection holds a non-finite learning rate or feature factor.
            UnsafeName: a class id cannot be a folder name (several classes with ``output_dir``).
        """
        if decoder_results is None:
            path = self.experiment_dir / DECODER_FILE
            if not path.is_file():
                raise FileNotFoundError(f"no decoder results in {path}; run trainer.evaluate_decoder() first")
            decoder_results = DecoderResults.load(path)
        known = [*self.classes, DEBIAS_KEY]
        if target_class is None:
            raise ConfigError(f"give target_class: one of {list(self.classes)} (or {DEBIAS_KEY!r} after evaluate_debias)")
        many = not isinstance(target_class, str)
        wanted = list(target_class) if many else [str(target_class)]
        unknown = [c for c in wanted if c not in known]
        if not wanted:
            raise ConfigError(f"target_class is an empty list; give one or more of {list(self.classes)}")
        if unknown:
            raise ConfigError(f"target class(es) {unknown} are not classes of this run; give one of {list(self.classes)} "
                              f"(or {DEBIAS_KEY!r} after evaluate_debias)")
        selections = [self._selection(decoder_results, c, increase_target_probabilities) for c in wanted]
        mwg = self.get_model()
        models = []
        for cls, sel in zip(wanted, selections):
            out = None if output_dir is None else (safe_join(Path(output_dir), cls, "class id") if many
                                                    else Path(output_dir))
            direction = "debias" if sel.key == DEBIAS_KEY else ("strengthen" if sel.increase else "weaken")
            info: dict[str, Any] = {"target_class": cls, "direction": direction,
                                    "selected_value": sel.value, "base_value": sel.base_value,
                                    "selection_split": sel.split, "selector": decoder_results.info.get("selector"),
                                    "lms": sel.lms,
                                    "base_lms": sel.base_lms, "gradiend_id": str(self.experiment_dir / "model")}
            models.append(mwg.rewrite_base_model(sel.learning_rate, sel.feature_factor, output_dir=out, info=info))
            logger.info("rewrote %s (%s %s): lr=%.3g ff=%+g", self.lm.name, info["direction"], cls,
                        sel.learning_rate, sel.feature_factor)
        return models if many else models[0]

    @staticmethod
    def _selection(results: DecoderResults, cls: str, increase: bool) -> Selection:
        """The admissible, finite selection for ``cls`` in one direction (see ``rewrite_base_model``)."""
        key = cls if cls == DEBIAS_KEY else result_key(cls, increase)
        if key not in results.selections:
            how = ("evaluate_debias()" if cls == DEBIAS_KEY else
                   f"evaluate_decoder(target_class={cls!r}, increase_target_probabilities={increase})")
            raise NotEvaluated(f"no decoder selection {key!r}: the decoder was not evaluated to "
                               f"{'strengthen' if increase else 'weaken'} {cls!r} (evaluated: {sorted(results.selections)}); "
                               f"run trainer.{how} first")
        sel = results.selections[key].require_admissible()
        bad = [f"{n} {v!r}" for n, v in (("learning_rate", sel.learning_rate), ("feature_factor", sel.feature_factor))
               if not (isinstance(v, (int, float)) and math.isfinite(v))]
        if bad:
            raise ArtifactError(f"the decoder selection {key!r} holds a non-finite {', '.join(bad)}; evaluate the "
                                "decoder again")
        return sel
