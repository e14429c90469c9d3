"""One benchmark run of our trainer (``gradedit.gradiend.train.trainer.Trainer``).

Run with the project's interpreter (``.venv/bin/python``), one process per configuration, by
``bench_train.py``. Writes a JSON result (step times, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import StepClock, machine_info, setup_threads, write_result  # noqa: E402


class _Stamp(logging.Handler):
    """Wall-clock time of the pre-pruning log line (the end of pre-pruning)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pre_pruned: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("pre-pruned the input space"):
            self.pre_pruned = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="plain HF model folder")
    p.add_argument("--pairs-csv", required=True, help="PairDataset CSV")
    p.add_argument("--params-json", required=True, help="JSON list of base-model parameter names (input space)")
    p.add_argument("--out", required=True)
    p.add_argument("--experiment-dir", required=True)
    p.add_argument("--source", default="alternative")
    p.add_argument("--target", default="diff")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pre-prune", type=float, default=None, help="keep this fraction of the input space")
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-max", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config-json", default="{}", help="extra TrainConfig fields as JSON (memory modes)")
    args = p.parse_args()

    setup_threads(args.threads)
    t_process = time.perf_counter()
    import gradedit
    from gradedit.data.schema import PairDataset
    from gradedit.gradiend.train.config import TrainConfig
    from gradedit.gradiend.train.trainer import Trainer
    from gradedit.models import load_model

    stamp = _Stamp()
    prune_logger = logging.getLogger("gradedit.gradiend.train.pruning")
    prune_logger.setLevel(logging.INFO)
    prune_logger.addHandler(stamp)

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    t0 = time.perf_counter()
    lm = load_model(args.model)
    t_load = time.perf_counter() - t0
    data = PairDataset.load(args.pairs_csv, target_classes=["masc", "fem"])
    params = json.loads(Path(args.params_json).read_text())
    max_steps = args.warmup + args.steps
    cfg = TrainConfig(
        experiment_dir=str(exp),
        source=args.source,
        target=args.target,
        params=params,
        train_batch_size=1,  # one gradient example per optimiser step
        rows_per_gradient=1,  # one data row per gradient example
        max_steps=max_steps,
        eval_steps=max_steps,  # evaluation only after the last step
        eval_max_size=args.eval_max,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        max_seeds=1,
        pre_prune_topk=args.pre_prune,
        pre_prune_samples=args.pre_prune_samples,
        resume=False,
        **json.loads(args.config_json),
    )
    trainer = Trainer(lm, data, ["masc", "fem"], config=cfg)
    clock = StepClock(max_steps)
    t_train = time.perf_counter()
    trainer.train()
    t_end = time.perf_counter()
    clock.close()

    res = {
        "side": "gradedit",
        "version": gradedit.__version__,
        "pre_prune": args.pre_prune,
        "source": args.source,
        "target": args.target,
        "weight_decay": args.weight_decay,
        "config": json.loads(args.config_json),
        "input_params": len(params),
        **clock.summary(args.warmup, t_train),
        "model_load_s": round(t_load, 2),
        "pre_prune_s": round(stamp.pre_pruned - t_train, 2) if stamp.pre_pruned else None,
        "train_call_s": round(t_end - t_train, 2),
        "process_s": round(t_end - t_process, 2),
        "machine": machine_info(),
    }
    write_result(args.out, res)
    shutil.rmtree(exp, ignore_errors=True)
    print(json.dumps({k: v for k, v in res.items() if k != "step_times_s"}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
