"""Redirect one context class to a target token with one rank-1 component (spd PR #462's emoticon -> 'o').

    # 1. the decomposition (once; resumable; estimated 8-17 min on 2 cores, see docs/redirect.md)
    OMP_NUM_THREADS=2 gradedit decompose --preset smollm2-135m-down --out runs/decomp-smollm2-down
    # 2. the study (estimated ~35 min on 2 cores)
    OMP_NUM_THREADS=2 python examples/redirect_study.py runs/demo-redirect --decomposition runs/decomp-smollm2-down
    # SVD components only (no decomposition), e.g. to try other layers first:
    python examples/redirect_study.py runs/redirect-svd --no-decomposition --modules model.layers.19.mlp.down_proj

Default class: semicolons in English Bible passages (sentences 400 to the 33rd-last, disjoint from the
decomposition's text; docs/redirect.md says why not emoticons or question marks); target: " o".
Writes RUN_DIR/report.html, points.json, summary.json, heatmaps.json and pareto.png, and prints one
line per method family.
"""

import argparse
import logging

from gradedit.demo.redirect import RedirectConfig, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--decomposition", default="runs/decomp-smollm2-down", help="folder written by gradedit decompose")
    ap.add_argument("--no-decomposition", action="store_true", help="SVD components of --modules only")
    ap.add_argument("--modules", nargs="*", help="module patterns (among the decomposed ones, or for SVD)")
    ap.add_argument("--context", default=";", help="regex of the context class, e.g. '\\?' (question marks)")
    ap.add_argument("--target", default=" o", help="the token to predict after it (one token)")
    ap.add_argument("--min-score", type=float, default=1.0, help="least selectivity (Cohen's d) to accept")
    ap.add_argument("--quick", action="store_true", help="small sets and sweeps (a few minutes)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    kw = {}
    if args.quick:
        kw = dict(eval_texts=32, selection_texts=32, unrelated_eval=32, alphas=(0.5, 1.0, 4.0), fit_sizes=(1, 16),
                  kl_weights=(1.0,), train_steps=20, lora_steps=20)
    cfg = RedirectConfig(model=args.model, out_dir=args.run_dir,
                         decomposition=None if args.no_decomposition else args.decomposition,
                         modules=tuple(args.modules) if args.modules else None, context=args.context,
                         target=args.target, min_score=args.min_score, **kw)
    res = run(cfg)
    print("\n".join(res.headline))


if __name__ == "__main__":
    main()
