"""The MLM head of a training run (``TrainConfig.mlm_head``): trained once into ``experiment_dir/mlm_head``
and reused while the data and base model match, or loaded from a given folder."""

from __future__ import annotations

import logging
from pathlib import Path

from ...data.schema import PairDataset
from ...errors import ConfigError
from ...models import LanguageModel
from ..mlm_head import CONFIG_NAME, MLMHead, train_mlm_head
from ..model import HEAD_FOLDER
from ..rows import Rows, rows_of
from .config import TrainConfig

logger = logging.getLogger(__name__)

HEAD_DIR = HEAD_FOLDER


def check_head_config(lm: LanguageModel, config: TrainConfig) -> None:
    """ConfigError when an MLM head is asked for on a masked LM (it reads both sides already) or with
    the gradient store (whose key does not include the head)."""
    if config.mlm_head is not False and lm.kind != "clm":
        raise ConfigError(f"TrainConfig.mlm_head is for causal LMs; {lm.name} is a masked LM, which reads both sides "
                          "of [MASK] itself: set mlm_head=False")
    if config.mlm_head is not False and config.gradient_store != "off":
        raise ConfigError("the gradient store is keyed without the MLM head, so it could hold gradients of another "
                          "head: set gradient_store='off' with mlm_head")


def run_head(lm: LanguageModel, data: PairDataset, config: TrainConfig, experiment_dir: Path,
             *, train: bool) -> MLMHead | None:
    """The run's head: ``None`` without ``config.mlm_head``; a saved one when it matches (base model,
    data fingerprint, pooling lengths); else, with ``train``, a new one fitted and saved.

    Raises:
        FileNotFoundError: no head to load and ``train`` is False (or a given path holds none).
    """
    if config.mlm_head is False:
        return None
    if isinstance(config.mlm_head, str):
        return MLMHead.from_pretrained(Path(config.mlm_head), lm).to(lm.device)
    folder = experiment_dir / HEAD_DIR
    if (folder / CONFIG_NAME).is_file():
        head = MLMHead.from_pretrained(folder, lm)
        info = head.info
        same = (info.get("data_fingerprint") == data.fingerprint() and
                sorted(int(k) for k in info.get("val_loss", {})) == sorted(set(config.mlm_head_pooling)))
        if same:
            logger.info("reusing the MLM head in %s (pooling length %d)", folder, head.pooling_length)
            return head.to(lm.device)
        if not train:
            raise FileNotFoundError(f"the MLM head in {folder} was made for other data or pooling lengths; train again")
        logger.info("the MLM head in %s was made for other data or pooling lengths; training a new one", folder)
    elif not train:
        raise FileNotFoundError(f"no MLM head in {folder}; call trainer.train() first")
    head, fit = train_mlm_head(lm, data, pooling_lengths=config.mlm_head_pooling, seed=config.seed)
    logger.info("MLM head: pooling length %d, validation loss %.4f (no-context baseline %.4f)", fit.pooling_length,
                fit.val_loss[fit.pooling_length], fit.baseline_loss)
    head.save_pretrained(folder)
    return head


def head_rows(data: PairDataset, lm: LanguageModel, head: MLMHead | None) -> Rows:
    """``rows_of(data, lm)``, with the head's full placeholder texts when a head is given."""
    rows = rows_of(data, lm)
    if head is None:
        return rows
    return Rows(head.texts(data), rows.factual, rows.alternative, rows.labels, rows.classes)
