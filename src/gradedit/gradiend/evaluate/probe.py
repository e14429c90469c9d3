"""``DecoderProbe``: what a decoder grid point is scored with (class prompts, neutral text, bias
prompts), the point cache, and a count of the scoring passes it ran."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ... import dist, metrics
from ..._files import write_json_atomic
from ...data.schema import PairDataset
from ...models import LanguageModel
from ..model import ModelWithGradiend
from .selectors import DEBIAS_KEY, result_key
from .sharded import lm_scores_by_rank, rows_by_rank

logger = logging.getLogger(__name__)


def bias_scores(lm: LanguageModel, prompts: Sequence[str], ids_a: Sequence[int], ids_b: Sequence[int],
                batch_size: int = 16) -> dict[str, float]:
    """Pronoun bias of ``lm`` on neutral prompts, with P(A) = Σ P(class A tokens) at each prediction point:

    ``mean_abs_log_ratio`` = mean |log P(A) − log P(B)| (0 = balanced on every prompt),
    ``mean_log_ratio`` = mean log P(A) − log P(B) (the signed lean: > 0 towards A), ``p_a``/``p_b`` the
    mean probabilities, ``n`` the prompt count. Under a launcher each rank scores its block of prompts.
    """
    if not prompts:
        raise ValueError("bias_scores needs at least one prompt")
    ids = [*ids_a, *ids_b]
    p = rows_by_rank(lambda part: metrics.next_token_logprobs(lm, part, ids, batch_size=batch_size), list(prompts),
                     len(ids)).double().exp()
    pa, pb = p[:, :len(ids_a)].sum(-1), p[:, len(ids_a):].sum(-1)
    ratio = pa.log() - pb.log()
    return {"mean_abs_log_ratio": float(ratio.abs().mean()), "mean_log_ratio": float(ratio.mean()),
            "p_a": float(pa.mean()), "p_b": float(pb.mean()), "n": len(prompts)}


class DecoderProbe:
    """Everything a grid point is scored with: prompts, class tokens, neutral text and (optionally)
    neutral prompts for the bias measure (grid metric ``"debias"``, see :func:`bias_scores`).

    Under ``torchrun`` / ``accelerate launch`` every scoring pass is split by rows: each rank scores
    its block of the prompts, neutral texts and bias prompts, and every rank gets the combined point
    (per-prompt probabilities gathered in order, LMS sums added). Rank 0 alone reads and writes the
    point cache; every rank holds the same points."""

    def __init__(self, mwg: ModelWithGradiend, data: PairDataset, classes: tuple[str, str],
                 neutral: Sequence[str], batch_size: int = 16, max_rows_per_class: int | None = None,
                 seed: int = 0, bias_prompts: Sequence[str] | None = None) -> None:
        lm = mwg.lm
        frame = data.to_frame()
        frame = frame[frame["factual_class"].isin(classes)]
        if frame.empty:
            raise ValueError(f"no rows of classes {list(classes)} to evaluate the decoder on")
        if max_rows_per_class is not None:
            keep = [g.sample(min(len(g), max_rows_per_class), random_state=seed).index
                    for _, g in frame.groupby("factual_class")]
            frame = frame.loc[sorted(i for idx in keep for i in idx)]
        self.mwg, self.classes, self.neutral, self.batch_size = mwg, classes, list(neutral), batch_size
        if not self.neutral:
            raise ValueError("decoder evaluation needs neutral texts for the LMS constraint")
        sub = PairDataset.from_frame(frame.reset_index(drop=True))
        self.prompts = sub.prompts(lm.kind, lm.tokenizer.mask_token)
        self.row_class = frame["factual_class"].to_numpy()
        tokens = {c: sorted(set(frame.loc[frame["factual_class"] == c, "factual"])) for c in classes}
        self.tokens = tokens
        self.token_ids = {c: lm.token_ids(tokens[c]) for c in classes}
        self.all_ids = sorted({i for ids in self.token_ids.values() for i in ids})
        self.col = {t: j for j, t in enumerate(self.all_ids)}
        self.points: dict[str, dict[str, Any]] = {}
        self.points_file: Path | None = None
        self.bias_prompts = list(bias_prompts or [])
        #: scoring passes run (one pass = every prompt and neutral text through the model); cache hits cost none
        self.passes = 0

    def score(self) -> dict[str, Any]:
        """Probabilities and LMS of the model as it is now."""
        lm = self.mwg.lm
        self.passes += 1
        probs = rows_by_rank(lambda part: metrics.next_token_logprobs(lm, part, self.all_ids, batch_size=self.batch_size),
                             self.prompts, len(self.all_ids)).exp()
        lm_sc = lm_scores_by_rank(lm, self.neutral)
        out: dict[str, Any] = {"lms": lm_sc["lms"], "perplexity": lm_sc["perplexity"], "metrics": {}, "probs": {}}
        for c in self.classes:
            p_c = probs[:, [self.col[t] for t in self.token_ids[c]]].sum(-1).numpy()
            other = [o for o in self.classes if o != c][0]
            on_other = float(p_c[self.row_class == other].mean())
            on_own = float(p_c[self.row_class == c].mean())
            out["probs"][f"P({c}|{other} rows)"] = on_other
            out["probs"][f"P({c}|{c} rows)"] = on_own
            out["metrics"][result_key(c, True)] = on_other
            out["metrics"][result_key(c, False)] = 1.0 - on_own
        if self.bias_prompts:
            a, b = self.classes
            out["bias"] = bias_scores(lm, self.bias_prompts, self.token_ids[a], self.token_ids[b], self.batch_size)
            out["metrics"][DEBIAS_KEY] = -out["bias"]["mean_abs_log_ratio"]
        return out

    def score_at(self, feature_factor: float, learning_rate: float) -> dict[str, Any]:
        key = f"{float(feature_factor)!r}|{float(learning_rate)!r}"
        if key in self.points:
            return dict(self.points[key])
        with self.mwg.applied(learning_rate, feature_factor):
            point = self.score()
        logger.info("decoder point ff=%+g lr=%.3g: LMS %.4f, perplexity %.2f, %s", feature_factor, learning_rate,
                    point["lms"], point["perplexity"], {k: round(v, 4) for k, v in point["metrics"].items()})
        point = {"feature_factor": float(feature_factor), "learning_rate": float(learning_rate), **point}
        self.points[key] = point
        self._save_points()
        return dict(point)

    def base_point(self) -> dict[str, Any]:
        if "base" not in self.points:
            self.points["base"] = {"feature_factor": 0.0, "learning_rate": 0.0, **self.score()}
            self._save_points()
        return dict(self.points["base"])

    def use_point_cache(self, path: Path | None) -> None:
        """Reuse scored points from ``path`` (same model, feature model, rows and neutral text) and add
        new ones to it: strengthening and weakening sweeps share every grid point."""
        self.points_file = path
        if path is None:
            return
        found = dist.main_decides(lambda: json.loads(path.read_text()) if path.is_file() else None)
        if found is not None:
            self.points = found
            logger.info("reusing %d scored decoder points from %s", len(self.points), path)

    def _save_points(self) -> None:
        if self.points_file is not None and dist.is_main():
            write_json_atomic(self.points_file, self.points)
