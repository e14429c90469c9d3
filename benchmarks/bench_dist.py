"""Gradient-store extraction in 1 vs 2 processes (issue 17): wall time, speed-up, same bits.

Each configuration ``PxT`` (P processes with T torch threads each) runs in fresh processes started
by ``torchrun --standalone`` — the launcher users use — and extracts the same store (the
en-pronouns training rows, a fixed every-k-th-entry selection of the transformer weights, fp32):

    .venv/bin/python benchmarks/bench_dist.py                                   # tiny-llama, ~2 min
    .venv/bin/python benchmarks/bench_dist.py --model smollm2-135m --rows 400 --tag s1

Timed per configuration (rank 0, between barriers): model load (per process, in parallel) and the
extraction itself. The speed-up is ``1x1 extraction ÷ PxT extraction``; efficiency is speed-up ÷
cores used. Every store is compared with the 1x1 store tensor by tensor: at equal threads per
process the bits must be equal (the script says so); 1x2 may differ in the last bits.
Results: a markdown table on stdout and JSON in ``benchmarks/out/bench_dist_<tag>.json``.
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
CLASSES = ("masc", "fem")


def worker(args: argparse.Namespace) -> None:
    """One rank: load, build rows, extract into ``args.store``; rank 0 writes the timings."""
    import torch

    torch.set_num_threads(args.threads)
    from gradedit import dist

    t_start = time.perf_counter()
    dist.init()
    import gradedit as ge
    from gradedit.data import features
    from gradedit.gradiend.gradients import GradientEngine
    from gradedit.gradiend.rows import rows_of
    from gradedit.gradiend.store import extract_store, store_key
    from gradedit.models.param_map import ParamMap

    lm = ge.load_model(args.model)
    data = features.build("en-pronouns", None, max_size_per_class=args.rows).with_targets(list(CLASSES))
    rows = rows_of(data.split("train"), lm)
    engine = GradientEngine(lm)
    full = ParamMap.from_params(engine.params)
    pmap = full.select(torch.arange(0, full.size, max(1, round(1 / args.keep))))
    key = store_key(engine, rows, pmap, classes=CLASSES, split="train", source="diff", target="diff", dtype="fp32")
    dist.barrier()
    t_ready = time.perf_counter()
    with extract_store(args.store, engine, rows, pmap, key) as store:
        n_shards = len(store.index.shards)
    dist.barrier()
    t_done = time.perf_counter()
    if dist.is_main():
        Path(args.result).write_text(json.dumps({
            "setup_s": t_ready - t_start, "extract_s": t_done - t_ready, "rows": len(rows), "entries": pmap.size,
            "shards": n_shards, "world": dist.world_size(), "threads": torch.get_num_threads()}))


def same_bits(a: Path, b: Path) -> bool:
    """Every row of every kind in store ``a`` equals store ``b``'s, bit for bit."""
    import torch

    from gradedit.gradiend.store import GradientStore

    with GradientStore.open(a) as x, GradientStore.open(b) as y:
        if x.key != y.key:
            return False
        n = range(len(x))
        return all(torch.equal(x.rows(k, n).view(torch.int32), y.rows(k, n).view(torch.int32)) for k in x.key.kinds)


def run_config(procs: int, threads: int, args: argparse.Namespace, root: Path) -> dict:
    store, result = root / f"store_{procs}x{threads}", root / f"result_{procs}x{threads}.json"
    shutil.rmtree(store, ignore_errors=True)
    res = torchrun(__file__, procs, threads, ["--model", args.model, "--rows", str(args.rows), "--keep", str(args.keep),
                                              "--store", str(store)], result)
    print(f"  {procs}x{threads}: extraction {res['extract_s']:.2f} s, setup {res['setup_s']:.1f} s, "
          f"{res['shards']} shard(s) (load {res['load_before']:.1f})", flush=True)
    return res


def main() -> None:
    p = dist_parser(__doc__, "PxT: P processes with T threads each (1x2: one process, both cores)")
    p.add_argument("--rows", type=int, default=300, help="en-pronouns rows per class (80%% are training rows)")
    p.add_argument("--keep", type=float, default=0.01, help="share of weight entries stored (every k-th)")
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    root = OUT / "dist_runs" / (args.tag or "default")
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.model}: {args.rows} rows/class, keep {args.keep}, configs {args.configs}, {os.cpu_count()} cores",
          flush=True)
    results = []
    for procs, threads in dist_configs(args.configs):
        best = min((run_config(procs, threads, args, root) for _ in range(args.repeats)), key=lambda r: r["extract_s"])
        best["same_bits_as_1x1"] = same_bits(root / "store_1x1", root / f"store_{procs}x{threads}")
        results.append(best)
    base = results[0]["extract_s"]
    rows = [[f"{r['procs']}x{r['threads']}", r["rows"], f"{r['extract_s']:.2f}", f"{r['rows'] / r['extract_s']:.1f}",
             f"{base / r['extract_s']:.2f}", f"{base / r['extract_s'] / (r['procs'] * r['threads']):.2f}",
             f"{r['setup_s']:.1f}", r["same_bits_as_1x1"]] for r in results]
    table = md_table(["processes x threads", "rows", "extraction s", "rows/s", "speed-up vs 1x1", "efficiency",
                      "setup s (load, per process)", "same bits as 1x1"], rows)
    write_summary(OUT, "bench_dist", args.tag, {"model": args.model, "args": vars(args), "results": results,
                                                "cores": os.cpu_count()}, table)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
