"""GRADIEND training (``Trainer.train``) in 1 vs 2 processes (issue 17): wall time, speed-up, same model.

Each configuration ``PxT`` (P processes with T torch threads each) runs in fresh processes started by
``torchrun --standalone`` and trains the same feature model (en-pronouns, live gradients, pre-pruned,
one seed, no early stopping):

    .venv/bin/python benchmarks/bench_dist_train.py                       # tiny-llama, ~2 min
    .venv/bin/python benchmarks/bench_dist_train.py --model smollm2-135m --steps 20 --tag s1

Timed on rank 0 between barriers: model load + rows (per process, in parallel) and ``train()``
(pre-pruning, training steps, validations, checkpoints). The speed-up is ``1x1 train ÷ PxT train``.
Every trained model is compared with the 1x1 model (largest absolute difference of any tensor).
Results: a markdown table on stdout and JSON in ``benchmarks/out/bench_dist_train_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import dist_configs, dist_parser, md_table, torchrun, write_summary  # noqa: E402

OUT = HERE / "out"
CLASSES = ["masc", "fem"]


def worker(args: argparse.Namespace) -> None:
    """One rank: load, train into ``args.run_dir``; rank 0 writes the timings."""
    import torch

    torch.set_num_threads(args.threads)
    from gradedit import dist

    t_start = time.perf_counter()
    dist.init()
    import gradedit as ge
    from gradedit.data import features
    from gradedit.gradiend.train import TrainConfig, Trainer

    lm = ge.load_model(args.model)
    data = features.build("en-pronouns", None, max_size_per_class=args.rows)
    cfg = TrainConfig(experiment_dir=args.run_dir, max_steps=args.steps, eval_steps=args.eval_steps,
                      train_batch_size=args.batch, pre_prune_topk=args.keep, pre_prune_samples=args.prune_rows,
                      eval_max_size=args.val, early_stopping_patience=None, resume=False)
    trainer = Trainer(lm, data, CLASSES, config=cfg)
    dist.barrier()
    t_ready = time.perf_counter()
    fm = trainer.train()
    dist.barrier()
    t_done = time.perf_counter()
    if dist.is_main():
        res = trainer.seed_results[0]
        Path(args.result).write_text(json.dumps({
            "setup_s": t_ready - t_start, "train_s": t_done - t_ready, "steps": args.steps, "batch": args.batch,
            "entries": fm.input_dim, "world": dist.world_size(), "threads": torch.get_num_threads(),
            "best_step": res.best_step, "correlation": res.correlation}))


def max_diff(a: Path, b: Path) -> float:
    """Largest absolute difference between the tensors of two saved feature models."""
    from gradedit.gradiend.feature_model import FeatureModel

    x, y = FeatureModel.from_pretrained(a), FeatureModel.from_pretrained(b)
    if x.param_map != y.param_map:
        return float("inf")
    return max(float((p - q).detach().abs().max()) for p, q in zip(x.parameters(), y.parameters()))


def run_config(procs: int, threads: int, args: argparse.Namespace, root: Path) -> dict:
    run, result = root / f"run_{procs}x{threads}", root / f"result_{procs}x{threads}.json"
    shutil.rmtree(run, ignore_errors=True)
    res = torchrun(__file__, procs, threads, [
        "--model", args.model, "--rows", str(args.rows), "--keep", str(args.keep), "--steps", str(args.steps),
        "--eval-steps", str(args.eval_steps), "--batch", str(args.batch), "--prune-rows", str(args.prune_rows),
        "--val", str(args.val), "--run-dir", str(run)], result)
    print(f"  {procs}x{threads}: train {res['train_s']:.2f} s, setup {res['setup_s']:.1f} s "
          f"(load {res['load_before']:.1f})", flush=True)
    return res


def main() -> None:
    p = dist_parser(__doc__, "PxT: P processes with T threads each")
    p.add_argument("--rows", type=int, default=300, help="en-pronouns rows per class")
    p.add_argument("--keep", type=float, default=0.01, help="pre-pruning: share of the selected entries kept")
    p.add_argument("--prune-rows", type=int, default=32, help="rows ranking the entries for pre-pruning")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="gradient examples per step (split over the ranks)")
    p.add_argument("--val", type=int, default=64, help="validation rows per evaluation")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    root = OUT / "dist_train_runs" / (args.tag or "default")
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.model}: {args.steps} steps x {args.batch} examples, keep {args.keep}, configs {args.configs}, "
          f"{os.cpu_count()} cores", flush=True)
    results = []
    for procs, threads in dist_configs(args.configs):
        runs = [run_config(procs, threads, args, root) for _ in range(args.repeats)]
        best = {**min(runs, key=lambda r: r["train_s"]), "all_train_s": [round(r["train_s"], 2) for r in runs]}
        best["max_abs_diff_vs_1x1"] = max_diff(root / "run_1x1" / "model", root / f"run_{procs}x{threads}" / "model")
        results.append(best)
    base = results[0]["train_s"]
    rows = [[f"{r['procs']}x{r['threads']}", f"{r['steps']}x{r['batch']}", f"{r['train_s']:.2f}",
             f"{r['train_s'] / r['steps']:.3f}", f"{base / r['train_s']:.2f}",
             f"{base / r['train_s'] / (r['procs'] * r['threads']):.2f}", f"{r['setup_s']:.1f}", r["best_step"],
             f"{r['max_abs_diff_vs_1x1']:.1e}", ", ".join(f"{t:.2f}" for t in r["all_train_s"])] for r in results]
    table = md_table(["processes x threads", "steps x batch", "train s", "s/step", "speed-up vs 1x1", "efficiency",
                      "setup s (per process)", "kept step", "max abs diff vs 1x1", "all runs s"], rows)
    write_summary(OUT, "bench_dist_train", args.tag, {"model": args.model, "args": vars(args), "results": results,
                                                      "cores": os.cpu_count()}, table)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
