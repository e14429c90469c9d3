"""Decompose the MLP gate/up projections of gemma3-270m layers 0 and 14-17 into rank-1 components.

    OMP_NUM_THREADS=2 python examples/decompose_gemma3.py runs/decomp-gemma3 [--steps N] [--set key=value ...]

Runs the ``gemma3-270m`` preset of :mod:`gradedit.decompose.presets` (``objective="layer"``, unlabelled
mixed Bible text of DE/EN/FR/ES/IT, sentences 100-399 of each language: never the last 32 sentences
nor German 65-88, which are evaluation/calibration text elsewhere). Resumable: run the same command
again after an interruption and it continues from the last checkpoint (every 100 steps); a finished
folder is loaded instead of retrained. Prints faithfulness, each layer's reconstruction error with
stochastic masks and with importance as mask, mean L0 per token, alive components and the wall time.
The same from the shell: ``gradedit decompose --preset gemma3-270m --out DIR``.
"""

import argparse
import logging
import time

import torch

from gradedit.decompose.presets import parse_sets, run_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    overrides = parse_sets(args.set)
    if args.steps:
        overrides["steps"] = args.steps
    t0 = time.perf_counter()
    dec = run_preset("gemma3-270m", args.out, **overrides)
    m = dec.metrics
    print(f"objective={dec.objective}  threads={torch.get_num_threads()}  training {dec.meta['seconds']:.0f} s "
          f"(this call {time.perf_counter() - t0:.0f} s)  steps {dec.meta['steps_done']}")
    print(f"faithfulness: relative {m['faithfulness_relative']:.3g}, per weight {m['faithfulness_mse']:.3g}")
    print(f"mean L0 per token (all layers): {m['mean_l0_per_token']:.1f}")
    print(f"{'module':34s} {'C':>5s} {'alive':>5s} {'L0':>7s} {'relMSE stoch':>12s} {'relMSE imp':>10s} {'relMSE VU':>9s}")
    for name, s in m["summary"].items():
        print(f"{name:34s} {s['C']:5d} {s['alive']:5d} {s['mean_l0']:7.1f} {s['rel_mse_stochastic']:12.4f} "
              f"{s['rel_mse_importance']:10.4f} {s['rel_mse_components']:9.5f}")
    out = m.get("output", {})
    if out:
        print(f"LM output KL (all layers masked at once, {int(out['rows'])} blocks): stochastic "
              f"{out['kl_stochastic']:.4f}, importance-as-mask {out['kl_importance']:.4f} nats/token")


if __name__ == "__main__":
    main()
