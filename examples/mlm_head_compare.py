"""Encoder quality of GRADIEND on a causal LM with and without the MLM head (issue 15.4).

    python examples/mlm_head_compare.py runs/mlm_head --model gemma3-270m
    python examples/mlm_head_compare.py /tmp/mh --model tiny-llama --steps 10 --max-per-class 40   # a quick check

For each feature (default ``en-pronouns`` and ``de-articles:masc_nom-fem_nom``) it trains two feature
models with the same config: one on the LM's own next-token gradients (the causal LM reads only the
words before [MASK]) and one through an MLM head (``TrainConfig(mlm_head=True)``: the head reads the
words after [MASK] too; its pooling length is chosen by validation loss). It reports, per run, the
encoder on the held-out test split (Pearson r of encoding and label, sign accuracy, class means), the
validation r the training kept, and for the head its validation loss per pooling length against the
no-context baseline. Writes OUT/summary.json and prints a table. A feature whose data cannot be built
for the model (e.g. German articles that are not single tokens of a tiny test model) is reported as
skipped with the reason.
"""

import argparse
import json
import logging
from pathlib import Path

import gradedit as ge
from gradedit.data import features

LANG = {"en-pronouns": "en", "de-articles": "de"}


def run(lm, data, neutral, classes, out: Path, args, head: bool) -> dict:
    config = ge.TrainConfig(experiment_dir=str(out), source=args.source, max_steps=args.steps, eval_steps=args.eval_steps,
                            pre_prune_topk=args.pre_prune, pre_prune_samples=16, eval_max_size=64,
                            mlm_head=head, mlm_head_pooling=args.pooling, seed=args.seed,
                            post_prune_topk=args.post_prune)
    trainer = ge.Trainer(lm, data, classes, neutral=neutral, config=config)
    trainer.train()
    res = {"encoder_test": trainer.encoder_summary("test"), "train": trainer.seed_results[0].to_dict(),
           "post_prune": trainer.feature_model.metadata.get("post_prune")}
    if head:
        info = trainer.get_model().mlm_head.info
        res["head"] = {k: info[k] for k in ("pooling_length", "val_loss", "baseline_loss", "train_rows", "val_rows")}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="gemma3-270m", help="a causal LM (zoo name, folder or hub id)")
    ap.add_argument("--features", nargs="+", default=["en-pronouns", "de-articles:masc_nom-fem_nom"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-steps", type=int, default=10)
    ap.add_argument("--source", default="diff", choices=["factual", "alternative", "diff"])
    ap.add_argument("--pre-prune", type=float, default=0.01, help="pre-pruning fraction of the input space")
    ap.add_argument("--post-prune", type=lambda v: None if v == "none" else float(v), default=None,
                    help="post-pruning fraction of the kept model ('none', the default here: the encoder is compared "
                         "as trained; pruning by decoder weight can remove the encoder's evidence, see "
                         "gradiend/train/postprune.py)")
    ap.add_argument("--pooling", type=int, nargs="+", default=[1, 2, 3, 4, 6], help="head pooling lengths to try")
    ap.add_argument("--max-per-class", type=int, default=None, help="cap on rows per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    lm = ge.load_model(args.model)
    summary: dict = {"model": args.model, "args": {k: str(v) for k, v in vars(args).items()}, "features": {}}
    for name in args.features:
        base = name.split(":")[0]
        try:
            data = features.build(name, lm, max_size_per_class=args.max_per_class)
        except (ValueError, ge.errors.GradeditError) as err:  # DataError/TokenError are ValueErrors
            summary["features"][name] = {"skipped": f"{type(err).__name__}: {err}"}
            print(f"{name}: skipped ({type(err).__name__}: {str(err).splitlines()[0]})")
            continue
        classes = sorted(set(data.to_frame()["factual_class"]))[:2] if data.target_classes is None \
            else list(data.target_classes)
        neutral = features.neutral(LANG.get(base, "en"), n=200)
        slug = name.replace(":", "_")
        summary["features"][name] = {
            "classes": classes, "rows": len(data),
            "plain": run(lm, data, neutral, classes, args.out / slug / "plain", args, head=False),
            "head": run(lm, data, neutral, classes, args.out / slug / "head", args, head=True)}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    print(f"\n{'feature':34} {'run':6} {'test r':>7} {'test acc':>8} {'val r':>7}  head (L, val loss / no-context)")
    for name, res in summary["features"].items():
        if "skipped" in res:
            continue
        for run_name in ("plain", "head"):
            r = res[run_name]
            enc, tr = r["encoder_test"], r["train"]
            extra = ""
            if "head" in r:
                h = r["head"]
                extra = f"L={h['pooling_length']}, {h['val_loss'][str(h['pooling_length'])]:.3f} / {h['baseline_loss']:.3f}"
            print(f"{name:34} {run_name:6} {enc['correlation']:+7.3f} {enc['accuracy']:8.3f} {tr['correlation']:+7.3f}  {extra}")
    print(f"\nwritten: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
