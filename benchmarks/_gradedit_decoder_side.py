"""One decoder-evaluation benchmark run of ours: brief pre-pruned training, then ONE timed call of
``gradedit.gradiend.train.trainer.Trainer.evaluate_decoder``.

Run with the project's interpreter (``.venv/bin/python``) by ``bench_decoder.py``. Writes a JSON result.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine_info, peak_rss_mib, rss_mib, setup_threads, write_result  # noqa: E402
from bench_decoder import (  # noqa: E402
    CLASSES,
    CallStamps,
    eval_summary,
    floats,
    release_memory,
    reset_peak_rss,
    side_parser,
    touch,
)


def main() -> None:
    p = side_parser(__doc__)
    p.add_argument("--pairs-csv", required=True, help="PairDataset CSV")
    args = p.parse_args()
    ffs, lrs = floats(args.ffs), floats(args.lrs)

    setup_threads(args.threads)
    import pandas as pd

    import gradedit
    from gradedit.data.schema import PairDataset
    from gradedit.gradiend.evaluate import decoder as dec
    from gradedit.gradiend.train.config import TrainConfig
    from gradedit.gradiend.train.trainer import Trainer
    from gradedit.models import load_model

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    lm = load_model(args.model)
    data = PairDataset.load(args.pairs_csv, target_classes=list(CLASSES))
    neutral = pd.read_csv(args.neutral_csv)["text"].astype(str).tolist()
    cfg = TrainConfig(
        experiment_dir=str(exp), source=args.source, target=args.target,
        params=json.loads(Path(args.params_json).read_text()),
        train_batch_size=1, rows_per_gradient=1, max_steps=args.train_steps, eval_steps=args.train_steps,
        eval_max_size=args.train_eval_max, learning_rate=args.train_lr, weight_decay=args.weight_decay,
        seed=args.seed, max_seeds=1, pre_prune_topk=args.pre_prune, pre_prune_samples=args.pre_prune_samples,
        resume=False,
    )
    trainer = Trainer(lm, data, list(CLASSES), neutral=neutral, config=cfg)
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    input_dim = trainer.feature_model.input_dim
    touch([*lm.model.parameters(), *trainer.feature_model.parameters()])
    peak_training = peak_rss_mib()

    # rows: Trainer.evaluate_decoder scores every test row of both classes, up to the library's
    # max_rows_per_class per class; the driver left exactly --rows-per-class rows per class in the split.
    kwargs = {}
    if "max_rows_per_class" in inspect.signature(trainer.evaluate_decoder).parameters:
        kwargs["max_rows_per_class"] = args.rows_per_class
    else:
        cap = inspect.signature(dec.evaluate_decoder).parameters["max_rows_per_class"].default
        if cap is not None and cap < args.rows_per_class:
            sys.exit(f"Trainer.evaluate_decoder scores at most {cap} rows per class; use --rows-per-class <= {cap}")

    stamps = CallStamps(info=lambda probe: {"rows": len(probe.prompts), "neutral": len(probe.neutral),
                                            "rows_per_class": {str(c): int((probe.row_class == c).sum())
                                                               for c in probe.classes}})
    dec.DecoderProbe.score = stamps.wrap(dec.DecoderProbe.score)
    release_memory()
    rss_before = rss_mib()
    reset_ok = reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    res = trainer.evaluate_decoder(target_class=None, increase_target_probabilities=True, feature_factors=ffs,
                                   learning_rates=lrs, split="test", max_neutral=args.neutral, refine_steps=0,
                                   use_cache=False, plot=False, **kwargs)
    t1, c1 = time.perf_counter(), time.process_time()
    eval_peak = peak_rss_mib()

    rows = {c["rows"] for c in stamps.calls}
    neutral_n = {c["neutral"] for c in stamps.calls}
    out = {
        "side": "gradedit",
        "version": gradedit.__version__,
        "pre_prune": args.pre_prune,
        "input_dim": input_dim,
        "train_steps": args.train_steps,
        "train_s": round(train_s, 2),
        "feature_factors": ffs,
        "learning_rates": lrs,
        **eval_summary(stamps, t0, t1, c0, c1, len(ffs) * len(lrs)),
        "rows_scored": rows.pop() if len(rows) == 1 else sorted(rows),
        "neutral_scored": neutral_n.pop() if len(neutral_n) == 1 else sorted(neutral_n),
        "rows_per_class_scored": stamps.calls[0]["rows_per_class"] if stamps.calls else None,
        "result_info": res.info,
        "points": [{"ff": q["feature_factor"], "lr": q["learning_rate"], "lms": q["lms"], **q["metrics"]}
                   for q in [res.base, *res.grid]],
        "selected": {k: {"ff": s.feature_factor, "lr": s.learning_rate, "value": s.value}
                     for k, s in res.selections.items()},
        "rss_before_eval_mib": rss_before,
        "eval_peak_rss_mib": eval_peak if reset_ok else None,
        "peak_rss_through_training_mib": peak_training,
        "machine": machine_info(),
    }
    write_result(args.out, out)
    shutil.rmtree(exp, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k not in ("points", "point_s", "point_scoring_s")}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
