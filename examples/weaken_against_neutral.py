"""Weakening " he": a masc-vs-fem feature model against a masc-vs-neutral one (issue 15.5).

    python examples/weaken_against_neutral.py runs/weaken_neutral                       # smollm2-135m
    python examples/weaken_against_neutral.py /tmp/wn --model tiny-llama --steps 10 --max-per-class 40   # a quick check

Both feature models are trained with the same config on the same ``en-pronouns`` masc rows:

* ``masc-vs-fem``: the usual he→she / she→he pairs;
* ``masc-vs-neutral``: ``data.neutral_pairs.against_neutral`` — each masc row against its neutral twin
  (the same sentence with another word masked), so the decoder's only consistent direction is
  "lower ' he'", with no preferred receiver.

For each, ``gradiend.weaken.weaken_report`` selects the rewrite that weakens masc most within the
selector's constraint (default LMS >= 0.99 x base, on the selection split and the selection neutral
sentences), then measures on the HELD-OUT masc test prompts P(" he") and P(" she") and on unseen neutral
sentences the perplexity, base vs rewrite. A run meets the target when " he" is >= 2x lower, the
selection was admissible, and held-out perplexity rose by at most --max-ppl (default +2 %).
Writes OUT/summary.json and prints a table.
"""

import argparse
import json
import logging
from pathlib import Path

import gradedit as ge
from gradedit._files import write_json_atomic
from gradedit.data import features
from gradedit.data.neutral_pairs import against_neutral
from gradedit.gradiend.weaken import weaken_report

WATCH = {"masc": [" he"], "fem": [" she"]}


def masc_prompts(data: ge.PairDataset) -> list[str]:
    """Causal-LM prompts of the test split's masc rows (held out from training and selection)."""
    test = data.split("test")
    return [p for p, c in zip(test.prompts("clm"), test.to_frame()["factual_class"]) if c == "masc"]


def run(lm, data, classes, neutral_sel, neutral_heldout, prompts, out: Path, args) -> dict:
    config = ge.TrainConfig(experiment_dir=str(out), source=args.source, target="diff", max_steps=args.steps,
                            eval_steps=min(10, args.steps), train_batch_size=4, pre_prune_topk=args.pre_prune,
                            pre_prune_samples=16, post_prune_topk=args.post_prune, eval_max_size=48, seed=args.seed)
    trainer = ge.Trainer(lm, data, classes, neutral=neutral_sel, config=config)
    trainer.train()
    rep = weaken_report(trainer, "masc", prompts, WATCH, neutral_heldout, selector=args.selector,
                        max_neutral=len(neutral_sel), max_rows_per_class=args.rows_per_class, refine_steps=args.refine)
    return {"rows": len(data), "train": trainer.seed_results[0].to_dict(), "weaken": rep.to_dict(),
            "met": rep.met(args.factor, args.max_ppl), "met_selection_constraint_only": rep.met(args.factor)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m", help="a causal LM (zoo name, folder or hub id)")
    ap.add_argument("--steps", type=int, default=100, help="GRADIEND steps per run (early stopping may end sooner)")
    ap.add_argument("--source", default="diff", choices=["factual", "alternative", "diff"])
    ap.add_argument("--pre-prune", type=float, default=0.01, help="pre-pruning fraction of the input space")
    ap.add_argument("--post-prune", type=float, default=0.05, help="post-pruning fraction of the decoder")
    ap.add_argument("--selector", default="lms:0.99", help="decoder selector (constraint on the selection text)")
    ap.add_argument("--factor", type=float, default=2.0, help="required x-lower P(' he') on held-out prompts")
    ap.add_argument("--max-ppl", type=float, default=0.02, help="allowed held-out perplexity increase")
    ap.add_argument("--rows-per-class", type=int, default=32, help="selection rows per class in the sweep")
    ap.add_argument("--refine", type=int, default=3, help="bisection steps of the sweep")
    ap.add_argument("--neutral-selection", type=int, default=48)
    ap.add_argument("--neutral-heldout", type=int, default=64)
    ap.add_argument("--max-per-class", type=int, default=None, help="cap on en-pronouns rows per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    lm = ge.load_model(args.model)
    data = features.build("en-pronouns", lm, seed=args.seed, max_size_per_class=args.max_per_class)
    neutral = features.neutral("en", n=args.neutral_selection + args.neutral_heldout, seed=args.seed)
    sel, heldout = neutral[:args.neutral_selection], neutral[args.neutral_selection:]
    prompts = masc_prompts(data)
    vs_neutral = against_neutral(data, "masc", lm, exclude=features.NEUTRAL_EXCLUDE["en"], seed=args.seed)
    summary: dict = {"model": args.model, "args": {k: str(v) for k, v in vars(args).items()},
                     "heldout_prompts": len(prompts), "heldout_neutral": len(heldout), "runs": {}}
    for name, ds, classes in (("masc-vs-fem", data, ["masc", "fem"]), ("masc-vs-neutral", vs_neutral, ["masc", "neutral"])):
        summary["runs"][name] = run(lm, ds, classes, sel, heldout, prompts, args.out / name, args)
        write_json_atomic(args.out / "summary.json", json.loads(json.dumps(summary, default=str)))

    print(f"\n{args.model}: weaken masc, {len(prompts)} held-out masc prompts, {len(heldout)} held-out neutral "
          f"sentences, selector {args.selector}")
    print(f"{'run':16} {'ff':>4} {'lr':>9} {'P(he) base -> edit':>22} {'x lower':>8} {'P(she) base -> edit':>22} "
          f"{'x she':>6} {'ppl':>7}  met (>= {args.factor:g}x, ppl <= +{100 * args.max_ppl:g}%)")
    for name, r in summary["runs"].items():
        w = r["weaken"]
        s, b, e = w["selection"], w["base"], w["edited"]
        print(f"{name:16} {s['feature_factor']:+4.0f} {s['learning_rate']:9.3g} {b['masc']:10.4f} -> {e['masc']:.4f} "
              f"{w['ratio']:8.2f} {b['fem']:10.4f} -> {e['fem']:.4f} {w['changes']['fem']:6.2f} "
              f"{100 * w['perplexity_change']:+6.1f}%  {r['met']}" + ("" if s["admissible"] else "  (no admissible point)"))
    print(f"\nwritten: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
