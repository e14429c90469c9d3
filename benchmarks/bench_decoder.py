"""GRADIEND decoder evaluation to a selected rewrite: our ``evaluate_decoder`` (few-pass ``fast`` search
and/or the ``grid``) vs the reference ``gradiend`` package's ``TextPredictionTrainer.evaluate_decoder``,
on ONE feature model, and the held-out quality of every selection, measured by one scorer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_decoder.py --search both --threads 1 --tag s16   # smollm2
    nice -n 19 .venv/bin/python benchmarks/bench_decoder.py --model tiny-gpt2 --rows-per-class 4 --neutral 8 \
        --heldout-neutral 8 --train-steps 60 --prune 0.3 --rel-lrs 1e-4,1e-3,1e-2,1e-1,1 --tag smoke       # ~80 s

**Expected runtime on smollm2-135m: ≈ 12-15 min** (one thread, idle machine), estimated from the
per-pass costs of the earlier smollm2 runs (a scoring pass of 40 prompts + 64 sentences ≈ 11-13 s) and
the pass counts of the tiny smoke runs: training ≈ 1.5 min (load, pre-pruning, 50 steps of ≈ 0.35 s);
our fast search ≈ 8-11 scoring + 2 jvp-of-jvp passes (one jvp2 pass ≈ 3-10 scoring passes: measured
10 on tiny models, not yet on smollm2) ≈ 2-5 min; our grid 11 passes ≈ 2.5 min; gradiend 11 passes
with a model copy each ≈ 2.5 min; per process ≈ 20-30 s of model loading and the edit files; the
held-out scoring (base + 6 edits on ≈ 40 rows + 64 sentences) ≈ 1.5 min.

1. **One feature model.** We train it once, untimed (``_gradedit_encoder_side.py train``, as
   bench_encoder.py: en-pronouns, pre-pruned to 1%, ``--train-steps`` steps of one row), and export it;
   gradiend converts the export into its own checkpoint (``gradiend_checkpoint``, with the class
   directions of our labels: masc +1, fem -1) and loads it (``loaded_equals_export`` is checked). Both
   sides therefore select an edit of the SAME model.
2. **The timed call, one process per side and search.** Caching off; feature factors ``--ffs`` and the
   same learning rates on both sides (default: the library's grid, 1e-5..1e-1 x our ``lr_scale`` of the
   trained model, computed once and passed as absolute values); both classes strengthened
   (``--direction weaken``: weakened); the selection rows are ``--rows-per-class`` test rows per class
   and ``--neutral`` sentences, the same on both sides.
   - gradiend: ``evaluate_decoder(lrs, feature_factors, split="test", max_size_training_like=N,
     max_size_neutral=M, use_cache=False)``: every grid point, one model copy each. **Its selector** is
     its default ``LMSThresholdPolicy(0.99)``: among the points of the class's own feature factor, the
     largest metric with LMS ≥ 0.99 x base, where its causal-LM LMS is 1 / (1 + mean neutral CE); when
     no point passes, the point with the smallest lr (an edit all the same).
   - ours: ``evaluate_decoder(search="fast", derivatives=--derivatives)`` and/or ``search="grid"``
     (``--refine-steps`` bisections, default 0 = the same points as gradiend's grid). **Our selector**
     is gradiend's bound written as ours: LMS_g ≥ r x base ⇔ mean neutral CE rise ≤ (1 + CE_base)(1/r − 1),
     i.e. ``perplexity:{exp((1 + CE_base)(1/r − 1)) − 1}`` with r = ``--lms-ratio`` and CE_base the base
     model's CE on the selection sentences; over both feature factors, the largest metric among points
     that raise it above the base within the bound; none: the base model (no edit). The base point is
     scored first inside the timed window, and ``evaluate_decoder`` reads it from the same point cache
     (a fresh folder), so the call scores it once.
   **Training source** (default ``--source diff --target diff``): gradiend derives each class's feature
   factor from the model's class directions by a fixed contract, ``ff = -direction[C]`` for source
   factual/diff and ``+direction[C]`` for source alternative. With target ``diff`` the decoder of a
   class-C encoding is ≈ ∇(CE_f − CE_a) of C's rows, so adding it raises CE of C's own word for either
   source, and strengthening C needs ff = −direction[C] (the other class's encoding) for either source
   (our trainer aligns the sign: masc encodes +, r > 0): under ``--source alternative`` gradiend's
   contract picks the sign that WEAKENS the class
   (tiny-gpt2 smoke, r +0.65: gradiend's held-out P(fem) x0.964, P(masc) x0.981 where our selections
   reached x1.044 / x1.026), and its timing then selects along the wrong line. Under ``diff`` both
   sides search the same lines, so the comparison is about the selection itself.
   Timed: wall and process CPU of the call; passes (scoring passes: every prompt and sentence through
   the model once; derivative passes: the fast search's jvp passes); peak RSS during the call (VmHWM
   reset right before it, after every weight was read once). Ratios are gradiend ÷ ours.
3. **Held-out quality.** Each side writes the entries its selected rewrite changes (its own rewritten
   weights vs the base: flat indices + values, ``_decoder_heldout.py``). The driver writes each into one
   base model in place and scores it with ONE scorer on the test rows no selection saw and
   ``--heldout-neutral`` other sentences: the target probability (strengthen C: mean P(C) on the other
   class's rows; weaken C: mean P(C) on C's own rows; P(C) summed over all of C's words) as a ratio to
   the base model, and the held-out perplexity ratio (the JSON also has the selection metric itself). Where gradiend and ours selected the same
   (ff, lr), the two edit files are compared entry by entry (``same_point``: same entries, values equal
   up to float rounding, else the conversion or a rewrite differs).

Results: two markdown tables on stdout and JSON in ``benchmarks/out/bench_decoder_<tag>.json``; each
process's JSON and log in ``benchmarks/out/runs_decoder/<tag>/``, the edit files in ``.../edits/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import CallStamps, Window, md_table, write_summary  # noqa: E402
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

DEFAULT_REL_LRS = "1e-5,1e-4,1e-3,1e-2,1e-1"


# -------------------------------------------------------------------------------------------------
# helpers used inside the side processes (stdlib only: imported by both venvs)
# -------------------------------------------------------------------------------------------------
def eval_summary(stamps: CallStamps, w: Window) -> dict[str, Any]:
    """The timed window ``w`` of one evaluate_decoder call, split into setup, base-model scoring, later
    scoring calls and tail. A "point" runs from the end of one scoring call to the end of the next
    (applying the edit or copying the model, any derivative passes in between, and the scoring)."""
    calls = stamps.calls
    out: dict[str, Any] = {**w.summary(), "scoring_calls": len(calls)}
    if not calls:
        return out
    points = [b["end"] - a["end"] for a, b in zip(calls, calls[1:])]
    out.update(setup_s=round(calls[0]["start"] - w.t0, 3), base_eval_s=round(calls[0]["end"] - calls[0]["start"], 3),
               point_s=[round(p, 3) for p in points], tail_s=round(w.t1 - calls[-1]["end"], 3),
               scoring_s=round(sum(c["end"] - c["start"] for c in calls), 3))
    if points:
        out.update(point_median_s=round(statistics.median(points), 3),
                   scoring_median_s=round(statistics.median(c["end"] - c["start"] for c in calls), 3))
    return out


def side_parser(doc: str | None) -> argparse.ArgumentParser:
    """Arguments common to both decoder side scripts (the driver passes the same values to both)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--model", required=True, help="plain HF model folder")
    p.add_argument("--neutral-csv", required=True, help="CSV with a 'text' column: exactly the selection sentences")
    p.add_argument("--out", required=True, help="JSON result")
    p.add_argument("--edits", required=True, help="folder for the selected edits")
    p.add_argument("--experiment-dir", required=True)
    p.add_argument("--ffs", required=True, help="comma-separated feature factors")
    p.add_argument("--lrs", required=True, help="comma-separated decoder learning rates (absolute)")
    p.add_argument("--direction", choices=("strengthen", "weaken"), default="strengthen")
    p.add_argument("--lms-ratio", type=float, default=0.99, help="gradiend's LMS bound (ours: as a perplexity bound)")
    p.add_argument("--rows-per-class", type=int, required=True)
    p.add_argument("--neutral", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    return p


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# -------------------------------------------------------------------------------------------------
# driver
# -------------------------------------------------------------------------------------------------
def eval_rows(ds: Any, rows_per_class: int, seed: int) -> tuple[Any, Any]:
    """``(ds with exactly rows_per_class test rows per class, the other usable test rows as a frame)``.

    The test rows kept (seeded) are what both selections see; the others are the held-out rows. Only
    rows with text before the placeholder are used: gradiend skips a causal prompt with an empty prefix.
    """
    from gradedit.data.schema import PairDataset

    df = ds.to_frame()
    test = df[(df["split"] == "test") & df["factual_class"].isin(CLASSES) & df["alternative_class"].isin(CLASSES)]
    test = test[test["text"].str.split(r"\[MASK\]", n=1, regex=True).str[0].str.strip() != ""]
    keep = []
    for cls in CLASSES:
        rows = test[test["factual_class"] == cls]
        if len(rows) <= rows_per_class:
            sys.exit(f"--rows-per-class {rows_per_class}: the test split has only {len(rows)} usable {cls} rows and "
                     f"held-out rows are needed too; lower it or raise --max-per-class")
        keep += list(rows.sample(rows_per_class, random_state=seed).index)
    held = test[~test.index.isin(keep)]
    df = df[(df["split"] != "test") | df.index.isin(keep)]
    return PairDataset.from_frame(df.reset_index(drop=True), target_classes=list(CLASSES)), held


def run_side(side: str, rep: int, args: argparse.Namespace, model_dir: Path, paths: dict[str, Path],
             params_json: Path, run_dir: Path, export: Path, lrs: list[float]) -> dict:
    """One timed selection: ``side`` is ``gradedit-fast``, ``gradedit-grid`` or ``gradiend``."""
    tag = f"{side}_r{rep}"
    runs = OUT / "runs_decoder" / (args.tag or "default")
    out_json = runs / f"{tag}.json"
    common = ["--model", str(model_dir), "--neutral-csv", str(paths["neutral"]), "--out", str(out_json),
              "--edits", str(runs / "edits" / tag), "--experiment-dir", str(OUT / "exp_decoder" / (args.tag or "default") / tag),
              f"--ffs={args.ffs}", f"--lrs={','.join(repr(x) for x in lrs)}", "--direction", args.direction,
              "--lms-ratio", str(args.lms_ratio), "--rows-per-class", str(args.rows_per_class),
              "--neutral", str(args.neutral), "--threads", str(args.threads)]
    if side.startswith("gradedit"):
        cmd = [str(OURS_PY), str(HERE / "_gradedit_decoder_side.py"), *common, "--run-dir", str(run_dir),
               "--search", side.removeprefix("gradedit-"), "--derivatives", args.derivatives,
               "--tolerance", str(args.tolerance), "--refine-steps", str(args.refine_steps)]
    else:
        cmd = [str(GRADIEND_PY), str(HERE / "_gradiend_decoder_side.py"), *common, "--train-csv", str(paths["gradiend"]),
               "--params-json", str(params_json), "--export", str(export)]
    res, log, t0 = launch(cmd, tag, runs, out_json, args.threads)
    if res is None:
        return {"side": side, "rep": rep, "failed": True, "log": str(log)}
    res.update(side=side, rep=rep)
    sel = ", ".join(f"{e['key']}: ff {e['feature_factor']:+g} lr {e['learning_rate']:.3g}" for e in res["edits"])
    print(f"  {res['eval_wall_s']} s wall, {res['scoring_calls']} scoring + {res.get('jvp_passes', 0)} derivative "
          f"passes, {res['rows_scored']} rows / {res['neutral_scored']} sentences, peak {gib(res['eval_peak_rss_mib'])} "
          f"GiB; selected {sel}; run {time.time() - t0:.0f} s", flush=True)
    return res


def gib(mib: float | None) -> str:
    return "—" if mib is None else f"{mib / 1024:.2f}"


def best_runs(results: list[dict]) -> dict[str, dict]:
    """Per side, the repeat with the lowest wall time of the call."""
    best: dict[str, dict] = {}
    for r in results:
        if not r.get("failed") and (r["side"] not in best or r["eval_wall_s"] < best[r["side"]]["eval_wall_s"]):
            best[r["side"]] = r
    return best


def cost_table(results: list[dict], sides: list[str]) -> str:
    """Cost of one selection per side (best repeat), with gradiend ÷ this row's wall, CPU and peak RSS."""
    best = best_runs(results)
    ref = best.get("gradiend")
    rows = []
    for side in sides:
        r = best.get(side)
        if r is None:
            rows.append([side, "failed / not run"] + [""] * 9)
            continue

        def ratio(key: str, r: dict = r) -> str:
            return fmt(ref[key] / r[key]) if ref and ref.get(key) and r.get(key) else "—"

        rows.append([side, r["call"], fmt(r["eval_wall_s"]), fmt(r["eval_cpu_s"]),
                     f"{r['scoring_calls']} + {r.get('jvp_passes', 0)}", f"{r['rows_scored']} / {r['neutral_scored']}",
                     gib(r["rss_before_eval_mib"]), gib(r["eval_peak_rss_mib"]), ratio("eval_wall_s"),
                     ratio("eval_cpu_s"), ratio("eval_peak_rss_mib")])
    return md_table(["side", "call", "wall s", "CPU s", "passes (scoring + derivative)", "rows / sentences",
                     "RSS before GiB", "peak in call GiB", "gradiend ÷ this: wall", "CPU", "peak RSS"], rows)


def heldout(results: list[dict], model_dir: Path, held: Any, ds: Any, neutral: list[str]) -> tuple[dict, list[dict]]:
    """Score the base model and every side's selected edits (best repeat) with one scorer."""
    from _decoder_heldout import HeldoutScorer, heldout_row, load_edit

    import gradedit

    frame = ds.to_frame()
    tokens = {c: sorted(set(frame.loc[frame["factual_class"] == c, "factual"])) for c in CLASSES}
    prompts = [t.split("[MASK]", 1)[0].rstrip() for t in held["text"]]
    lm = gradedit.load_model(str(model_dir))
    scorer = HeldoutScorer(lm, prompts, held["factual_class"].tolist(), tokens, neutral)
    t0 = time.perf_counter()
    base = scorer.score()
    rows, loaded = [], {}
    for side, r in best_runs(results).items():
        for e in r["edits"]:
            entries = loaded[side, e["key"]] = load_edit(Path(e["path"]))
            row = {"side": side, **{k: e[k] for k in ("key", "feature_factor", "learning_rate", "entries_changed")},
                   "selection": e.get("selection", {}), **heldout_row(base, scorer.score_edit(entries), e["key"])}
            rows.append(row)
    print(f"held-out scoring: base + {len(rows)} edits on {len(prompts)} rows and {len(neutral)} sentences in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    info = {"rows": len(prompts), "rows_by_class": held["factual_class"].value_counts().to_dict(),
            "sentences": len(neutral), "tokens": tokens, "base": base, "same_point": same_point(rows, loaded)}
    for c in info["same_point"]:
        print(f"  same (ff, lr) selected by {c['sides']} for {c['key']}: {c['entries_in_one_only']} entries changed by "
              f"one side only, max |value difference| {c['max_abs_value_diff']:.2e}", flush=True)
    return info, rows


def same_point(rows: list[dict], loaded: dict) -> list[dict]:
    """Where gradiend and one of our searches selected the same (ff, lr) for a key: do the two rewrites of
    the one feature model change the same entries to the same values? (float rounding aside)"""
    import torch

    out = []
    for a in (r for r in rows if r["side"] == "gradiend"):
        for b in (r for r in rows if r["side"] != "gradiend" and r["key"] == a["key"]):
            if (a["feature_factor"], a["learning_rate"]) != (b["feature_factor"], b["learning_rate"]) or not a["learning_rate"]:
                continue
            x, y = loaded["gradiend", a["key"]], loaded[b["side"], b["key"]]
            only, diff, empty = 0, 0.0, (torch.zeros(0, dtype=torch.int64), torch.zeros(0))
            for n in x.keys() | y.keys():
                (ix, vx), (iy, vy) = x.get(n, empty), y.get(n, empty)
                in_y, in_x = torch.isin(ix, iy), torch.isin(iy, ix)
                only += int((~in_y).sum()) + int((~in_x).sum())
                if in_y.any():  # both index lists are sorted (nonzero order), so the common entries line up
                    diff = max(diff, float((vx[in_y].double() - vy[in_x].double()).abs().max()))
            out.append({"key": a["key"], "sides": f"gradiend and {b['side']}", "entries_in_one_only": only,
                        "max_abs_value_diff": diff})
    return out


def quality_table(rows: list[dict]) -> str:
    """Each selection: what its side saw when selecting, and the one scorer's held-out ratios to the base."""
    out = []
    for r in sorted(rows, key=lambda r: (r["key"], r["side"])):
        s = r["selection"]
        seen = (f"metric ×{fmt(s['metric_ratio'], 3)}, ppl ×{fmt(s['perplexity_ratio'], 4)}" if "perplexity_ratio" in s
                else f"metric {s['value']:.3g}, LMS ×{fmt(s['lms_ratio'], 4)}" if "lms_ratio" in s else "—")
        out.append([r["key"], r["side"], f"{r['feature_factor']:+g}", f"{r['learning_rate']:.4g}",
                    f"{r['entries_changed']:,}", seen, fmt(r["p_ratio"], 3), fmt(r["perplexity_ratio"], 4),
                    fmt(r["lms_ratio"], 4)])
    return md_table(["key", "side", "ff", "lr", "entries changed", "at selection (own rows and measures)",
                     "held-out P(C) ×base", "held-out ppl ×base", "held-out LMS ×base"], out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="zoo model name or HF folder")
    p.add_argument("--sides", default="gradedit,gradiend")
    p.add_argument("--search", choices=("grid", "fast", "both"), default="both", help="our search(es)")
    p.add_argument("--direction", choices=("strengthen", "weaken"), default="strengthen", help="both classes, both sides")
    p.add_argument("--ffs", default="-1.0,1.0",
                   help="feature factors (comma-separated, same on both sides; write --ffs=-1,1 for a leading minus)")
    p.add_argument("--rel-lrs", default=DEFAULT_REL_LRS, help="learning rates as multiples of our lr_scale of the "
                   "trained model (the library's default grid), passed to both sides as absolute values")
    p.add_argument("--lrs", default="", help="absolute learning rates instead of --rel-lrs")
    p.add_argument("--lms-ratio", type=float, default=0.99, help="the selection bound (gradiend's LMSThresholdPolicy)")
    p.add_argument("--derivatives", choices=("jvp2", "fd"), default="fd", help="our fast search")
    p.add_argument("--tolerance", type=float, default=0.05, help="our fast search: boundary bracket hi/lo - 1")
    p.add_argument("--refine-steps", type=int, default=0, help="our grid: bisections after the grid")
    p.add_argument("--rows-per-class", type=int, default=20, help="test rows per class the selections score")
    p.add_argument("--neutral", type=int, default=64, help="neutral sentences the selections score")
    p.add_argument("--heldout-neutral", type=int, default=64, help="other neutral sentences for the held-out scorer")
    p.add_argument("--max-per-class", type=int, default=400, help="en-pronouns rows per class (10%% are test rows)")
    p.add_argument("--train-steps", type=int, default=50, help="untimed training steps of the shared model")
    p.add_argument("--prune", type=float, default=0.01, help="pre-pruning fraction of the input space")
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--source", default="diff", help="training source (see the docstring before using alternative)")
    p.add_argument("--target", default="diff")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side (the fastest is tabled and scored)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (see docs/benchmarks.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the selection-row sample")
    p.add_argument("--tag", default="", help="suffix of the output files")
    args = p.parse_args()

    from bench_encoder import ensure_gradiend_venv, model_folder, single_token_rows, train_and_export

    wanted = [s.strip() for s in args.sides.split(",") if s.strip()]
    searches = ["fast", "grid"] if args.search == "both" else [args.search]
    sides = [f"gradedit-{s}" for s in searches if "gradedit" in wanted] + (["gradiend"] if "gradiend" in wanted else [])
    if "gradiend" in sides:
        ensure_gradiend_venv()
    ffs = floats(args.ffs)
    if not ffs or not (floats(args.lrs) or floats(args.rel_lrs)) or any(x <= 0 for x in floats(args.lrs or args.rel_lrs)):
        sys.exit("--ffs and the learning rates need at least one value each; learning rates must be positive")

    model_dir = model_folder(args.model)
    ds, neutral, data_desc = build_data(args.max_per_class, args.neutral + args.heldout_neutral)
    if len(neutral) < args.neutral + args.heldout_neutral:
        sys.exit(f"only {len(neutral)} neutral sentences for --neutral {args.neutral} + --heldout-neutral "
                 f"{args.heldout_neutral}")
    sel_neutral, held_neutral = neutral[: args.neutral], neutral[args.neutral:]
    ds = single_token_rows(ds, model_dir)
    sel_ds, held = eval_rows(ds, args.rows_per_class, args.seed)
    tag = args.tag or "default"
    folder = OUT / "data_decoder" / tag
    paths = export_data(sel_ds, sel_neutral, folder)
    params_json, n_entries, n_all = input_space(model_dir, folder)
    print(f"plan: model {args.model} ({model_dir}); data {data_desc}; selection on {args.rows_per_class} test rows per "
          f"class + {len(sel_neutral)} sentences, held out {len(held)} test rows + {len(held_neutral)} sentences; input "
          f"space {n_entries:,} of {n_all:,} weights, pre-pruned to {args.prune:g}; one training ({args.train_steps} "
          f"steps, untimed), then {args.repeats} x {len(sides)} timed selections ({', '.join(sides)}), "
          f"{args.threads} thread(s)", flush=True)

    code = source_fingerprint()
    runs = OUT / "runs_decoder" / tag
    run_dir, export = OUT / "exp_decoder" / tag / "run", OUT / "exp_decoder" / tag / "export"
    trained = train_and_export(args, model_dir, paths, params_json, runs, run_dir, export)
    if trained is None:
        sys.exit("training the shared feature model failed (log above)")
    lrs = sorted(floats(args.lrs) or [trained["lr_scale"] * x for x in floats(args.rel_lrs)])
    print(f"  trained in {trained['train_s']} s: {trained['input_dim']:,} entries, validation r "
          f"{trained['val_correlation']:+.3f}, lr_scale {trained['lr_scale']:.4g}; learning rates "
          f"{', '.join(f'{x:.3g}' for x in lrs)}", flush=True)

    results = [run_side(side, rep, args, model_dir, paths, params_json, run_dir, export, lrs)
               for rep in range(args.repeats) for side in sides]
    held_info, quality = heldout(results, model_dir, held, ds, held_neutral)
    changed = source_fingerprint() != code
    if changed:
        print("WARNING: src/gradedit changed while the benchmark ran; the runs measured different code", flush=True)
    table = cost_table(results, sides) + "\n\n" + quality_table(quality)
    summary = {"args": vars(args), "model": args.model, "data": data_desc, "input_space": n_entries,
               "model_params": n_all, "trained": trained, "learning_rates": lrs, "heldout": held_info,
               "gradedit_source_sha256_12": code, "source_changed_during_run": changed,
               "results": [{k: v for k, v in r.items() if k != "points"} for r in results],
               "points": {f"{r['side']}_r{r['rep']}": r.get("points") for r in results}, "quality": quality}
    write_summary(OUT, "bench_decoder", args.tag, summary, table)


if __name__ == "__main__":
    main()
