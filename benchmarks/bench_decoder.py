"""GRADIEND decoder-evaluation cost: our ``Trainer.evaluate_decoder`` vs the reference ``gradiend``
package's ``TextPredictionTrainer.evaluate_decoder``, same model, same rows, same grid.

    .venv/bin/python benchmarks/bench_decoder.py --tag idle1                      # full run
    .venv/bin/python benchmarks/bench_decoder.py --lrs 1e-4,1e-3 --rows-per-class 4 --neutral 8 --tag smoke

Each side runs in its own process (gradiend in its own venv, see docs/benchmarks.md): it trains a
feature model briefly (pre-pruned to 1%, a few steps; not timed, quality irrelevant), then times ONE
call of its trainer's ``evaluate_decoder``: the base model and every (feature_factor, learning_rate)
grid point scored by next-token probabilities on the class rows and the LM score on neutral text.
Caching is off on both sides and ours does no bisection refinement (``refine_steps=0``), so both
score exactly ``1 + len(ffs) * len(lrs)`` model states. The default grid is feature factors {-1, +1}
x 5 learning rates: both classes are strengthened (target_class=None), and gradiend's selection
raises unless each class's own feature factor (here masc +1, fem -1) is in the grid.

Rows and sentences (both sides score the same ones):
- class rows: the driver keeps exactly ``--rows-per-class`` rows of each class in the ``test`` split
  (seeded sample of the en-pronouns export of bench_train.py, other test rows dropped). gradiend gets
  ``max_size_training_like=N``, which caps rows PER transition group (masc->fem, fem->masc, i.e. per
  class), so it keeps all N of each. Strengthening both classes needs both classes' rows (P(fem) on
  masc rows, P(masc) on fem rows), so gradiend scores 2N rows; ours always scores every row of both
  classes, capped at ``max_rows_per_class`` (64, not reachable through Trainer.evaluate_decoder) >= N.
- neutral text: exactly ``--neutral`` sentences are written to the neutral CSV; gradiend gets
  ``max_size_neutral=M`` (a seeded shuffle of all M rows), ours ``max_neutral=M`` (the first M = all).
Each side reports the counts it actually scored. Defaults: 20 rows per class (the whole test split of
en-pronouns at 200 rows per class) and 64 neutral sentences (our library's default ``max_neutral``).

Timing: each side wraps its per-model scoring call (ours ``DecoderProbe.score``, gradiend's public
``trainer.evaluate_base_model``) with a time stamp; the wrapper changes no argument or result. The
first call scores the unmodified base model; grid point k costs from the end of scoring call k-1
to the end of call k (applying the edit / copying the model + scoring). Peak RSS is the process's
VmHWM reset right before the call (``/proc/self/clear_refs``), i.e. the peak DURING decoder evaluation;
before the reset, every weight is read once (a checkpoint reload may leave them mapped on disk) and
freed heap is returned to the OS, so "RSS before" is what the evaluation starts from.
Results: a markdown table on stdout and JSON in ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_train import (  # noqa: E402
    CLASSES,
    GRADIEND_PY,
    OURS_PY,
    OUT,
    build_data,
    export_data,
    fmt,
    input_space,
    launch,
    source_fingerprint,
)

DEFAULT_LRS = "1e-5,1e-4,1e-3,1e-2,1e-1"


# -------------------------------------------------------------------------------------------------
# helpers used inside the side processes (stdlib only: imported by both venvs)
# -------------------------------------------------------------------------------------------------
class CallStamps:
    """Start/end wall clock and process CPU time of every call of a wrapped function."""

    def __init__(self, info: Callable[..., dict[str, Any]] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self._info = info

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            rec = {"start": t0, "end": time.perf_counter(), "cpu": time.process_time() - c0}
            if self._info is not None:
                rec.update(self._info(*args, **kwargs))
            self.calls.append(rec)
            return out

        return timed


def release_memory() -> None:
    """Free what training left behind (garbage, glibc's cached free heap) before measuring."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def touch(tensors: Any) -> None:
    """Read every tensor once, so weights a checkpoint load left mapped on disk are resident before timing."""
    for t in tensors:
        if t.numel():
            t.detach().sum().item()


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def eval_summary(stamps: CallStamps, t0: float, t1: float, c0: float, c1: float, n_grid: int) -> dict[str, Any]:
    """Split one evaluate_decoder call into setup, base-model scoring, grid points and tail."""
    calls = stamps.calls
    out: dict[str, Any] = {"eval_wall_s": round(t1 - t0, 3), "eval_cpu_s": round(c1 - c0, 3),
                           "scoring_calls": len(calls), "expected_grid_points": n_grid}
    if not calls:
        return out
    points = [b["end"] - a["end"] for a, b in zip(calls, calls[1:])]
    scoring = [c["end"] - c["start"] for c in calls[1:]]
    out.update(setup_s=round(calls[0]["start"] - t0, 3), base_eval_s=round(calls[0]["end"] - calls[0]["start"], 3),
               base_eval_cpu_s=round(calls[0]["cpu"], 3), point_s=[round(p, 3) for p in points],
               point_scoring_s=[round(s, 3) for s in scoring], tail_s=round(t1 - calls[-1]["end"], 3),
               grid_points=len(points), grid_s=round(sum(points), 3))
    if points:
        out.update(point_median_s=round(statistics.median(points), 3), point_min_s=round(min(points), 3),
                   point_max_s=round(max(points), 3), point_cpu_median_s=round(statistics.median(
                       c["cpu"] for c in calls[1:]), 3),
                   points_per_s=round(len(points) / (t1 - t0), 4), points_per_s_grid_only=round(len(points) / sum(points), 4))
    return out


def side_parser(doc: str | None) -> argparse.ArgumentParser:
    """Arguments common to both side scripts (the driver passes the same values to both)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--model", required=True, help="plain HF model folder")
    p.add_argument("--neutral-csv", required=True, help="CSV with a 'text' column: exactly the neutral sentences")
    p.add_argument("--params-json", required=True, help="JSON list of base-model parameter names (input space)")
    p.add_argument("--out", required=True)
    p.add_argument("--experiment-dir", required=True)
    p.add_argument("--source", default="alternative")
    p.add_argument("--target", default="diff")
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--train-eval-max", type=int, default=4, help="validation rows per training evaluation")
    p.add_argument("--pre-prune", type=float, default=0.01)
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--train-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ffs", required=True, help="comma-separated feature factors")
    p.add_argument("--lrs", required=True, help="comma-separated decoder learning rates")
    p.add_argument("--rows-per-class", type=int, required=True)
    p.add_argument("--neutral", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# -------------------------------------------------------------------------------------------------
# driver
# -------------------------------------------------------------------------------------------------
def eval_rows(ds: Any, rows_per_class: int, seed: int) -> Any:
    """``ds`` with exactly ``rows_per_class`` test rows per class (seeded), the other test rows dropped.

    Only rows with text before the placeholder: gradiend skips a causal prompt with an empty prefix.
    """
    from gradedit.data.schema import PairDataset

    df = ds.to_frame()
    test = df[(df["split"] == "test") & df["factual_class"].isin(CLASSES)]
    test = test[test["text"].str.split(r"\[MASK\]", n=1, regex=True).str[0].str.strip() != ""]
    keep = []
    for cls in CLASSES:
        rows = test[test["factual_class"] == cls]
        if len(rows) < rows_per_class:
            sys.exit(f"--rows-per-class {rows_per_class}: the test split has only {len(rows)} usable {cls} rows; "
                     f"lower it or raise --max-per-class")
        keep += list(rows.sample(rows_per_class, random_state=seed).index)
    df = df[(df["split"] != "test") | df.index.isin(keep)]
    return PairDataset.from_frame(df.reset_index(drop=True), target_classes=list(CLASSES))


def run_side(side: str, rep: int, args: argparse.Namespace, model_dir: Path, paths: dict[str, Path],
             params_json: Path) -> dict:
    tag = f"{side}_r{rep}"
    runs = OUT / "runs_decoder" / (args.tag or "default")
    out_json = runs / f"{tag}.json"
    common = ["--model", str(model_dir), "--neutral-csv", str(paths["neutral"]), "--params-json", str(params_json),
              "--out", str(out_json), "--experiment-dir", str(OUT / "exp_decoder" / (args.tag or "default") / tag),
              "--source", args.source, "--target", args.target, "--train-steps", str(args.train_steps),
              "--pre-prune", str(args.prune), "--pre-prune-samples", str(args.pre_prune_samples),
              f"--ffs={args.ffs}", f"--lrs={args.lrs}", "--rows-per-class", str(args.rows_per_class),
              "--neutral", str(args.neutral), "--threads", str(args.threads)]
    if side == "gradedit":
        cmd = [str(OURS_PY), str(HERE / "_gradedit_decoder_side.py"), "--pairs-csv", str(paths["pairs"]), *common]
    else:
        cmd = [str(GRADIEND_PY), str(HERE / "_gradiend_decoder_side.py"), "--train-csv", str(paths["gradiend"]),
               *common]
    res, log, t0 = launch(cmd, tag, runs, out_json, args.threads)
    if res is None:
        return {"side": side, "rep": rep, "failed": True, "log": str(log)}
    res.update(rep=rep)
    print(f"  decoder eval {res['eval_wall_s']} s ({res.get('grid_points')} points, base {res.get('base_eval_s')} s,"
          f" point median {res.get('point_median_s')} s), {res['rows_scored']} rows / {res['neutral_scored']} neutral,"
          f" eval peak {gib(res['eval_peak_rss_mib'])} GiB, run {time.time() - t0:.0f} s", flush=True)
    return res


def gib(mib: float | None) -> str:
    return "—" if mib is None else f"{mib / 1024:.2f}"


def table(results: list[dict]) -> str:
    """Markdown table: the best repeat (lowest decoder-eval wall time) of each side."""
    rows = ["| side | decoder eval wall s | CPU s | setup s | base model s | grid point wall s, median (min–max) "
            "| grid point CPU s | points | points/s | rows / neutral | input dim | RSS before GiB | peak in eval GiB "
            "| wall ×ours | CPU ×ours | point wall ×ours | peak ×ours |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    best = {}
    for side in ("gradedit", "gradiend"):
        ok = [r for r in results if r["side"] == side and not r.get("failed")]
        if ok:
            best[side] = min(ok, key=lambda r: r["eval_wall_s"])
    ours = best.get("gradedit")
    for side, label in (("gradedit", "gradedit (ours)"), ("gradiend", "gradiend 0.2.3")):
        r = best.get(side)
        if r is None:
            rows.append(f"| {label} | failed / not run |" + " |" * 15)
            continue

        def ratio(key: str, r: dict = r) -> str:
            return fmt(r[key] / ours[key]) if ours and r.get(key) and ours.get(key) else "—"

        rows.append(
            f"| {label} | {fmt(r['eval_wall_s'])} | {fmt(r['eval_cpu_s'])} | {fmt(r.get('setup_s'))} "
            f"| {fmt(r.get('base_eval_s'))} | {fmt(r.get('point_median_s'))} ({fmt(r.get('point_min_s'))}–"
            f"{fmt(r.get('point_max_s'))}) | {fmt(r.get('point_cpu_median_s'))} | {r.get('grid_points')} "
            f"| {fmt(r.get('points_per_s'), 3)} | {r['rows_scored']} / {r['neutral_scored']} | {r['input_dim']:,} "
            f"| {gib(r['rss_before_eval_mib'])} | {gib(r['eval_peak_rss_mib'])} | {ratio('eval_wall_s')} "
            f"| {ratio('eval_cpu_s')} | {ratio('point_median_s')} | {ratio('eval_peak_rss_mib')} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="zoo model name")
    p.add_argument("--sides", default="gradedit,gradiend")
    p.add_argument("--ffs", default="-1.0,1.0",
                   help="feature factors (comma-separated, same on both sides; write --ffs=-1,1 for a leading minus)")
    p.add_argument("--lrs", default=DEFAULT_LRS, help="decoder learning rates (comma-separated, same on both sides)")
    p.add_argument("--rows-per-class", type=int, default=20, help="test rows per class scored at every point")
    p.add_argument("--neutral", type=int, default=64, help="neutral sentences for the LM score at every point")
    p.add_argument("--max-per-class", type=int, default=200, help="en-pronouns rows per class (as bench_train.py)")
    p.add_argument("--train-steps", type=int, default=3, help="untimed training steps before the evaluation")
    p.add_argument("--prune", type=float, default=0.01, help="pre-pruning fraction of the input space")
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--source", default="alternative")
    p.add_argument("--target", default="diff")
    p.add_argument("--repeats", type=int, default=1, help="runs per side (best is tabled)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (see docs/benchmarks.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test-row sample")
    p.add_argument("--tag", default="", help="suffix of the JSON summary file")
    args = p.parse_args()

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "gradiend" in sides and not GRADIEND_PY.exists():
        sys.exit(f"{GRADIEND_PY} missing: create the anchor venv first (see docs/benchmarks.md)")
    ffs, lrs = floats(args.ffs), floats(args.lrs)
    if not ffs or not lrs or any(lr <= 0 for lr in lrs):
        sys.exit("--ffs and --lrs need at least one value each; learning rates must be positive")

    import gradedit

    model_dir = Path(gradedit.zoo.prepare(args.model))
    ds, neutral, data_desc = build_data(args.max_per_class, args.neutral)
    if len(neutral) < args.neutral:
        sys.exit(f"only {len(neutral)} neutral sentences available for --neutral {args.neutral}")
    ds = eval_rows(ds, args.rows_per_class, args.seed)
    folder = OUT / "data_decoder" / (args.tag or "default")
    paths = export_data(ds, neutral, folder)
    params_json, n_entries, n_all = input_space(model_dir, folder)
    n_grid = len(ffs) * len(lrs)
    print(f"model {args.model} ({model_dir}); data: {data_desc}, test split cut to {args.rows_per_class} rows per "
          f"class; {len(neutral)} neutral sentences; grid {len(ffs)} ff x {len(lrs)} lr = {n_grid} points + base; "
          f"input space {n_entries:,} of {n_all:,} weights, pre-pruned to {args.prune:g}", flush=True)

    code = source_fingerprint()
    print(f"gradedit source fingerprint {code}", flush=True)
    results = []
    for rep in range(args.repeats):
        for side in sides:
            results.append(run_side(side, rep, args, model_dir, paths, params_json))
    changed = source_fingerprint() != code
    if changed:
        print("WARNING: src/gradedit changed while the benchmark ran; the runs measured different code", flush=True)
    md = table(results)
    print()
    print(md)
    exe = os.path.relpath(sys.executable, Path.cwd()) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
    summary = {"command": " ".join([exe, *sys.argv]), "args": vars(args), "model": args.model, "data": data_desc,
               "rows_per_class": args.rows_per_class, "neutral": args.neutral, "feature_factors": ffs,
               "learning_rates": lrs, "grid_points": n_grid, "input_space": n_entries, "model_params": n_all,
               "cpus": os.cpu_count(), "gradedit_source_sha256_12": code, "source_changed_during_run": changed,
               "results": results, "table": md}
    path = OUT / f"bench_decoder{('_' + args.tag) if args.tag else ''}.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
