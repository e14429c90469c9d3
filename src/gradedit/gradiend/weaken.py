"""Where does the mass go when a rewrite weakens a class? Held-out probabilities of several token groups.

A decoder sweep's weaken selection (``Trainer.evaluate_decoder(increase_target_probabilities=False)``)
scores only the weakened class's own tokens. ``weaken_report`` selects the same way, then measures
on HELD-OUT prompts of the class the probability of every watched token group (e.g.
``{"masc": [" he"], "fem": [" she"]}``), so the result shows whether the removed " he" went to " she"
or elsewhere, and the perplexity of held-out neutral text, base vs rewrite.

>>> rep = weaken_report(trainer, "masc", prompts, {"masc": [" he"], "fem": [" she"]}, heldout_neutral)
>>> rep.ratio, rep.edited["fem"] / rep.base["fem"], rep.perplexity_change, rep.met()
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..errors import ConfigError
from .evaluate.selectors import result_key

if TYPE_CHECKING:
    from .model import ModelWithGradiend
    from .train.trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["WeakenReport", "measure_groups", "weaken_report"]


def measure_groups(mwg: ModelWithGradiend, prompts: Sequence[str], watch: Mapping[str, Sequence[str]],
                   neutral: Sequence[str], learning_rate: float = 0.0, feature_factor: float = 0.0,
                   batch_size: int = 16) -> dict[str, Any]:
    """The model rewritten with (``learning_rate``, ``feature_factor``) (lr 0: the base model), measured:
    ``probs[group]`` = mean over ``prompts`` of Σ P(group's tokens) at the prediction point, and
    ``perplexity`` / ``lms`` on ``neutral``. The base model is restored bit-exactly afterwards."""
    lm = mwg.lm
    ids = {g: lm.token_ids(list(toks)) for g, toks in watch.items()}
    flat = sorted({i for v in ids.values() for i in v})
    col = {t: j for j, t in enumerate(flat)}

    def score() -> dict[str, Any]:
        p = metrics.next_token_logprobs(lm, list(prompts), flat, batch_size=batch_size).double().exp()
        sc = metrics.lm_scores(lm, list(neutral))
        return {"probs": {g: float(p[:, [col[i] for i in v]].sum(-1).mean()) for g, v in ids.items()},
                "perplexity": sc["perplexity"], "lms": sc["lms"]}

    if learning_rate == 0.0:
        return score()
    with mwg.applied(learning_rate, feature_factor):
        return score()


@dataclass
class WeakenReport:
    """A weaken selection measured on held-out prompts.

    Attributes:
        target_class: the weakened class (a watched group of the same name is its tokens).
        selection: the sweep's choice: ``feature_factor``, ``learning_rate``, ``admissible``, ``reason``,
            ``selector``, ``split`` and the selection-split ``value``/``base_value``/``lms``/``base_lms``.
        watch: group → tokens measured.
        base / edited: group → mean Σ P(group's tokens) on the held-out prompts (``edited`` = ``base``
            when no point was admissible: nothing is rewritten).
        perplexity_base / perplexity_edited / lms_base / lms_edited: on the held-out neutral text.
        n_prompts / n_neutral: how many held-out prompts and neutral texts were scored.
    """

    target_class: str
    selection: dict[str, Any]
    watch: dict[str, list[str]]
    base: dict[str, float]
    edited: dict[str, float]
    perplexity_base: float
    perplexity_edited: float
    lms_base: float
    lms_edited: float
    n_prompts: int
    n_neutral: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """How many times lower the target group's held-out probability is (base / edited)."""
        e = self.edited[self.target_class]
        return self.base[self.target_class] / e if e > 0 else math.inf

    def change(self, group: str) -> float:
        """edited / base of a watched group (> 1: the group gained mass)."""
        b = self.base[group]
        return self.edited[group] / b if b > 0 else math.inf

    @property
    def perplexity_change(self) -> float:
        """Relative held-out perplexity change (0.02 = +2 %)."""
        return self.perplexity_edited / self.perplexity_base - 1.0

    def met(self, factor: float = 2.0, max_perplexity_increase: float | None = None) -> bool:
        """The selection is admissible (its selector's LMS/perplexity constraint held on the selection
        text), the target is ``factor``× lower on the held-out prompts, and (if given) the held-out
        perplexity rose by at most ``max_perplexity_increase``."""
        ok = bool(self.selection.get("admissible")) and self.ratio >= factor
        if max_perplexity_increase is not None:
            ok = ok and self.perplexity_change <= max_perplexity_increase
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "perplexity_change": self.perplexity_change,
                "changes": {g: self.change(g) for g in self.watch}}


def weaken_report(trainer: Trainer, target_class: str, prompts: Sequence[str], watch: Mapping[str, Sequence[str]],
                  heldout_neutral: Sequence[str], *, selector: str | None = "lms:0.99", batch_size: int = 16,
                  **sweep: Any) -> WeakenReport:
    """Select the rewrite that weakens ``target_class`` (``trainer.evaluate_decoder`` with
    ``increase_target_probabilities=False``, on the trainer's selection split, ``selector``'s constraint,
    ``sweep`` passed on), then measure every ``watch`` group on the held-out ``prompts`` and perplexity /
    LMS on ``heldout_neutral``, base vs rewrite.

    Raises:
        ConfigError: ``target_class`` is not a class of the run or not a ``watch`` group; no prompts or
            no neutral texts.
    """
    if target_class not in trainer.classes:
        raise ConfigError(f"target_class {target_class!r} is not a class of this run; give one of {list(trainer.classes)}")
    if target_class not in watch:
        raise ConfigError(f"watch has no group {target_class!r}: add its tokens, e.g. watch={{{target_class!r}: [...], ...}}")
    if not prompts or not heldout_neutral:
        raise ConfigError("weaken_report needs held-out prompts of the class and held-out neutral texts; give both")
    dec = trainer.evaluate_decoder(target_class=target_class, increase_target_probabilities=False, selector=selector,
                                   **sweep)
    sel = dec.selections[result_key(target_class, False)]
    mwg = trainer.get_model()
    base = measure_groups(mwg, prompts, watch, heldout_neutral, batch_size=batch_size)
    edited = (measure_groups(mwg, prompts, watch, heldout_neutral, sel.learning_rate, sel.feature_factor, batch_size)
              if sel.admissible else base)
    chosen = {k: getattr(sel, k) for k in ("feature_factor", "learning_rate", "admissible", "reason", "split", "value",
                                           "base_value", "lms", "base_lms")}
    chosen["selector"] = dec.info.get("selector")
    rep = WeakenReport(target_class, chosen, {g: list(t) for g, t in watch.items()}, base["probs"], edited["probs"],
                       base["perplexity"], edited["perplexity"], base["lms"], edited["lms"], len(prompts),
                       len(heldout_neutral))
    logger.info("weaken %s: held-out %s -> %s (x%.2f lower), perplexity %+.1f%%, admissible=%s", target_class,
                rep.base, rep.edited, rep.ratio, 100 * rep.perplexity_change, sel.admissible)
    return rep
