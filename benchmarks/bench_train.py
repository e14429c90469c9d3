"""GRADIEND training cost: our trainer vs the reference ``gradiend`` package, same model, same data.

For each configuration (unpruned, pre-pruned to a fraction of the input space) this runs one
process per side, back to back, and reads per-step wall time and the process's peak RSS:

    .venv/bin/python benchmarks/bench_train.py                  # full run (gradiend unpruned is slow)
    .venv/bin/python benchmarks/bench_train.py --prune 0.01     # only the pre-pruned configuration
    .venv/bin/python benchmarks/bench_train.py --steps 3 --warmup 1 --sides gradedit   # smoke test

Both sides train on the same rows (the built-in ``en-pronouns`` feature, he/she from the English
Bibles, written to CSV in each side's format), on the same plain HF folder of ``smollm2-135m``,
with the same input space (every transformer-block weight matrix), source/target, batch of one
example of one row per step, learning rate, AdamW weight decay, seed, pre-pruning fraction and
pre-pruning sample count. A step is timed from
one optimiser update to the next (see ``_measure.py``); warm-up steps, model loading, pre-pruning
and evaluation are outside the timed window and reported separately.

The gradiend side runs in its own venv (``benchmarks/.venv-gradiend``, see docs/benchmarks.md).
Results: a markdown table on stdout and JSON in ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
GRADIEND_PY = HERE / ".venv-gradiend" / "bin" / "python"
OURS_PY = Path(sys.executable)
CLASSES = ("masc", "fem")


# -------------------------------------------------------------------------------------------------
# data: one PairDataset, exported for both sides
# -------------------------------------------------------------------------------------------------
def _template_dataset(n_per_class: int):  # fallback when gradedit.data.features is not there
    from gradedit.data.schema import PairDataset

    subjects = ["doctor", "teacher", "nurse", "driver", "farmer", "lawyer", "baker", "pilot", "writer", "singer",
                "manager", "cook", "student", "painter", "officer", "clerk", "judge", "priest", "guard", "child"]
    rests = ["said that [MASK] would be late.", "told me [MASK] was tired.", "knew that [MASK] had won.",
             "thought [MASK] could help.", "said [MASK] liked the town.", "wrote that [MASK] was home.",
             "hoped [MASK] would stay.", "felt that [MASK] was right.", "said [MASK] saw the king.",
             "called because [MASK] was lost."]
    records = []
    for i in range(n_per_class):
        text = f"The {subjects[i % len(subjects)]} {rests[(i // len(subjects)) % len(rests)]}"
        for f, a, fc, ac in ((" he", " she", "masc", "fem"), (" she", " he", "fem", "masc")):
            records.append({"text": text, "factual": f, "alternative": a, "factual_class": fc,
                            "alternative_class": ac})
    return PairDataset.from_records(records, target_classes=list(CLASSES))


def build_data(max_per_class: int, n_neutral: int) -> tuple[object, list[str], str]:
    try:
        from gradedit.data import features
    except ImportError:
        features = None
    if features is not None and hasattr(features, "build"):
        ds = features.build("en-pronouns", None, max_size_per_class=max_per_class)
        neutral = features.neutral("en", n=n_neutral)
        return ds, neutral, f"gradedit.data.features.build('en-pronouns', max_size_per_class={max_per_class})"
    ds = _template_dataset(max_per_class)
    neutral = ["The river runs to the sea.", "The market opens at nine.", "Rain fell on the old town."] * 10
    return ds, neutral[:n_neutral], "templates in bench_train.py (features.build not available)"


def export_data(ds, neutral: list[str], folder: Path) -> dict[str, Path]:
    """Our PairDataset CSV, gradiend's merged-format CSV and a neutral CSV.

    gradiend reads a causal LM's context as the text before the placeholder and looks the label up
    as one token. Writing the placeholder without the space before it (``"... and[MASK] will"``) and
    the label with its leading space (``" he"``) makes it score the same next token after the same
    context as we do (``P(" he" | "... and")``), instead of ``"he"`` after a lone space token.
    """
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"pairs": folder / "pairs.csv", "gradiend": folder / "gradiend_train.csv",
             "neutral": folder / "gradiend_neutral.csv"}
    ds.save(paths["pairs"])
    df = ds.to_frame()
    df = df[df["factual_class"].isin(CLASSES) & df["alternative_class"].isin(CLASSES)]
    left_right = df["text"].str.split(r"\[MASK\]", n=1, regex=True, expand=True)
    gd = pd.DataFrame({
        "masked": left_right[0].str.rstrip() + "[MASK]" + left_right[1],
        "label": df["factual"],
        "label_class": df["factual_class"],
        "alternative": df["alternative"],
        "alternative_class": df["alternative_class"],
        "split": df["split"].map({"train": "train", "val": "validation", "test": "test"}),
    })
    gd.to_csv(paths["gradiend"], index=False)
    pd.DataFrame({"text": neutral}).to_csv(paths["neutral"], index=False)
    return paths


def input_space(model_dir: Path, folder: Path) -> tuple[Path, int, int]:
    """Names of our default input space (transformer-block weight matrices), from a meta-device model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gradedit.models import select_parameters

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    chosen = select_parameters(model)
    path = folder / "params.json"
    path.write_text(json.dumps(list(chosen)))
    n_entries = sum(p.numel() for p in chosen.values())
    n_all = sum(p.numel() for p in model.parameters())
    return path, n_entries, n_all


# -------------------------------------------------------------------------------------------------
# runs
# -------------------------------------------------------------------------------------------------
def launch(cmd: list[str], tag: str, runs: Path, out_json: Path, threads: int) -> tuple[dict | None, Path, float]:
    """Run one side's process with ``threads`` OpenMP threads, its output in ``runs/<tag>.log``.

    Returns (its JSON result with ``load_before``/``log`` added, or None when it failed; the log; start time).
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", GRADEDIT_NO_PROGRESS="1", TQDM_DISABLE="1")
    load = os.getloadavg()
    print(f"[{time.strftime('%H:%M:%S')}] {tag}: load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    log = runs / f"{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        print(f"  FAILED ({proc.returncode}) after {time.time() - t0:.0f} s; log {log}:\n{tail}", flush=True)
        return None, log, t0
    res = json.loads(out_json.read_text())
    res.update(load_before=load, log=str(log))
    return res, log, t0


def run_side(side: str, prune: float | None, rep: int, args: argparse.Namespace, model_dir: Path,
             paths: dict[str, Path], params_json: Path) -> dict:
    tag = f"{side}_{'unpruned' if prune is None else f'prune{prune:g}'}_r{rep}"
    runs = OUT / "runs" / (args.tag or "default")
    out_json = runs / f"{tag}.json"
    steps = args.steps
    if side == "gradiend" and prune is None and args.gradiend_unpruned_steps is not None:
        steps = args.gradiend_unpruned_steps
    common = ["--model", str(model_dir), "--params-json", str(params_json), "--out", str(out_json),
              "--experiment-dir", str(OUT / "exp" / tag), "--source", args.source, "--target", args.target,
              "--warmup", str(args.warmup), "--steps", str(steps), "--pre-prune-samples", str(args.pre_prune_samples),
              "--lr", str(args.lr), "--weight-decay", str(args.weight_decay), "--eval-max", str(args.eval_max),
              "--threads", str(args.threads)]
    if prune is not None:
        common += ["--pre-prune", str(prune)]
    if side == "gradedit":
        cmd = [str(OURS_PY), str(HERE / "_gradedit_side.py"), "--pairs-csv", str(paths["pairs"]), *common,
               "--config-json", args.ours_config]
    else:
        cmd = [str(GRADIEND_PY), str(HERE / "_gradiend_side.py"), "--train-csv", str(paths["gradiend"]),
               "--neutral-csv", str(paths["neutral"]), *common]
    res, log, t0 = launch(cmd, tag, runs, out_json, args.threads)
    if res is None:
        return {"side": side, "pre_prune": prune, "rep": rep, "failed": True, "log": str(log)}
    res.update(rep=rep)
    print(f"  step median {res.get('step_median_s')} s (min {res.get('step_min_s')}, max {res.get('step_max_s')},"
          f" {res['timed_steps']} timed), peak RSS {res['peak_rss_mib'] / 1024:.2f} GiB,"
          f" run {time.time() - t0:.0f} s", flush=True)
    return res


def _steps_rss(r: dict) -> float:
    """Largest RSS seen while the timed steps ran (at a step's end or by the sampler)."""
    return max(r.get("rss_during_steps_mib") or 0.0, (r.get("sampled_peak_by_phase_mib") or {}).get("steps", 0.0))


def _peak_phase(r: dict) -> str:
    """The phase whose sampled RSS was largest: setup (load, data, pre-pruning), steps, final (eval, save)."""
    phases = dict(r.get("sampled_peak_by_phase_mib") or {})
    if not phases:
        return "?"
    phases["steps"] = _steps_rss(r)
    return max(phases, key=phases.get)


def source_fingerprint() -> str:
    """sha256 over our package's .py files (the trainer code under test), first 12 hex digits."""
    import hashlib

    import gradedit

    root = Path(gradedit.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def fmt(x: float | None, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def table(results: list[dict], configs: list[float | None]) -> str:
    """Markdown table: per configuration, the best repeat (lowest median step time) of each side."""
    rows = ["| configuration | side | step wall s, median (min–max) | step CPU s | timed steps | peak RSS GiB "
            "(phase) | RSS in steps GiB | to first step s | wall ×ours | CPU ×ours | peak RSS ×ours |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for prune in configs:
        name = "unpruned" if prune is None else f"pre-pruned {prune:.0%}"
        best = {}
        for side in ("gradedit", "gradiend"):
            ok = [r for r in results if r["side"] == side and r["pre_prune"] == prune and not r.get("failed")]
            if ok:
                best[side] = min(ok, key=lambda r: r["step_median_s"])
        ours = best.get("gradedit")
        for side, label in (("gradedit", "gradedit (ours)"), ("gradiend", "gradiend 0.2.3")):
            r = best.get(side)
            if r is None:
                rows.append(f"| {name} | {label} | failed / not run | | | | | | | | |")
                continue
            ratio_t = r["step_median_s"] / ours["step_median_s"] if ours else None
            ratio_m = r["peak_rss_mib"] / ours["peak_rss_mib"] if ours else None
            ratio_c = r["step_cpu_median_s"] / ours["step_cpu_median_s"] if ours else None
            rows.append(
                f"| {name} | {label} | {fmt(r['step_median_s'])} ({fmt(r['step_min_s'])}–{fmt(r['step_max_s'])}) "
                f"| {fmt(r['step_cpu_median_s'])} | {r['timed_steps']} "
                f"| {r['peak_rss_mib'] / 1024:.2f} ({_peak_phase(r)}) | {_steps_rss(r) / 1024:.2f} "
                f"| {fmt(r['to_first_step_s'], 1)} | {fmt(ratio_t)} | {fmt(ratio_c)} | {fmt(ratio_m)} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="zoo model name")
    p.add_argument("--prune", default="both", help="'none', a fraction such as 0.01, or 'both' (none and 0.01)")
    p.add_argument("--sides", default="gradedit,gradiend")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--gradiend-unpruned-steps", type=int, default=None,
                   help="cap timed steps for gradiend unpruned (it is slow)")
    p.add_argument("--repeats", type=int, default=1, help="runs per side and configuration (best is tabled)")
    p.add_argument("--source", default="alternative")
    p.add_argument("--target", default="diff")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (gradiend's default)")
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--eval-max", type=int, default=8, help="validation rows per evaluation (outside the timing)")
    p.add_argument("--max-per-class", type=int, default=200)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in each run (1: on a shared 2-core machine 2 OpenMP threads wait on each other)")
    p.add_argument("--ours-config", default="{}",
                   help='extra TrainConfig fields for our side as JSON, e.g. \'{"fused_step": true, '
                        '"optimizer_state": "bf16"}\' (the memory modes)')
    p.add_argument("--tag", default="", help="suffix of the JSON summary file")
    args = p.parse_args()
    json.loads(args.ours_config)  # fail here, not in the side process

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "gradiend" in sides and not GRADIEND_PY.exists():
        sys.exit(f"{GRADIEND_PY} missing: create the anchor venv first (see docs/benchmarks.md)")
    configs: list[float | None] = ([None, 0.01] if args.prune == "both" else
                                   [None] if args.prune == "none" else [float(args.prune)])

    import gradedit

    model_dir = Path(gradedit.zoo.prepare(args.model))
    ds, neutral, data_desc = build_data(args.max_per_class, 200)
    paths = export_data(ds, neutral, OUT / "data")
    params_json, n_entries, n_all = input_space(model_dir, OUT / "data")
    print(f"model {args.model} ({model_dir}); data: {data_desc}: {len(ds)} rows; input space "
          f"{n_entries:,} of {n_all:,} weights; source {args.source} -> target {args.target}", flush=True)

    code = source_fingerprint()
    print(f"gradedit source fingerprint {code}; our TrainConfig extras {args.ours_config}", flush=True)
    results = []
    for prune in configs:
        for rep in range(args.repeats):
            for side in sides:
                results.append(run_side(side, prune, rep, args, model_dir, paths, params_json))

    if source_fingerprint() != code:
        print("WARNING: src/gradedit changed while the benchmark ran; the runs measured different code", flush=True)
    md = table(results, configs)
    print()
    print(md)
    exe = os.path.relpath(sys.executable, Path.cwd()) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
    summary = {"command": " ".join([exe, *sys.argv]), "args": vars(args), "model": args.model,
               "data": data_desc, "rows": len(ds), "input_space": n_entries, "model_params": n_all,
               "cpus": os.cpu_count(), "gradedit_source_sha256_12": code,
               "source_changed_during_run": source_fingerprint() != code, "results": results, "table": md}
    path = OUT / f"bench_train{('_' + args.tag) if args.tag else ''}.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
