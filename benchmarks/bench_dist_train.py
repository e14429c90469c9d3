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
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--worker", "--model", args.model, "--rows", str(args.rows), "--keep", str(args.keep),
           "--steps", str(args.steps), "--eval-steps", str(args.eval_steps), "--batch", str(args.batch),
           "--prune-rows", str(args.prune_rows), "--val", str(args.val), "--threads", str(threads),
           "--run-dir", str(run), "--result", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GRADEDIT_NO_PROGRESS": "1", "GRADEDIT_DIST_BACKEND": "gloo"}
    load = os.getloadavg()[0]
    subprocess.run(cmd, check=True, env=env)
    res = {**json.loads(result.read_text()), "procs": procs, "load_before": load}
    print(f"  {procs}x{threads}: train {res['train_s']:.2f} s, setup {res['setup_s']:.1f} s (load {load:.1f})",
          flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny-llama", help="zoo model name (the lead runs smollm2-135m)")
    p.add_argument("--rows", type=int, default=300, help="en-pronouns rows per class")
    p.add_argument("--keep", type=float, default=0.01, help="pre-pruning: share of the selected entries kept")
    p.add_argument("--prune-rows", type=int, default=32, help="rows ranking the entries for pre-pruning")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="gradient examples per step (split over the ranks)")
    p.add_argument("--val", type=int, default=64, help="validation rows per evaluation")
    p.add_argument("--configs", default="1x1,2x1", help="PxT: P processes with T threads each")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration (the fastest is kept)")
    p.add_argument("--tag", default="")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    if configs[0] != (1, 1):
        configs.insert(0, (1, 1))
    root = OUT / "dist_train_runs" / (args.tag or "default")
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.model}: {args.steps} steps x {args.batch} examples, keep {args.keep}, configs {args.configs}, "
          f"{os.cpu_count()} cores", flush=True)
    results = []
    for procs, threads in configs:
        runs = [run_config(procs, threads, args, root) for _ in range(args.repeats)]
        best = {**min(runs, key=lambda r: r["train_s"]), "all_train_s": [round(r["train_s"], 2) for r in runs]}
        best["max_abs_diff_vs_1x1"] = max_diff(root / "run_1x1" / "model", root / f"run_{procs}x{threads}" / "model")
        results.append(best)
    base = results[0]["train_s"]
    lines = ["| processes x threads | steps x batch | train s | s/step | speed-up vs 1x1 | efficiency | setup s "
             "(per process) | kept step | max abs diff vs 1x1 | all runs s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cores = r["procs"] * r["threads"]
        lines.append(f"| {r['procs']}x{r['threads']} | {r['steps']}x{r['batch']} | {r['train_s']:.2f} | "
                     f"{r['train_s'] / r['steps']:.3f} | {base / r['train_s']:.2f} | {base / r['train_s'] / cores:.2f} | "
                     f"{r['setup_s']:.1f} | {r['best_step']} | {r['max_abs_diff_vs_1x1']:.1e} | "
                     f"{', '.join(f'{t:.2f}' for t in r['all_train_s'])} |")
    print("\n" + "\n".join(lines))
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"bench_dist_train{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps({"model": args.model, "args": vars(args), "results": results, "cores": os.cpu_count(),
                               "torch": torch.__version__}, indent=2) + "\n")
    print(f"wrote {out}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
