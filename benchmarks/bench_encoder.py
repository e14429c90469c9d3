"""GRADIEND encoder-evaluation cost: our ``Trainer.evaluate_encoder`` vs the reference ``gradiend``
package's ``TextPredictionTrainer.evaluate_encoder``, on ONE feature model and the same rows.

    .venv/bin/python benchmarks/bench_encoder.py --model smollm2-135m --tag s1     # the lead's run (~5 min)
    .venv/bin/python benchmarks/bench_encoder.py --model tiny-llama --tag tiny     # smoke test (~1 min)

1. One feature model is trained by US (pre-pruned to 1%, ``--train-steps`` steps of one row each,
   source ``alternative`` -> target ``diff`` as in bench_train.py; not timed) and exported. The gradiend
   side converts it into a gradiend checkpoint with gradiend's own classes and loads it back, so both
   sides evaluate the SAME weights on the SAME input space (checked: the loaded encoder equals the
   export bit for bit).
2. Each side runs in its own process (gradiend in ``benchmarks/.venv-gradiend``, created when missing)
   and times ONE encoder-evaluation call on the ``test`` split, caching off: every test row of the two
   classes, plus the neutral rows that side's evaluation adds (ours: identity rows, neutral-masked twins
   of the test rows, masked neutral sentences, at most 64; gradiend: re-masked twins of the test rows
   and every sentence of the neutral CSV). The driver writes exactly ``--neutral`` sentences to that CSV
   and gives ours the same list, so both draw on the same sentences; each side masks its own word.
3. Reported per side: wall and process CPU time of the call, peak RSS during it (VmHWM reset right
   before), rows encoded per group and rows/s, the Pearson r of encoding vs label on the class rows.
   The class rows are the same on both sides: the driver matches them by text and compares each row's
   encoding (max |difference|) and the two correlations.

Results: a markdown table on stdout and JSON in ``benchmarks/out/bench_encoder_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_train import (  # noqa: E402
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

GRADIEND_VERSION = "0.2.3"
TORCH_VERSION = "2.13.0"


def ensure_gradiend_venv() -> None:
    """Create ``benchmarks/.venv-gradiend`` (torch first: a CPU wheel, then gradiend) when it is missing."""
    if GRADIEND_PY.exists():
        return
    venv = GRADIEND_PY.parent.parent
    print(f"creating {venv} (torch {TORCH_VERSION}, gradiend {GRADIEND_VERSION}; a few minutes, once)", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([*pip, f"gradiend=={GRADIEND_VERSION}"], check=True)


def model_folder(name: str) -> Path:
    """A plain HF folder of zoo model ``name`` (tiny models are built in memory: saved once under out/)."""
    import gradedit
    from gradedit._files import atomic_dir

    entry = {e.name: e for e in gradedit.zoo.entries()}.get(name)
    if entry is None:
        p = Path(name)
        if not p.is_dir():
            sys.exit(f"--model {name}: not a zoo name ({', '.join(gradedit.zoo.names())}) nor a model folder")
        return p
    if entry.needs_prepare:
        return Path(gradedit.zoo.prepare(name))
    final = OUT / "models" / name
    if not (final / "config.json").is_file():
        lm = gradedit.zoo.load(name)
        with atomic_dir(final) as tmp:
            lm.model.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
    return final


def single_token_rows(ds: Any, model_dir: Path) -> Any:
    """``ds`` without rows whose factual or alternative word is not ONE token of the model (with its
    leading space); the built-in data are made without a model, so a small vocabulary can split ' He'."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    words = set(ds.to_frame()["factual"]) | set(ds.to_frame()["alternative"])
    single = {w for w in words if len(tok(w, add_special_tokens=False)["input_ids"]) == 1}
    frame = ds.to_frame()
    keep = frame["factual"].isin(single) & frame["alternative"].isin(single)
    if not keep.all():
        print(f"dropping {int((~keep).sum())} rows whose word is not one token: {sorted(words - single)}", flush=True)
    return ds.where(keep.tolist())


def train_and_export(args: argparse.Namespace, model_dir: Path, paths: dict[str, Path], params_json: Path,
                     runs: Path, run_dir: Path, export: Path) -> dict | None:
    """Train the ONE feature model both sides use (ours, untimed, its own process: ``_gradedit_encoder_side.py
    train``) into ``run_dir`` and export it to ``export``; its result JSON, or None when it failed.

    ``args`` needs ``threads``, ``source``, ``target``, ``train_steps``, ``prune`` and ``pre_prune_samples``."""
    train_json = runs / "train.json"
    cmd = [str(OURS_PY), str(HERE / "_gradedit_encoder_side.py"), "train", "--model", str(model_dir),
           "--run-dir", str(run_dir), "--out", str(train_json), "--threads", str(args.threads),
           "--pairs-csv", str(paths["pairs"]), "--neutral-csv", str(paths["neutral"]), "--params-json", str(params_json),
           "--export", str(export), "--source", args.source, "--target", args.target,
           "--train-steps", str(args.train_steps), "--pre-prune", str(args.prune),
           "--pre-prune-samples", str(args.pre_prune_samples)]
    trained, _, _ = launch(cmd, "train", runs, train_json, args.threads)
    return trained


def _key(text: str) -> str:
    """Match key of a class row: the text before the placeholder, whitespace removed."""
    return re.sub(r"\s+", "", str(text).split("[MASK]", 1)[0])


def compare(ours: dict, theirs: dict, ref: dict | None) -> dict[str, Any]:
    """Class rows matched by (text before [MASK], factual word): max |encoding difference| between the
    sides and against the plain-torch reference, and every Pearson r against OUR labels (masc +1, fem -1;
    gradiend labels the classes the other way round, its own r is reported separately)."""
    import numpy as np

    def by_key(rows: list[dict]) -> dict[tuple[str, str], dict]:
        return {(_key(r["text"]), str(r["factual"])): r for r in rows if r.get("group", "training") == "training"}

    a, b = by_key(ours["rows"]), by_key(theirs["rows"])
    c = by_key(ref["rows"]) if ref else {}
    both = sorted(set(a) & set(b) & (set(c) if c else set(a)))
    out: dict[str, Any] = {"class_rows_ours": len(a), "class_rows_gradiend": len(b), "matched": len(both),
                           "r_gradiend_reported": (theirs.get("metrics") or {}).get("correlation")}
    if len(both) < 2:
        return out
    lab = np.array([float(a[k]["label"]) for k in both])
    cols = {"ours": np.array([a[k]["encoded"] for k in both]), "gradiend": np.array([b[k]["encoded"] for k in both])}
    if c and all(c[k]["one_earlier"] is not None for k in both):
        cols["ref_last"] = np.array([c[k]["last"] for k in both])
        cols["ref_one_earlier"] = np.array([c[k]["one_earlier"] for k in both])
    for name, v in cols.items():
        out[f"r_{name}"] = float(np.corrcoef(v, lab)[0, 1])
    pairs = [("ours", "gradiend"), ("ours", "ref_last"), ("gradiend", "ref_last"), ("gradiend", "ref_one_earlier")]
    for x, y in pairs:
        if x in cols and y in cols:
            out[f"max_abs_diff_{x}_vs_{y}"] = float(np.abs(cols[x] - cols[y]).max())
    out["r_difference_ours_minus_gradiend"] = out["r_ours"] - out["r_gradiend"]
    return out


def gib(mib: float | None) -> str:
    return "—" if mib is None else f"{mib / 1024:.2f}"


def table(results: list[dict]) -> str:
    """Markdown table: the best repeat (lowest wall time) of each side."""
    rows = ["| side | call | wall s | CPU s | rows encoded (class / neutral-masked / neutral) | rows/s "
            "| RSS before GiB | peak in call GiB | r (class rows) | wall ×ours | CPU ×ours | rows/s ÷ ours | peak ×ours |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    best: dict[str, dict] = {}
    for side in ("gradedit", "gradiend"):
        ok = [r for r in results if r["side"] == side and not r.get("failed")]
        if ok:
            best[side] = min(ok, key=lambda r: r["eval_wall_s"])
    ours = best.get("gradedit")
    for side, label in (("gradedit", "gradedit (ours)"), ("gradiend", f"gradiend {GRADIEND_VERSION}")):
        r = best.get(side)
        if r is None:
            rows.append(f"| {label} | failed / not run |" + " |" * 11)
            continue

        def ratio(key: str, r: dict = r) -> str:
            return fmt(r[key] / ours[key]) if ours and r.get(key) and ours.get(key) else "—"

        g = r["rows_by_group"]
        split = (f"{g.get('training', 0)} / {g.get('neutral_masked', g.get('neutral_training_masked', 0))} / "
                 f"{g.get('neutral', g.get('neutral_dataset', 0))}")
        rows.append(f"| {label} | `{r['path']}` | {fmt(r['eval_wall_s'])} | {fmt(r['eval_cpu_s'])} | {r['rows_encoded']} "
                    f"({split}) | {fmt(r['rows_per_s'])} | {gib(r['rss_before_eval_mib'])} | {gib(r['eval_peak_rss_mib'])} "
                    f"| {fmt(r.get('r_class_rows'), 4)} | {ratio('eval_wall_s')} | {ratio('eval_cpu_s')} "
                    f"| {ratio('rows_per_s')} | {ratio('eval_peak_rss_mib')} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="zoo model name or HF folder")
    p.add_argument("--sides", default="gradedit,gradiend")
    p.add_argument("--max-per-class", type=int, default=200, help="en-pronouns rows per class (80/10/10 split)")
    p.add_argument("--neutral", type=int, default=64, help="neutral sentences (ours encodes at most 64)")
    p.add_argument("--train-steps", type=int, default=50, help="untimed training steps of the shared model")
    p.add_argument("--prune", type=float, default=0.01, help="pre-pruning fraction of the input space")
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--source", default="alternative")
    p.add_argument("--target", default="diff")
    p.add_argument("--batch-size", type=int, default=0,
                   help="ours: 0 = Trainer.evaluate_encoder (JVP batch 8); N = evaluate_encoder(batch_size=N)")
    p.add_argument("--repeats", type=int, default=1, help="evaluation runs per side (best is tabled)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the plain-torch recomputation of the class rows' encodings (untimed check)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--tag", default="", help="suffix of the output files")
    args = p.parse_args()

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "gradiend" in sides:
        ensure_gradiend_venv()
    model_dir = model_folder(args.model)
    ds, neutral, data_desc = build_data(args.max_per_class, args.neutral)
    ds = single_token_rows(ds, model_dir)
    tag = args.tag or "default"
    folder = OUT / "data_encoder" / tag
    paths = export_data(ds, neutral, folder)
    params_json, n_entries, n_all = input_space(model_dir, folder)
    frame = ds.to_frame()
    n_test = int(((frame["split"] == "test") & (frame["factual_class"] != frame["alternative_class"])).sum())
    print(f"plan: model {args.model} ({model_dir}); data {data_desc}; input space {n_entries:,} of {n_all:,} weights, "
          f"pre-pruned to {args.prune:g}; 1 training run ({args.train_steps} steps, ours, untimed); then "
          f"{args.repeats} x {len(sides)} timed encoder evaluations ({', '.join(sides)}) of the {n_test} test rows + "
          f"neutral rows from {len(neutral)} sentences, {args.threads} thread(s)", flush=True)
    if len(neutral) < args.neutral:
        sys.exit(f"only {len(neutral)} neutral sentences available for --neutral {args.neutral}")

    code = source_fingerprint()
    runs = OUT / "runs_encoder" / tag
    run_dir, export = OUT / "exp_encoder" / tag / "run", OUT / "exp_encoder" / tag / "export"
    trained = train_and_export(args, model_dir, paths, params_json, runs, run_dir, export)
    if trained is None:
        sys.exit("training the shared feature model failed (log above)")
    print(f"  trained in {trained['train_s']} s: {trained['input_dim']:,} entries in {trained['params_with_entries']} "
          f"matrices, validation r {trained['val_correlation']:+.3f}", flush=True)

    results: list[dict] = []
    for rep in range(args.repeats):
        for side in sides:
            name = f"{side}_r{rep}"
            out_json = runs / f"{name}.json"
            if side == "gradedit":
                cmd = [str(OURS_PY), str(HERE / "_gradedit_encoder_side.py"), "eval", "--model", str(model_dir),
                       "--run-dir", str(run_dir), "--out", str(out_json), "--threads", str(args.threads),
                       "--batch-size", str(args.batch_size)]
            else:
                cmd = [str(GRADIEND_PY), str(HERE / "_gradiend_encoder_side.py"), "--model", str(model_dir),
                       "--train-csv", str(paths["gradiend"]), "--neutral-csv", str(paths["neutral"]),
                       "--params-json", str(params_json), "--export", str(export),
                       "--experiment-dir", str(OUT / "exp_encoder" / tag / name), "--out", str(out_json),
                       "--threads", str(args.threads)]
            res, _, t0 = launch(cmd, name, runs, out_json, args.threads)
            if res is None:
                results.append({"side": side, "rep": rep, "failed": True})
                continue
            res["rep"] = rep
            results.append(res)
            print(f"  {res['path']}: {res['eval_wall_s']} s wall, {res['eval_cpu_s']} s CPU, {res['rows_encoded']} rows "
                  f"{res['rows_by_group']}, peak {gib(res['eval_peak_rss_mib'])} GiB, run {time.time() - t0:.0f} s",
                  flush=True)

    ok = {s: [r for r in results if r["side"] == s and not r.get("failed")] for s in ("gradedit", "gradiend")}
    ref = None
    if ok["gradedit"] and args.reference:  # the oracle: plain transformers + torch, no gradedit code
        ref_json = runs / "reference.json"
        cmd = [str(OURS_PY), str(HERE / "_gradedit_encoder_side.py"), "reference", "--model", str(model_dir),
               "--export", str(export), "--rows-json", str(runs / "gradedit_r0.json"), "--out", str(ref_json),
               "--threads", str(args.threads)]
        ref, _, _ = launch(cmd, "reference", runs, ref_json, args.threads)
    check = compare(ok["gradedit"][0], ok["gradiend"][0], ref) if ok["gradedit"] and ok["gradiend"] else {}
    for r in results:
        if not r.get("failed"):
            r["r_class_rows"] = check.get("r_ours" if r["side"] == "gradedit" else "r_gradiend", r.get("correlation"))
    changed = source_fingerprint() != code
    md = table(results)
    print()
    print(md)
    if check:
        nan = float("nan")
        print(f"\nsame model, same class rows: {check['matched']} of {check['class_rows_ours']} (ours) / "
              f"{check['class_rows_gradiend']} (gradiend) matched by text and word. Pearson r against masc +1 / fem -1: "
              f"ours {check.get('r_ours', nan):+.4f}, gradiend {check.get('r_gradiend', nan):+.4f} (difference "
              f"{check.get('r_difference_ours_minus_gradiend', nan):+.2e}; gradiend's own r, its labels the other way "
              f"round: {check.get('r_gradiend_reported')})")
        for k, v in check.items():
            if k.startswith("max_abs_diff_"):
                print(f"  max |encoding difference| {k.removeprefix('max_abs_diff_').replace('_vs_', ' vs ')}: {v:.2e}")
        if "r_ref_last" in check:
            print(f"  plain-torch reference r: loss at the last prompt position {check['r_ref_last']:+.4f}, one "
                  f"position earlier {check['r_ref_one_earlier']:+.4f}")
    if changed:
        print("WARNING: src/gradedit changed while the benchmark ran; the runs measured different code", flush=True)
    walls = {s: statistics.median(r["eval_wall_s"] for r in v) for s, v in ok.items() if v}
    exe = os.path.relpath(sys.executable, Path.cwd()) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
    summary = {"command": " ".join([exe, *sys.argv]), "args": vars(args), "model": args.model, "data": data_desc,
               "input_space": n_entries, "model_params": n_all, "trained": trained, "check": check,
               "median_wall_s": walls, "cpus": os.cpu_count(), "gradedit_source_sha256_12": code,
               "source_changed_during_run": changed,
               "results": [{k: v for k, v in r.items() if k != "rows"} for r in results], "table": md}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench_encoder{('_' + args.tag) if args.tag else ''}.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten {path} (per-row encodings in {runs})")


if __name__ == "__main__":
    main()
