"""One decoder-evaluation benchmark run of the reference ``gradiend`` package (public API only):
brief pre-pruned training, then ONE timed call of ``TextPredictionTrainer.evaluate_decoder``.

Run with the interpreter of the gradiend venv (``benchmarks/.venv-gradiend/bin/python``) by
``bench_decoder.py``. Writes a JSON result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

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


def _counts(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Rows and neutral sentences one ``evaluate_base_model`` call scores (LMS uses at most max_size_neutral)."""
    tl, nd, cap = kwargs.get("training_like_df"), kwargs.get("neutral_df"), kwargs.get("max_size_neutral")
    n_neutral = None if nd is None else (len(nd) if not cap else min(len(nd), cap))
    col = next((c for c in ("label_class", "factual_id") if tl is not None and c in tl.columns), None)
    return {"rows": None if tl is None else len(tl), "neutral": n_neutral,
            "rows_per_class": None if col is None else {str(k): int(v) for k, v in tl[col].value_counts().items()}}


def _clean(x: Any) -> Any:
    """JSON-safe copy of a result value (floats, nested dicts and lists only)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    return x if isinstance(x, int | str | bool | type(None)) else str(x)


def main() -> None:
    p = side_parser(__doc__)
    p.add_argument("--train-csv", required=True, help="gradiend merged-format CSV")
    args = p.parse_args()
    ffs, lrs = floats(args.ffs), floats(args.lrs)

    setup_threads(args.threads)
    import gradiend
    from gradiend import PrePruneConfig, TextPredictionTrainer, TrainingArguments

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    steps = args.train_steps
    targs = TrainingArguments(
        experiment_dir=str(exp), source=args.source, target=args.target,
        train_batch_size=1, gradiend_batch_size=1, max_steps=steps, learning_rate=args.train_lr,
        weight_decay=args.weight_decay, eval_steps=10 * steps,
        encoder_eval_train_max_size=args.train_eval_max, encoder_eval_max_size=args.train_eval_max,
        seed_selection_eval_max_size=args.train_eval_max, max_seeds=1, min_convergent_seeds=1,
        params=json.loads(Path(args.params_json).read_text()), use_cache=False, seed=args.seed,
        pre_prune_config=PrePruneConfig(n_samples=args.pre_prune_samples, topk=args.pre_prune, source="diff",
                                        seed=args.seed),
    )
    trainer = TextPredictionTrainer(
        model=args.model, data=args.train_csv, target_classes=list(CLASSES), masked_col="masked", label_col="label",
        label_class_col="label_class", alternative_col="alternative", alternative_class_col="alternative_class",
        split_col="split", eval_neutral_data=args.neutral_csv, training_args=targs,
    )
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    mwg = trainer.get_model()  # loads the selected seed's checkpoint if training released it: not timed
    input_dim = int(mwg.gradiend.input_dim)
    touch([*mwg.base_model.parameters(), *mwg.gradiend.parameters()])
    peak_training = peak_rss_mib()

    stamps = CallStamps(info=_counts)
    trainer.evaluate_base_model = stamps.wrap(trainer.evaluate_base_model)
    release_memory()
    rss_before = rss_mib()
    reset_ok = reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    res = trainer.evaluate_decoder(lrs=lrs, feature_factors=ffs, use_cache=False, split="test",
                                   max_size_training_like=args.rows_per_class, max_size_neutral=args.neutral,
                                   target_class=None, increase_target_probabilities=True, plot=False)
    t1, c1 = time.perf_counter(), time.process_time()
    eval_peak = peak_rss_mib()

    rows = {c["rows"] for c in stamps.calls}
    neutral_n = {c["neutral"] for c in stamps.calls}
    grid = res.get("grid", {})
    out = {
        "side": "gradiend",
        "version": gradiend.__version__,
        "pre_prune": args.pre_prune,
        "input_dim": input_dim,
        "train_steps": steps,
        "train_s": round(train_s, 2),
        "feature_factors": ffs,
        "learning_rates": lrs,
        **eval_summary(stamps, t0, t1, c0, c1, len(ffs) * len(lrs)),
        "rows_scored": rows.pop() if len(rows) == 1 else sorted(rows, key=str),
        "neutral_scored": neutral_n.pop() if len(neutral_n) == 1 else sorted(neutral_n, key=str),
        "rows_per_class_scored": stamps.calls[0]["rows_per_class"] if stamps.calls else None,
        "points": [{"id": _clean(k), "lms": _clean(v.get("lms")), "probs": _clean(v.get("probs"))}
                   for k, v in grid.items()],
        "selected": {k: _clean({f: v.get(f) for f in ("feature_factor", "learning_rate", "value")})
                     for k, v in res.items() if k != "grid" and isinstance(v, dict)},
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
