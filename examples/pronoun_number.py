"""English 3SG vs 3PL (``en-pronouns-number``): GRADIEND encoder quality per model (issue 15.7).

    python examples/pronoun_number.py runs/pronoun_number                        # minilm-mlm, smollm2-135m, gemma3-270m
    python examples/pronoun_number.py /tmp/pn --models tiny-gpt2 --steps 10 --max-per-class 40   # a quick check

The GRADIEND package paper reports encoder r = 0.98 for he/she/it vs they on bert-base-cased. For each
model this trains one feature model (class ``sg`` = he/she/it -> they, ``pl`` = they -> he; same config
for all models) and reports the encoder on the HELD-OUT test split, which neither training nor the kept
step saw: Pearson r of encoding and label (+1 sg, -1 pl), sign accuracy, class means, rows — plus the
validation r training kept. ``minilm-mlm`` is a stand-in MLM (all-MiniLM-L6-v2 with an MLM head trained
offline; see docs/models.md), not bert-base-cased. Writes OUT/summary.json and prints a table.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import gradedit as ge
from gradedit._files import write_json_atomic
from gradedit.data import features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", nargs="+", default=["minilm-mlm", "smollm2-135m", "gemma3-270m"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pre-prune", type=float, default=0.01, help="pre-pruning fraction of the input space")
    ap.add_argument("--max-per-class", type=int, default=600, help="cap on rows per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    summary: dict = {"feature": "en-pronouns-number", "args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    neutral = features.neutral("en", n=200, seed=args.seed)
    for name in args.models:
        t0 = time.time()
        lm = ge.load_model(name)
        data = features.build("en-pronouns-number", lm, seed=args.seed, max_size_per_class=args.max_per_class)
        config = ge.TrainConfig(experiment_dir=str(args.out / name), max_steps=args.steps, pre_prune_topk=args.pre_prune,
                                pre_prune_samples=16, seed=args.seed)
        trainer = ge.Trainer(lm, data, ["sg", "pl"], neutral=neutral, config=config)
        trainer.train()
        seed = trainer.seed_results[0]
        summary["models"][name] = {"kind": lm.kind, "rows": {s: len(data.split(s)) for s in ("train", "val", "test")},
                                   "test": trainer.encoder_summary("test"), "kept_step": seed.best_step,
                                   "val_r": seed.correlation, "seconds": round(time.time() - t0, 1)}
        write_json_atomic(args.out / "summary.json", json.loads(json.dumps(summary, default=str)))
        del lm, trainer

    print("\nen-pronouns-number (sg = he/she/it, pl = they): encoder on the held-out test split")
    print(f"{'model':14} {'kind':5} {'test rows':>9} {'test r':>7} {'acc':>6} {'mean sg':>8} {'mean pl':>8} {'val r':>7} {'kept':>5}")
    for name, m in summary["models"].items():
        t = m["test"]
        print(f"{name:14} {m['kind']:5} {t['n']:9d} {t['correlation']:+7.3f} {t['accuracy']:6.3f} "
              f"{t['class_means']['sg']:+8.3f} {t['class_means']['pl']:+8.3f} {m['val_r']:+7.3f} {m['kept_step']:5d}")
    print(f"\nwritten: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
