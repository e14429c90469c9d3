"""``gradedit train``: train a GRADIEND feature model into an experiment folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .data import load_data

logger = logging.getLogger(__name__)


def _topk(value: str) -> float | int:
    number = float(value)
    return int(number) if number >= 1 and number.is_integer() and "." not in value else number


def _cmd_train(args: argparse.Namespace) -> int:
    from ..gradiend.train import TrainConfig, Trainer
    from ..models import load_model

    values: dict[str, object] = json.loads(Path(args.config).read_text()) if args.config else {}
    flags = {"max_steps": args.max_steps, "eval_steps": args.eval_steps, "source": args.source,
             "target": args.target, "learning_rate": args.lr, "pre_prune_topk": args.pre_prune,
             "max_seeds": args.seeds, "train_batch_size": args.batch_size}
    values.update({k: v for k, v in flags.items() if v is not None})
    values["experiment_dir"] = args.out
    config = TrainConfig.from_dict(values)
    lm = load_model(args.model)
    data = load_data(args.data, lm)
    trainer = Trainer(lm, data, args.classes, config=config)
    fm = trainer.train()
    res = max(trainer.seed_results, key=lambda r: abs(r.correlation))
    try:
        trainer.plot_training_convergence()
    except ImportError as err:
        logger.warning("no convergence plot: %s", err)
    print(f"feature model: {Path(args.out) / 'model'} (input dim {fm.input_dim:,})")
    print(f"validation r = {res.correlation:+.3f}, class means {res.class_means}, converged: {res.converged}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``."""
    train = sub.add_parser("train", help="train a GRADIEND feature model")
    train.add_argument("--model", required=True, help="zoo name, local HF folder or hub id")
    train.add_argument("--data", required=True, help="PairDataset file/folder, or a built-in feature name")
    train.add_argument("--classes", nargs=2, required=True, metavar=("A", "B"), help="target classes (A encodes +)")
    train.add_argument("--out", required=True, help="experiment directory")
    train.add_argument("--config", help="JSON file with TrainConfig fields (flags override it)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--eval-steps", type=int)
    train.add_argument("--source", choices=["factual", "alternative", "diff"])
    train.add_argument("--target", choices=["factual", "alternative", "diff"])
    train.add_argument("--lr", type=float, help="learning rate of the encoder-decoder")
    train.add_argument("--batch-size", type=int, help="gradient examples per step")
    train.add_argument("--pre-prune", type=_topk, help="keep the top entries before training: a count or a fraction")
    train.add_argument("--seeds", type=int, help="max seeds to try")
    train.set_defaults(func=_cmd_train)
