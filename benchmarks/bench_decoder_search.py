"""Decoder selection, grid vs few-pass search, side by side in one run: forward passes, wall and CPU
time, and the held-out quality of each selection.

    .venv/bin/python benchmarks/bench_decoder_search.py                         # tiny-llama, ~1 min
    .venv/bin/python benchmarks/bench_decoder_search.py --model smollm2-135m --threads 1 --tag smollm2

One feature model is trained (en-pronouns, pre-pruned, a few steps; not timed), then for each search
(``grid``: feature factors {-1, +1} x the library's 5 default learning rates + 4 bisection steps per
key; ``fast`` with jvp-of-jvp derivatives; ``fast`` with jvp + finite differences) two
``evaluate_decoder`` calls are timed, as the issue asks: strengthen fem and weaken masc, on the
``val`` rows and the first half of the neutral sentences, caching off. Every search uses the same
selector (default ``perplexity:0.015``) and lr range.

Held-out quality: each selected edit is applied and scored on the ``test`` rows and the second half
of the neutral sentences (never seen by the selection): the metric (P(fem) on masc rows; 1 − P(masc)
on masc rows), its ratio to the base model, and the held-out perplexity ratio. "passes" counts
scoring passes (every class row and selection sentence through the model once) plus derivative
passes (one per feature factor for jvp2, two for fd).
Results: a markdown table on stdout and JSON in ``benchmarks/out/bench_decoder_search_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import setup_threads  # noqa: E402

OUT = HERE / "out"
CLASSES = ("masc", "fem")
TASKS = (("fem", True), ("masc", False))  # strengthen fem, weaken masc
SEARCHES = (("grid", {"search": "grid"}), ("fast-jvp2", {"search": "fast", "derivatives": "jvp2"}),
            ("fast-fd", {"search": "fast", "derivatives": "fd"}))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--per-class", type=int, default=200, help="en-pronouns rows per class (80/10/10 split)")
    p.add_argument("--neutral", type=int, default=64, help="neutral sentences for selection (as many held out)")
    p.add_argument("--rows-per-class", type=int, default=64, help="max_rows_per_class of each sweep")
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--pre-prune", type=float, default=0.01)
    p.add_argument("--selector", default="perplexity:0.015")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--rel-lrs", default="", help="grid learning rates as multiples of lr_scale, comma-separated "
                   "(default: the library's 1e-5..1e-1); the fast search uses their [min, max]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="tiny")
    args = p.parse_args()
    setup_threads(args.threads)

    from gradedit.data import features
    from gradedit.gradiend.evaluate.decoder import DecoderProbe, evaluate_decoder, lr_scale
    from gradedit.gradiend.train.config import TrainConfig
    from gradedit.gradiend.train.trainer import Trainer
    from gradedit.models import load_model

    lm = load_model(args.model)
    data = features.build("en-pronouns", lm, max_size_per_class=args.per_class)
    neutral = features.neutral("en", n=2 * args.neutral)
    sel_neutral, held_neutral = neutral[: args.neutral], neutral[args.neutral:]
    exp = OUT / f"decoder_search_{args.tag}"
    cfg = TrainConfig(experiment_dir=str(exp), max_steps=args.train_steps, eval_steps=args.train_steps,
                      pre_prune_topk=args.pre_prune, resume=False)
    trainer = Trainer(lm, data, list(CLASSES), neutral=sel_neutral, config=cfg)
    trainer.train()
    mwg = trainer.get_model()
    val, test = data.split("val"), data.split("test")
    lrs = [lr_scale(mwg) * float(x) for x in args.rel_lrs.split(",")] if args.rel_lrs else None
    held = DecoderProbe(mwg, test, CLASSES, held_neutral, max_rows_per_class=None)
    held_base = held.score()

    rows = []
    for name, kw in SEARCHES:
        for cls, increase in TASKS:
            wall, cpu = time.perf_counter(), cpu_s()
            res = evaluate_decoder(mwg, val, CLASSES, sel_neutral, target_class=cls,
                                   increase_target_probabilities=increase, selector=args.selector,
                                   max_rows_per_class=args.rows_per_class, tolerance=args.tolerance,
                                   learning_rates=lrs, **kw)
            wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
            (key, s), = res.items()
            with mwg.applied(s.learning_rate, s.feature_factor):
                h = held.score()
            rows.append({"search": name, "key": key, "wall_s": wall, "cpu_s": cpu,
                         "passes": res.info["forward_passes"], "scoring_passes": res.info["scoring_passes"],
                         "jvp_passes": res.info.get("jvp_passes", 0), "feature_factor": s.feature_factor,
                         "learning_rate": s.learning_rate, "admissible": s.admissible, "val_value": s.value,
                         "val_ratio": s.ratio, "val_ppl_ratio": s.perplexity / s.base_perplexity,
                         "heldout_value": h["metrics"][key], "heldout_ratio": h["metrics"][key] / held_base["metrics"][key],
                         "heldout_ppl_ratio": h["perplexity"] / held_base["perplexity"],
                         "lines": res.info.get("lines")})
    print(f"\nmodel {args.model}, selector {args.selector}, tolerance {args.tolerance}, threads {args.threads}, "
          f"{len(held.prompts)} held-out rows, {len(held_neutral)} held-out sentences\n")
    print("| search | key | passes (jvp) | wall s | CPU s | ff | lr | val metric ×base | val ppl ×base "
          "| held-out metric ×base | held-out ppl ×base |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['search']} | {r['key']} | {r['passes']} ({r['jvp_passes']}) | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
              f"| {r['feature_factor']:+g} | {r['learning_rate']:.4g} | {r['val_ratio']:.3f} | {r['val_ppl_ratio']:.4f} "
              f"| {r['heldout_ratio']:.3f} | {r['heldout_ppl_ratio']:.4f} |")
    OUT.mkdir(exist_ok=True)
    out = OUT / f"bench_decoder_search_{args.tag}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
