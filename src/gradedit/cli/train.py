"""``gradedit train``: train a GRADIEND feature model into an experiment folder.

The run records neutral text (``neutral.json``) for the decoder's LMS/perplexity constraint: the
data's language by default (``features.neutral(lang)``), ``--neutral FILE|LANG`` to choose.

Under ``torchrun`` / ``accelerate launch`` every rank trains its share of each batch (data parallel,
the same model as one process); rank 0 alone locks the run folder, writes and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .checks import NEUTRAL_TEXTS, check_classes, data_spec, finite_float, neutral_choice, neutral_texts
from .data import load_data
from .interrupt import run_interruptible
from .launch import add_device

logger = logging.getLogger(__name__)


def _topk(value: str) -> float | int:
    number = float(value)
    return int(number) if number >= 1 and number.is_integer() and "." not in value else number


def _topk_or_none(value: str) -> float | int | str:
    return "none" if value.lower() == "none" else _topk(value)


def _cmd_train(args: argparse.Namespace) -> int:
    # every check that needs no model first: a typo costs milliseconds, not a model load
    spec = data_spec(args.data)
    check_classes(spec, list(args.classes))
    neutral_source, neutral = neutral_choice(args.neutral, spec)
    values: dict[str, object] = {}
    if args.config:
        try:
            values = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"--config {args.config}: no such file") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config {args.config} is not JSON ({err})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"--config {args.config} must hold a JSON object of TrainConfig fields")
        bad = sorted(k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            raise ConfigError(f"--config {args.config}: {', '.join(bad)} must be finite numbers, got "
                              f"{', '.join(str(values[k]) for k in bad)}")
    for flag in ("max_steps", "eval_steps", "seeds", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    from .. import dist
    from ..gradiend.train import TrainConfig
    from ..gradiend.train.parallel import lock_on_main

    flags = {"max_steps": args.max_steps, "eval_steps": args.eval_steps, "source": args.source,
             "target": args.target, "learning_rate": args.lr, "pre_prune_topk": args.pre_prune,
             "max_seeds": args.seeds, "train_batch_size": args.batch_size}
    if args.post_prune is not None:  # "none" switches the default post-pruning off
        values["post_prune_topk"] = None if args.post_prune == "none" else args.post_prune
    values.update({k: v for k, v in flags.items() if v is not None})
    values["experiment_dir"] = args.out
    config = TrainConfig.from_dict(values)
    out = Path(args.out)

    def work() -> int:
        # the run folder is ours before the model loads: a second process fails in milliseconds; the
        # Trainer's own lock inside passes through (share_nested). Under a launcher rank 0 holds it.
        dist.init()
        with contextlib.ExitStack() as stack:
            lock_on_main(stack, out, share_nested=True)
            return _train(args, config, out, neutral_source, neutral)

    return run_interruptible(args, out, "training", work)


def _train(args: argparse.Namespace, config: Any, out: Path, neutral_source: str, neutral: str | list[str]) -> int:
    """Load the model and data, train, record the neutral text and print the summary (``out`` is locked;
    under a launcher every rank trains, rank 0 writes and prints)."""
    from .. import dist
    from .._files import write_json_atomic
    from ..gradiend.train import Trainer
    from ..models import load_model

    lm = load_model(args.model)
    data = load_data(args.data, lm)
    texts = neutral_texts(neutral)
    logger.info("neutral text: %d texts from %s", len(texts), neutral_source)
    trainer = Trainer(lm, data, args.classes, neutral=texts, config=config)
    fm = trainer.train()
    if not dist.is_main():
        return 0
    # where the neutral text came from, beside the texts (Trainer.load reads only "texts")
    write_json_atomic(out / "neutral.json", {"texts": list(texts), "source": neutral_source})
    res = max(trainer.seed_results, key=lambda r: abs(r.correlation))
    try:
        trainer.plot_training_convergence()
    except ImportError as err:
        logger.warning("no convergence plot: %s", err)
    print(f"feature model: {out / 'model'} (input dim {fm.input_dim:,})"
          + (f" ({dist.world_size()} processes)" if dist.is_distributed() else ""))
    print(f"neutral text: {len(texts)} texts from {neutral_source} (for the decoder's LMS/perplexity constraint)")
    print(f"validation r = {res.correlation:+.3f} (Pearson correlation of the encoding with the +1/-1 labels), "
          f"class means {res.class_means}, converged: {res.converged}")
    print(f"next: gradedit evaluate encoder {args.out} ; gradedit evaluate decoder {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    train = sub.add_parser("train", help="train a GRADIEND feature model")
    train.add_argument("--model", required=True, help="zoo name, local HF folder or hub id")
    train.add_argument("--data", required=True, help="PairDataset file/folder, or a built-in feature name "
                                                     "(gradedit data build --help lists them)")
    train.add_argument("--classes", nargs=2, required=True, metavar=("A", "B"), help="target classes (A encodes +)")
    train.add_argument("--out", required=True, help="experiment directory")
    train.add_argument("--neutral", metavar="FILE|LANG",
                       help=f"neutral text for the decoder's constraint: a file with one text per line, or a language "
                            f"({NEUTRAL_TEXTS} Bible sentences without the feature words); default: the data's language")
    train.add_argument("--config", help="JSON file with TrainConfig fields (flags override it)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--eval-steps", type=int)
    train.add_argument("--source", choices=["factual", "alternative", "diff"])
    train.add_argument("--target", choices=["factual", "alternative", "diff"])
    train.add_argument("--lr", type=finite_float, help="learning rate of the encoder-decoder")
    train.add_argument("--batch-size", type=int, help="gradient examples per step")
    train.add_argument("--pre-prune", type=_topk, help="keep the top entries before training: a count or a fraction")
    train.add_argument("--post-prune", type=_topk_or_none, metavar="K|none",
                       help="after training keep the top decoder entries: a count or a fraction (default 0.05); none: keep all")
    train.add_argument("--seeds", type=int, help="max seeds to try")
    add_device(train)
    train.set_defaults(func=_cmd_train)
