"""Does the README's GRADIEND path reach x2 P(" she") on held-out masc prompts within +2 % held-out perplexity?

    OMP_NUM_THREADS=2 python examples/pronouns_readme_sweep.py runs/readme-defaults            # library defaults
    OMP_NUM_THREADS=2 python examples/pronouns_readme_sweep.py runs/readme-old --source factual --eval-steps 25 \
        --post-prune none --selectors lms                                     # the defaults before issue 13

Trains the README's ``Trainer`` on smollm2-135m / en-pronouns (pre-pruned 1 %, ``max_steps=100``, early
stopping on; ``--source``, ``--eval-steps``, ``--post-prune`` and ``--seed`` override the library's
``TrainConfig`` defaults), then for each selector (``default``: the library's) runs ``evaluate_decoder`` (selection: the ``val`` split and the first 64
neutral sentences) and measures on data the selection never saw: P(" she") on the test split's masc
prompts and perplexity on neutral sentences 64-191. Prints one JSON line per point and writes
``RUN_DIR/sweep.json``. The numbers in docs/results.md (issue 13, item 5) come from this script.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import gradedit as ge
from gradedit import metrics
from gradedit.data import features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--source", choices=["factual", "alternative", "diff"])
    ap.add_argument("--eval-steps", type=int)
    ap.add_argument("--post-prune", help="post_prune_topk, e.g. 0.05, or 'none'")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--selectors", nargs="+", default=["default"], help="selector names; 'default' = the library's")
    args = ap.parse_args()
    overrides: dict = {k: v for k, v in (("source", args.source), ("eval_steps", args.eval_steps),
                                         ("seed", args.seed)) if v is not None}
    if args.post_prune is not None:
        overrides["post_prune_topk"] = None if args.post_prune == "none" else float(args.post_prune)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run = Path(args.run_dir)
    lm = ge.load_model("smollm2-135m")
    data = features.build("en-pronouns", lm)
    neutral = features.neutral("en")
    t0 = time.time()
    trainer = ge.Trainer(lm, data, ["masc", "fem"], neutral=neutral,
                         config=ge.TrainConfig(experiment_dir=str(run), pre_prune_topk=0.01, max_steps=100,
                                               **overrides))
    trainer.train()
    train_s = time.time() - t0
    held_neutral = neutral[64:192]
    test = data.split("test")
    masc = [p for p, c in zip(test.prompts("clm"), test.to_frame()["factual_class"]) if c == "masc"]
    he, she = lm.token_id(" he"), lm.token_id(" she")

    def held() -> dict[str, float]:
        p = metrics.next_token_logprobs(lm, masc, [he, she]).exp()
        sc = metrics.lm_scores(lm, held_neutral)
        return {"p_she": float(p[:, 1].mean()), "p_he": float(p[:, 0].mean()), "ppl": sc["perplexity"]}

    base = held()
    print("base", json.dumps(base), flush=True)
    rows = []
    for sel in args.selectors:
        dec = trainer.evaluate_decoder(target_class="fem", selector=None if sel == "default" else sel)
        s = dec["fem"]
        cfg = trainer.config
        row = {"source": cfg.source, "eval_steps": cfg.eval_steps, "post_prune": cfg.post_prune_topk, "seed": cfg.seed,
               "selector": dec.info.get("selector", sel),
               "admissible": s.admissible, "feature_factor": s.feature_factor, "learning_rate": s.learning_rate,
               "selection_perplexity_change": s.perplexity / s.base_perplexity - 1}
        if s.admissible:
            with trainer.get_model().applied(s.learning_rate, s.feature_factor):
                h = held()
            row.update(heldout_p_she=h["p_she"], ratio=h["p_she"] / base["p_she"],
                       heldout_perplexity_change=h["ppl"] / base["ppl"] - 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    (run / "sweep.json").write_text(json.dumps({"base": base, "train_s": train_s, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
