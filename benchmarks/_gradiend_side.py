"""One benchmark run of the reference ``gradiend`` package (public API only).

Run with the interpreter of the gradiend venv (``benchmarks/.venv-gradiend/bin/python``), one
process per configuration, by ``bench_train.py``. Writes a JSON result (step times, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import StepClock, machine_info, setup_threads, write_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="plain HF model folder")
    p.add_argument("--train-csv", required=True, help="gradiend merged-format CSV")
    p.add_argument("--neutral-csv", default=None)
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
    args = p.parse_args()

    setup_threads(args.threads)
    t_process = time.perf_counter()
    import gradiend
    from gradiend import PrePruneConfig, TextPredictionTrainer, TrainingArguments
    from gradiend.trainer import TrainingCallback

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    marks: dict[str, float] = {}

    class TrainBegin(TrainingCallback):
        """Stamps the start of the training loop (after model loading, data and pre-pruning)."""

        def on_train_begin(self, config, **kwargs):  # noqa: ANN001, ANN003
            marks.setdefault("train_begin", time.perf_counter())

    params = json.loads(Path(args.params_json).read_text())
    max_steps = args.warmup + args.steps
    targs = TrainingArguments(
        experiment_dir=str(exp),
        source=args.source,
        target=args.target,
        train_batch_size=1,  # one data row per base gradient
        gradiend_batch_size=1,  # one base gradient per optimiser step
        max_steps=max_steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        eval_steps=10 * max_steps,  # evaluation only before step 1 and after the last step
        encoder_eval_train_max_size=args.eval_max,
        encoder_eval_max_size=args.eval_max,
        seed_selection_eval_max_size=args.eval_max,
        max_seeds=1,
        min_convergent_seeds=1,
        params=params,
        use_cache=False,
        seed=args.seed,
        pre_prune_config=(PrePruneConfig(n_samples=args.pre_prune_samples, topk=args.pre_prune, source="diff",
                                         seed=args.seed) if args.pre_prune else None),
    )
    trainer = TextPredictionTrainer(
        model=args.model,
        data=args.train_csv,
        target_classes=["masc", "fem"],
        masked_col="masked",
        label_col="label",
        label_class_col="label_class",
        alternative_col="alternative",
        alternative_class_col="alternative_class",
        split_col="split",
        eval_neutral_data=args.neutral_csv,
        training_args=targs,
    )
    clock = StepClock(max_steps)
    t_train = time.perf_counter()
    trainer.train(callbacks=[TrainBegin()])
    t_end = time.perf_counter()
    clock.close()

    res = {
        "side": "gradiend",
        "version": gradiend.__version__,
        "pre_prune": args.pre_prune,
        "source": args.source,
        "target": args.target,
        "weight_decay": args.weight_decay,
        "input_params": len(params),
        **clock.summary(args.warmup, t_train),
        "setup_before_loop_s": round(marks["train_begin"] - t_train, 2) if "train_begin" in marks else None,
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
