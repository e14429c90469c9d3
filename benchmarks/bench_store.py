"""GRADIEND training from the gradient store vs live gradients, side by side in one run (issue 16.1).

The base model never changes while GRADIEND trains, so each training row's (pre-pruned) gradient
is a constant. ``TrainConfig(gradient_store="fp32"|"bf16")`` extracts them once and reads them back
every epoch; ``"off"`` (live) recomputes them at every step. This script trains the same feature
model three times in one process — live, fp32 store, bf16 store — and times each epoch:

    .venv/bin/python benchmarks/bench_store.py --model tiny-llama            # smoke test, ~1 min
    .venv/bin/python benchmarks/bench_store.py --model smollm2-135m --prune 0.01 --epochs 3 --tag s1

Epoch 1 of a store run includes the extraction (and hashing the base model's weights for the
store key); epoch e ends at the optimiser update that completes e x (training rows / batch)
examples. Times are wall clock between torch optimiser-step hooks, so the trainers are not touched.
Pre-pruning is computed once beforehand and copied into every run, so no run pays for it;
validation runs only after the last step (outside every epoch). The fp32 run must give the live
run's model bit for bit; the script checks that and prints the bf16 difference.

``--gradiend-steps N`` adds the reference package to the same run: gradiend 0.2.3 (its own venv, as in
bench_train.py) trains on the same rows, source/target and pre-pruning fraction, one row per step, for
2 + N steps; its time to the model ours reaches (epochs x training rows steps) is its measured time to
the first step (load, pre-pruning) + steps x its median step — extrapolated, since gradiend recomputes
every row's gradients at every step, so its step cost does not change from epoch to epoch. Ours is
measured: pre-pruning + the whole store run (extraction included). Use ``--batch 1 --source alternative``
to match gradiend's setting (bench_train.py's).
Results: a markdown table on stdout and JSON in ``benchmarks/out/bench_store_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CLASSES = ("masc", "fem")
MODES = ("off", "fp32", "bf16")


def train_once(lm, data, cfg, n_train: int, epochs: int) -> dict:
    """Train with ``cfg``; per-epoch wall times from torch's optimiser-step hook."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from gradedit.gradiend.train import Trainer

    stamps: list[float] = []
    handle = register_optimizer_step_post_hook(lambda *a: stamps.append(time.perf_counter()))
    try:
        t0 = time.perf_counter()
        trainer = Trainer(lm, data, CLASSES, config=cfg)
        trainer.train()
        total = time.perf_counter() - t0
    finally:
        handle.remove()
    per_epoch = n_train / cfg.train_batch_size
    ends = [min(len(stamps), math.ceil(e * per_epoch)) for e in range(1, epochs + 1)]
    marks = [t0] + [stamps[k - 1] for k in ends]
    run = json.loads((Path(cfg.experiment_dir) / "run.json").read_text())
    store = run.get("gradient_store") or {}
    return {"mode": cfg.gradient_store, "epoch_s": [b - a for a, b in zip(marks, marks[1:])], "steps": len(stamps),
            "steps_per_epoch": per_epoch, "total_s": total, "store_s": store.get("seconds"),
            "store_bytes": store.get("disk_bytes"), "input_dim": run["input_dim"],
            "torch_threads": torch.get_num_threads()}


def compare_models(a_dir: Path, b_dir: Path) -> dict:
    """Bit equality and relative L2 difference of the seed-0 models after the last step."""
    from gradedit.gradiend.feature_model import FeatureModel

    a = FeatureModel.from_pretrained(a_dir / "seed_0" / "last")
    b = FeatureModel.from_pretrained(b_dir / "seed_0" / "last")
    out = {}
    for name in ("encoder_weight", "decoder_weight", "decoder_bias"):
        x, y = getattr(a, name).detach(), getattr(b, name).detach()
        out[name] = {"equal": bool(x.shape == y.shape and (x == y).all()),
                     "rel_l2": float((x - y).norm() / x.norm()) if x.shape == y.shape else None}
    return out


def table(results: dict[str, dict]) -> str:
    live = results["off"]
    rows = ["| mode | store extract s | epoch 1 s | later epochs s (mean) | later ÷ own epoch 1 | "
            "epoch 1 ÷ live | later ÷ live later | store on disk |", "|---|---|---|---|---|---|---|---|"]
    for mode, r in results.items():
        first, later = r["epoch_s"][0], r["epoch_s"][1:]
        mean_later = sum(later) / len(later) if later else float("nan")
        live_later = sum(live["epoch_s"][1:]) / max(1, len(live["epoch_s"]) - 1)
        disk = "—" if not r["store_bytes"] else f"{r['store_bytes'] / 2**20:.1f} MiB"
        extract = "—" if r["store_s"] is None else f"{r['store_s']:.2f}"
        rows.append(f"| {'live' if mode == 'off' else mode} | {extract} | {first:.2f} | {mean_later:.3f} | "
                    f"{mean_later / first:.3f} | {first / live['epoch_s'][0]:.2f} | {mean_later / live_later:.3f} | "
                    f"{disk} |")
    return "\n".join(rows)


def gradiend_time_to_model(args: argparse.Namespace, n_steps_model: int) -> dict:
    """gradiend's measured step time on the same rows, extrapolated to ``n_steps_model`` steps."""
    import sys

    import gradedit as ge

    sys.path.insert(0, str(HERE))
    import bench_train as bt

    model_dir = Path(ge.zoo.prepare(args.model))
    ds, neutral, _ = bt.build_data(args.max_per_class, 200)
    paths = bt.export_data(ds, neutral, OUT / "data_store")
    params_json, _, _ = bt.input_space(model_dir, OUT / "data_store")
    ns = argparse.Namespace(tag=f"store_{args.tag}", steps=args.gradiend_steps, gradiend_unpruned_steps=None,
                            source=args.source, target=args.target, warmup=2, pre_prune_samples=args.pre_prune_samples,
                            lr=1e-5, weight_decay=0.01, eval_max=args.eval_max, threads=args.threads, ours_config="{}")
    r = bt.run_side("gradiend", args.prune or None, 0, ns, model_dir, paths, params_json)
    if r.get("failed"):
        return r
    return {**r, "steps_to_model": n_steps_model,
            "time_to_model_s": r["to_first_step_s"] + n_steps_model * r["step_median_s"], "extrapolated": True}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny-llama", help="zoo model name (the lead runs smollm2-135m)")
    p.add_argument("--prune", type=float, default=0.01, help="pre-pruning fraction; 0 = unpruned")
    p.add_argument("--max-per-class", type=int, default=200, help="en-pronouns rows per class")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="train_batch_size")
    p.add_argument("--source", default="diff")
    p.add_argument("--target", default="diff")
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--eval-max", type=int, default=8, help="validation rows (one evaluation, after the last step)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gradiend-steps", type=int, default=0,
                   help="also time gradiend 0.2.3 for 2 + N steps and extrapolate its time to the same model (0: off)")
    p.add_argument("--keep", action="store_true", help="keep the run folders (stores can be large)")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("gradedit.gradiend.store").setLevel(logging.INFO)  # disk estimate, extraction time
    torch.set_num_threads(args.threads)
    import gradedit as ge
    from gradedit.data import features
    from gradedit.gradiend.train import TrainConfig, Trainer

    lm = ge.load_model(args.model)
    data = features.build("en-pronouns", None, max_size_per_class=args.max_per_class)
    n_train = int((data.with_targets(list(CLASSES)).split("train").to_frame()["label"] != 0).sum())
    root = OUT / "store_runs" / (args.tag or "default")
    shutil.rmtree(root, ignore_errors=True)
    max_steps = math.ceil(args.epochs * n_train / args.batch)
    base = dict(max_steps=max_steps, eval_steps=max_steps, eval_max_size=args.eval_max, train_batch_size=args.batch,
                source=args.source, target=args.target, pre_prune_topk=args.prune or None,
                pre_prune_samples=args.pre_prune_samples, early_stopping_patience=None, post_prune_topk=None)
    print(f"{args.model}: {n_train} training rows, batch {args.batch}, {args.epochs} epochs = {max_steps} steps, "
          f"pre-prune {args.prune or 'none'}, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}", flush=True)
    prep_s = 0.0
    if args.prune:  # pre-prune once (one step of training), then hand the cached map to every run
        prep = TrainConfig(experiment_dir=str(root / "prep"), **{**base, "max_steps": 1, "eval_steps": 1})
        t = time.perf_counter()
        Trainer(lm, data, CLASSES, config=prep).train()
        prep_s = time.perf_counter() - t
        print(f"pre-pruning (once, not timed below): {prep_s:.1f} s", flush=True)
    results: dict[str, dict] = {}
    for mode in MODES:
        folder = root / mode
        if args.prune:
            shutil.copytree(root / "prep" / "pre_prune", folder / "pre_prune")
        cfg = TrainConfig(experiment_dir=str(folder), gradient_store=mode, **base)
        load = os.getloadavg()[0]
        results[mode] = {**train_once(lm, data, cfg, n_train, args.epochs), "load_before": load}
        r = results[mode]
        print(f"  {mode}: epochs {[round(x, 2) for x in r['epoch_s']]} s, store {r['store_s']} s, "
              f"total {r['total_s']:.1f} s (load {load:.1f})", flush=True)
    checks = {m: compare_models(root / "off", root / m) for m in ("fp32", "bf16")}
    bitwise = all(v["equal"] for v in checks["fp32"].values())
    print()
    print(table(results))
    print(f"\nfp32 store model == live model bit for bit: {bitwise}")
    print("bf16 vs live, relative L2: " + ", ".join(f"{k} {v['rel_l2']:.2e}" for k, v in checks["bf16"].items()))
    summary = {"model": args.model, "args": vars(args), "n_train": n_train, "results": results, "checks": checks,
               "fp32_bit_identical": bitwise, "torch": torch.__version__, "pre_prune_s": prep_s}
    if args.gradiend_steps:
        try:  # our numbers are kept whatever happens on the other side
            g = gradiend_time_to_model(args, max_steps)
        except Exception as err:  # noqa: BLE001 - reported in the JSON
            g = {"failed": True, "error": repr(err)}
            print(f"gradiend side failed: {err!r}", flush=True)
        summary["gradiend"] = g
        if not g.get("failed"):
            lines = ["| side | time to the model s | how | ×ours (store fp32) |", "|---|---|---|---|"]
            ours = {m: prep_s + results[m]["total_s"] for m in MODES}
            for m in MODES:
                lines.append(f"| gradedit {'live' if m == 'off' else 'store ' + m} | {ours[m]:.1f} | measured: "
                             f"pre-pruning + train() | {ours[m] / ours['fp32']:.2f} |")
            lines.append(f"| gradiend 0.2.3 | {g['time_to_model_s']:.1f} | to first step {g['to_first_step_s']:.1f} s + "
                         f"{max_steps} x median step {g['step_median_s']:.3f} s (extrapolated) | "
                         f"{g['time_to_model_s'] / ours['fp32']:.2f} |")
            summary["time_to_model_table"] = "\n".join(lines)
            print("\n" + summary["time_to_model_table"])
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"bench_store{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
