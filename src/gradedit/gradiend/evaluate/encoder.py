"""Encoder evaluation: is the feature separated? Encode held-out rows of both classes and neutral rows,
then report correlation, accuracies and the distribution of encoded values per group.

Groups (``data_type``), each row with a label:

- ``training``: rows of the split whose pair goes class A → B (label +1) or B → A (label −1);
- ``identity``: rows of the split with factual == alternative (or equal classes), label 0;
- ``neutral_masked``: the training contexts with ANOTHER word as the target (not a class word), label 0;
- ``neutral``: neutral sentences masked the same way, label 0.

With ``source="diff"`` a row whose factual == alternative has a zero gradient, so it encodes to
exactly ``tanh(b_e)``: that is the GRADIEND semantics (no counterfactual, no feature), not a bug.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ... import dist
from ..._files import write_json_atomic, write_text_atomic
from ...data.columns import MASK, fill_masked
from ...data.neutral_pairs import mask_neutral_word
from ...data.schema import PairDataset, expected_labels
from ...models import LanguageModel
from ..encode import encode_rows
from ..gradients import SOURCES, Source
from ..rows import Rows
from ..train.loop import pearson

if TYPE_CHECKING:
    import pandas as pd

    from ..model import ModelWithGradiend

logger = logging.getLogger(__name__)

__all__ = ["DATA_TYPES", "EncoderResults", "evaluate_encoder", "mask_other_word"]

DATA_TYPES = ("training", "identity", "neutral_masked", "neutral")
NEUTRAL_CLASS = "neutral"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MIN_LEFT_WORDS = 3
DEFAULT_NEUTRAL_CAP = 64


def mask_other_word(text: str, lm: LanguageModel, exclude: set[str], seed: int = 0) -> tuple[str, str] | None:
    """Mask one word of ``text`` (no ``[MASK]`` in it) that has ≥3 words before it and is ONE token of
    ``lm`` with its leading space; ``exclude`` holds lowercased words that may not be chosen.

    Returns ``(masked_text, " word")`` or None when no word qualifies; the choice is
    :func:`~gradedit.data.neutral_pairs.mask_neutral_word`'s (deterministic: ``sha256(seed, text)``).
    """
    return mask_neutral_word(text, exclude, lm.is_single_token, seed=seed, min_left_words=MIN_LEFT_WORDS)


def _balanced(labels: Sequence[Any], cap: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``cap`` rows, balanced over ``labels`` (as ``trainer.balanced_cap``)."""
    arr = np.asarray(labels)
    if cap is None or len(arr) <= cap:
        return np.arange(len(arr))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(arr == v) for v in np.unique(arr)]
    per = max(1, cap // len(groups))
    return np.sort(np.concatenate([rng.permutation(g)[:per] for g in groups]))


def _neutral_record(masked: str, word: str, split: str, data_type: str) -> dict[str, Any]:
    return {"text": masked, "factual": word, "alternative": word, "factual_class": NEUTRAL_CLASS,
            "alternative_class": NEUTRAL_CLASS, "label": 0, "split": split, "data_type": data_type}


def _groups(lm: LanguageModel, data: PairDataset, classes: tuple[str, str], neutral: Sequence[str] | None,
            split: str, max_size: int | None, seed: int) -> dict[str, pd.DataFrame]:
    """The rows of every non-empty group: a DataFrame per data_type with the PairDataset columns."""
    import pandas as pd

    missing = [c for c in classes if c not in data.classes]
    if len(classes) != 2 or classes[0] == classes[1] or missing:
        raise ValueError(f"classes must be two different class ids of the data; {missing or list(classes)} "
                         f"not usable, the data has classes {data.classes}")
    part = data.split(split)  # DataError (a ValueError) for an unknown split name
    if len(part) == 0:
        present = sorted(set(data.to_frame()["split"]))
        raise ValueError(f"the {split!r} split is empty; splits present: {present}")
    frame = part.to_frame()
    frame["label"] = expected_labels(frame, classes)
    if not (frame["label"] != 0).any():
        raise ValueError(f"the {split!r} split has no rows pairing classes {list(classes)}; "
                         f"its classes are {part.classes}")
    frame["data_type"] = "training"
    out: dict[str, pd.DataFrame] = {}
    train = frame[frame["label"] != 0].reset_index(drop=True)
    out["training"] = train.iloc[_balanced(train["label"], max_size, seed)].reset_index(drop=True)
    same = (frame["factual"] == frame["alternative"]) | (frame["factual_class"] == frame["alternative_class"])
    ident = frame[same].reset_index(drop=True)
    if len(ident):
        ident["data_type"] = "identity"
        out["identity"] = ident.iloc[_balanced(ident["factual_class"], max_size, seed)].reset_index(drop=True)
    skipped = int((~same & (frame["label"] == 0)).sum())
    if skipped:
        logger.info("skipping %d row(s) of the %r split that pair a target class with a third class", skipped, split)

    full = data.to_frame()
    ours = full["factual_class"].isin(classes) | full["alternative_class"].isin(classes)
    exclude = {w.strip().lower() for w in [*full.loc[ours, "factual"], *full.loc[ours, "alternative"]]}
    masked = [mask_other_word(fill_masked(t, f), lm, exclude, seed) for t, f in zip(out["training"]["text"],
                                                                              out["training"]["factual"])]
    recs = [_neutral_record(m, w, split, "neutral_masked") for m, w in (x for x in masked if x is not None)]
    if len(recs) < len(masked):
        logger.info("neutral_masked: %d of %d training contexts have no usable non-target word",
                    len(masked) - len(recs), len(masked))
    if recs:
        out["neutral_masked"] = pd.DataFrame(recs)
    else:
        logger.info("no neutral_masked rows: no training context has a usable non-target word")
    if neutral:
        cap, recs = max_size or DEFAULT_NEUTRAL_CAP, []
        for t in neutral:
            found = None if MASK in t else mask_other_word(t.strip(), lm, exclude, seed)
            if found is not None:
                recs.append(_neutral_record(*found, split, "neutral"))
                if len(recs) >= cap:
                    break
        if recs:
            out["neutral"] = pd.DataFrame(recs)
        else:
            logger.info("no usable neutral rows among %d neutral texts (none has a one-token word with "
                        "%d words before it); skipping the neutral group", len(neutral), MIN_LEFT_WORDS)
    return out


def evaluate_encoder(mwg: ModelWithGradiend, data: PairDataset, classes: tuple[str, str], *,
                     neutral: Sequence[str] | None = None, split: str = "test", max_size: int | None = None,
                     seed: int = 0, batch_size: int = 8, source: Source | None = None) -> EncoderResults:
    """Encode the ``split`` rows of ``classes`` plus identity / neutral_masked / neutral rows.

    Args:
        mwg: base model + trained feature model (its ``source`` gradient is encoded; latent neuron 0).
        data: pair rows with splits; labels are recomputed for ``classes`` (A → +1, B → −1).
        classes: ``(A, B)``, class A is expected to encode positive.
        neutral: optional neutral sentences (at most ``max_size`` or 64 are used).
        split: which split to evaluate (``"train"``, ``"val"``, ``"test"``).
        max_size: cap on training rows (balanced per class, chosen by ``seed``) and identity rows.
        batch_size: rows per forward-mode (JVP) pass.
        source: the gradient fed to the (trained) encoder; default the one it was trained on. A
            ``"diff"``-trained encoder read with ``"factual"`` gives neutral rows a non-degenerate
            distribution (the GRADIEND paper's analysis): does ordinary text excite the feature?

    Returns:
        ``EncoderResults``; ``rows`` has one row per encoded example (N rows over all groups).
        With ``source="diff"`` every label-0 row with factual == alternative has a zero gradient and
        encodes to exactly ``tanh(b_e)`` — correct GRADIEND semantics.

    Under ``torchrun`` / ``accelerate launch`` each rank encodes a contiguous block of every group's
    rows and the values are gathered in row order: every rank returns the same results.
    """
    import pandas as pd

    dist.init()
    classes = tuple(str(c) for c in classes)  # type: ignore[assignment]
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be >= 1 or None, got {max_size}")
    fm = mwg.feature_model
    source = source or mwg.source
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if fm.latent_dim != 1:
        logger.warning("latent_dim is %d; evaluating latent neuron 0 only", fm.latent_dim)
    groups = _groups(mwg.lm, data, classes, neutral, split, max_size, seed)
    parts = []
    for name, frame in groups.items():
        texts, f, a, labels = PairDataset.from_frame(frame.drop(columns="data_type")).model_inputs(mwg.lm)
        rows = Rows(list(texts), f, a, labels.float())
        logger.info("encoding %d %s row(s) (source %s) ...", len(rows.texts), name, source)
        values = _encode_by_rank(mwg, rows, source, batch_size)
        logger.info("encoded %d %s row(s): mean %+.3f", len(values), name, float(values.mean()))
        parts.append(pd.DataFrame({"text": frame["text"], "factual": frame["factual"],
                                   "alternative": frame["alternative"], "label": frame["label"].astype(int),
                                   "data_type": name, "class": frame["factual_class"], "encoded": values}))
    table = pd.concat(parts, ignore_index=True)
    info = {"split": split, "source": source, "trained_source": mwg.source, "base_model": mwg.lm.name, "max_size": max_size, "seed": seed,
            "data_fingerprint": data.fingerprint(), "counts": {k: len(v) for k, v in groups.items()}}
    res = EncoderResults.from_rows(table, classes, info)
    logger.info("encoder on %r: r=%+.3f (with neutral %+.3f), accuracy %.3f (binary %.3f)", split,
                res.correlation, res.correlation_with_neutral, res.accuracy, res.accuracy_binary)
    return res


def _encode_by_rank(mwg: ModelWithGradiend, rows: Rows, source: Source, batch_size: int) -> np.ndarray:
    """Encoded values [N] (latent neuron 0); under a launcher each rank encodes its block of rows."""
    fm = mwg.feature_model
    if not dist.is_distributed():
        return encode_rows(mwg.engine, fm, rows, source, batch_size=batch_size)[:, 0]
    mine = list(dist.shard_range(len(rows)))
    part = (encode_rows(mwg.engine, fm, rows.subset(mine), source, batch_size=batch_size) if mine
            else np.zeros((0, fm.latent_dim), dtype=np.float64))
    return dist.all_gather_rows(torch.from_numpy(np.ascontiguousarray(part))).numpy()[:, 0]


def _ternary(h: np.ndarray) -> np.ndarray:
    return np.where(h > 0.5, 1, np.where(h < -0.5, -1, 0))


@dataclass
class EncoderResults:
    """Encoder evaluation; ``rows`` (DataFrame: text, factual, alternative, label, data_type, class,
    encoded) is the ground truth every number is computed from (see ``from_rows``)."""

    correlation: float
    correlation_with_neutral: float
    accuracy_binary: float
    accuracy: float
    mean_by_class: dict[str, float]
    stats: list[dict[str, Any]]
    rows: pd.DataFrame
    classes: tuple[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, classes: tuple[str, str], info: Mapping[str, Any] | None = None,
                  ) -> EncoderResults:
        """Metrics from the encoded rows: Pearson r and sign accuracy on training rows (labels ±1);
        Pearson with all rows (neutral labels 0); ternary accuracy (±1 beyond ±0.5, else 0) on all rows."""
        h, y = rows["encoded"].to_numpy(float), rows["label"].to_numpy(float)
        tr = (rows["data_type"] == "training").to_numpy()
        mean_by_class = {c: float(h[tr & (rows["class"] == c).to_numpy()].mean()) for c in classes
                         if (tr & (rows["class"] == c).to_numpy()).any()}
        for dt in DATA_TYPES[1:]:
            sel = (rows["data_type"] == dt).to_numpy()
            if sel.any():
                mean_by_class[dt] = float(h[sel].mean())
        stats = []
        for (dt, c), g in rows.groupby(["data_type", "class"], sort=False):
            v = g["encoded"].to_numpy(float)
            q = np.quantile(v, QUANTILES)
            stats.append({"data_type": dt, "class": c, "count": int(v.size), "mean": float(v.mean()),
                          "std": float(v.std()), **{f"q{round(p * 100):02d}": float(x) for p, x in zip(QUANTILES, q)}})
        return cls(correlation=pearson(h[tr], y[tr]), correlation_with_neutral=pearson(h, y),
                   accuracy_binary=float(np.mean(np.sign(h[tr]) == y[tr])) if tr.any() else float("nan"),
                   accuracy=float(np.mean(_ternary(h) == y)), mean_by_class=mean_by_class, stats=stats,
                   rows=rows, classes=(str(classes[0]), str(classes[1])), info=dict(info or {}))

    def to_frame(self) -> pd.DataFrame:
        """The per-(data_type, class) statistics: count, mean, std, q05, q25, q50, q75, q95."""
        import pandas as pd

        return pd.DataFrame(self.stats)

    def to_dict(self) -> dict[str, Any]:
        """Everything but ``rows`` (JSON-ready)."""
        return {"correlation": self.correlation, "correlation_with_neutral": self.correlation_with_neutral,
                "accuracy_binary": self.accuracy_binary, "accuracy": self.accuracy,
                "mean_by_class": self.mean_by_class, "stats": self.stats, "classes": list(self.classes),
                "info": self.info}

    @staticmethod
    def rows_path(path: str | Path) -> Path:
        """Sibling CSV of the rows: ``encoder.json`` → ``encoder_rows.csv``."""
        path = Path(path)
        return path.with_name(path.stem + "_rows.csv")

    def save(self, path: str | Path) -> Path:
        """JSON at ``path`` and the rows beside it (``rows_path``), both written atomically."""
        path = Path(path)
        write_text_atomic(self.rows_path(path), self.rows.to_csv(index=False))
        write_json_atomic(path, {**self.to_dict(), "rows_file": self.rows_path(path).name})
        return path

    @classmethod
    def load(cls, path: str | Path) -> EncoderResults:
        import pandas as pd

        path = Path(path)
        d = json.loads(path.read_text())
        rows_file = cls.rows_path(path)
        text_cols = ["text", "factual", "alternative", "data_type", "class"]
        if rows_file.is_file():
            rows = pd.read_csv(rows_file, dtype={c: str for c in text_cols}, keep_default_na=False)
        else:
            logger.warning("%s not found; loading the encoder results without rows", rows_file)
            rows = pd.DataFrame(columns=[*text_cols[:3], "label", "data_type", "class", "encoded"])
        return cls(d["correlation"], d["correlation_with_neutral"], d["accuracy_binary"], d["accuracy"],
                   dict(d["mean_by_class"]), list(d["stats"]), rows, tuple(d["classes"]), dict(d.get("info", {})))

    def plot(self, path: str | Path | None = None, ax: Any = None) -> Any:
        """The encoder figure (see ``viz.encoder_plot.plot_encoder_distribution``); saved as PNG at ``path``."""
        from ...viz.encoder_plot import plot_encoder_distribution

        fig = plot_encoder_distribution(self, ax=ax)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig
