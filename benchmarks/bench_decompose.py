"""Seconds per training step of a decomposition preset (and the one-off costs around it).

    OMP_NUM_THREADS=2 python benchmarks/bench_decompose.py gemma3-270m --steps 20
    python benchmarks/bench_decompose.py tiny --steps 50

Runs the preset for ``--steps`` steps (no checkpoints, nothing saved) and prints: wall time of the
whole call, training seconds, seconds per step, the number of cached layer-input rows, and the
projected training time of the preset's full step count.
"""

import argparse
import time

import torch

from gradedit.decompose.presets import PRESETS, run_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    full = int(PRESETS[args.preset].options.get("steps", 2000))
    t0 = time.perf_counter()
    dec = run_preset(args.preset, None, steps=args.steps, checkpoint_every=0)
    wall = time.perf_counter() - t0
    per = dec.meta["seconds"] / max(dec.meta["steps_done"], 1)
    print(f"{args.preset}: {torch.get_num_threads()} threads, {args.steps} steps in {dec.meta['seconds']:.1f} s "
          f"({per:.3f} s/step), whole call {wall:.0f} s (model load, text, activation cache, statistics)")
    print(f"projected training time of the preset's {full} steps: {per * full / 60:.1f} min")


if __name__ == "__main__":
    main()
