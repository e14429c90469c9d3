"""Peak memory of unpruned GRADIEND training per training-memory mode, against the formula and gradiend.

    .venv/bin/python benchmarks/bench_memory.py                       # smollm2-135m, every mode + gradiend
    .venv/bin/python benchmarks/bench_memory.py --model tiny-llama --tiny-width 768 --tiny-layers 4 --sides gradedit

Two parts, each mode in its own process (``_memory_side.py``), one torch thread:

* ``trainer``: ``Trainer.train()`` unpruned on the model for ``--steps`` steps of one row (as
  ``bench_train.py``: source alternative, target diff, lr 1e-5, weight decay 0.01), evaluation after the
  last step, the default post-pruning. Peak RSS (VmHWM) of the whole process; the RSS before training
  (model, data, runtime) is the base. The gradiend side (``_gradiend_side.py`` in its venv, as
  ``bench_train.py`` runs it) gives the reference peak.
* ``step``: the encoder-decoder step alone on random vectors of the model's input size n, with the
  training loop's vector handling as it is (``now``) and as proposed (``fixed``: see
  docs/benchmarks.md ("Memory of unpruned GRADIEND training")), so modes the loop does not drive yet (``fused_step``) are measured too.

Every peak is shown over the base in units of ``u = 4n`` bytes (one fp32 n-vector) beside the formula's
units for the same mode (``formula_units``): weights 3, AdamW moments 6 (fp32) or 3 (bf16), the loop's
vectors, autograd's temporaries and the checkpoint's copy of the moments. Results: markdown on stdout,
JSON in ``benchmarks/out/bench_memory[_TAG].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_train  # noqa: E402  (data export, input space, gradiend venv, process launcher)
from _memory_side import MODES  # noqa: E402

OUT = HERE / "out"
OURS_PY = Path(sys.executable)
GIB = 1024**3


# -------------------------------------------------------------------------------------------------
# the formula (one example per step, one latent): peak over the base in units of one fp32 n-vector
# -------------------------------------------------------------------------------------------------
def moments(mode: str) -> int:
    """AdamW's two moments of the 3n weights: 6 fp32 n-vectors, or 3 in bf16."""
    return 3 if MODES[mode].get("optimizer_state", "fp32") != "fp32" else 6


def step_units(mode: str, loop: str) -> int:
    """The training step's peak: weights (3) + moments + the example's vectors + autograd's temporaries.

    Loop ``now`` (``SeedTrainer._batch``): the engine's (source, target) pair (2) and its stacked copies
    (2) exist together until the pair is dropped; ``fixed``: the pair only (2). Autograd (default,
    in_backward): source and target (2), the reconstruction (1) and, at the decoder's backward node, its
    gradient plus the decoder's two weight gradients (3); in_backward cannot free those earlier. Fused:
    no n-sized temporary, so the batch's vectors are the peak.
    """
    base = 3 + moments(mode)
    if MODES[mode].get("fused_step"):
        return base + (4 if loop == "now" else 2)
    return base + 6


def final_units(mode: str) -> int:
    """After the last step: the checkpoint's ``save_tree_atomic`` clones the moments (+ moments), and the
    clones outlive the call (its recursive closure ``enc`` is a reference cycle holding them until the
    next garbage collection), so they are still there when ``best/`` is read (+ 3, file pages) beside
    the training model and its optimiser (weights 3 + moments)."""
    return 3 + 2 * moments(mode) + 3


def fixed_final_units(mode: str) -> int:
    """The same without the clone and with the training model freed before ``best/`` is read: the
    encoder evaluation (weights + moments + its dense copy of W_e, 1) is the largest."""
    return 3 + moments(mode) + 1


def trainer_units(mode: str) -> int:
    return max(step_units(mode, "now"), final_units(mode))


def fixed_units(mode: str) -> int:
    return max(step_units(mode, "fixed"), fixed_final_units(mode))


# -------------------------------------------------------------------------------------------------
# runs
# -------------------------------------------------------------------------------------------------
def run(cmd: list[str], tag: str, out_json: Path, threads: int) -> dict:
    res, log, _ = bench_train.launch(cmd, tag, OUT / "runs" / "memory", out_json, threads)
    if res is None:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:] or ["?"]
        return {"failed": True, "error": tail[0][:300], "log": str(log)}
    return res


def side_cmd(part: str, mode: str, args: argparse.Namespace, out_json: Path, extra: list[str]) -> list[str]:
    cmd = [str(OURS_PY), str(HERE / "_memory_side.py"), "--part", part, "--mode", mode, "--out", str(out_json),
           "--steps", str(args.steps), "--threads", str(args.threads), "--lr", str(args.lr),
           "--weight-decay", str(args.weight_decay), *extra]
    return cmd


def compare_to_default(results: dict[str, dict]) -> None:
    """Adds ``max_abs_dw`` (over the sampled entries) of every mode's trained weights vs the default's."""
    ref = results.get("default", {}).get("weights_sample")
    for res in results.values():
        sample = res.get("weights_sample")
        if ref is None or sample is None:
            continue
        res["max_abs_dw_vs_default"] = max(abs(a - b) for key in ref for a, b in zip(ref[key], sample[key]))
        res["max_abs_w_default"] = max(abs(a) for key in ref for a in ref[key])


def gib(mib: float | None) -> str:
    return "—" if mib is None else f"{mib / 1024:.2f}"


def trainer_table(results: dict[str, dict], u_mib: float, gradiend_mib: float | None) -> str:
    rows = ["| mode | peak GiB | base GiB | over base, units | formula units | measured/formula | ×gradiend's peak "
            "| r (last step) | max abs dw vs default |", "|---|---|---|---|---|---|---|---|---|"]
    for mode, r in results.items():
        if r.get("failed"):
            rows.append(f"| {mode} | failed: {r['error']} | | | {trainer_units(mode)} | | | | |")
            continue
        over = (r["peak_rss_mib"] - r["base_rss_mib"]) / u_mib
        ratio = f"{r['peak_rss_mib'] / gradiend_mib:.2f}" if gradiend_mib else "—"
        dw = r.get("max_abs_dw_vs_default")
        dw_cell = "—" if dw is None else f"{dw:.3g} (largest weight {r['max_abs_w_default']:.3g})"
        rows.append(f"| {mode} | {gib(r['peak_rss_mib'])} | {gib(r['base_rss_mib'])} | {over:.2f} | {trainer_units(mode)} "
                    f"| {over / trainer_units(mode):.2f} | {ratio} | {r['r_last']:+.4f} | {dw_cell} |")
    return "\n".join(rows)


def step_table(results: dict[tuple[str, str], dict], u_mib: float, base_mib: float | None,
               gradiend_mib: float | None) -> str:
    """Step part: measured units (formula) per loop variant, and the whole run's expected peak once the
    loop and checkpoint fixes are in: base + max(measured fixed step, the fixed final phase's formula)."""
    rows = ["| mode | step, loop now: units (formula) | step, loop fixed: units (formula) | whole run with the fixes: "
            "units (formula) | expected peak GiB | ×gradiend's peak |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        cells = []
        for loop in ("now", "fixed"):
            r = results.get((mode, loop))
            cells.append("—" if r is None else "failed" if r.get("failed") else
                         f"{r['peak_over_base_mib'] / u_mib:.2f} ({step_units(mode, loop)})")
        fixed = results.get((mode, "fixed"))
        units = None if not fixed or fixed.get("failed") else max(fixed["peak_over_base_mib"] / u_mib,
                                                                 fixed_final_units(mode))
        expect = None if base_mib is None or units is None else base_mib + units * u_mib
        ratio = f"{expect / gradiend_mib:.2f}" if expect and gradiend_mib else "—"
        rows.append(f"| {mode} | {cells[0]} | {cells[1]} | {'—' if units is None else f'{units:.2f}'} "
                    f"({fixed_units(mode)}) | {gib(expect)} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="zoo model name")
    p.add_argument("--tiny-width", type=int, default=None, help="tiny-llama only: hidden size (widens the random model)")
    p.add_argument("--tiny-layers", type=int, default=None, help="tiny-llama only: layers")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {list(MODES)}")
    p.add_argument("--parts", default="trainer,step")
    p.add_argument("--sides", default="gradedit,gradiend")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-per-class", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--from-json", default=None, help="print the tables of an earlier run's JSON summary (no runs)")
    args = p.parse_args()
    if args.from_json:
        old = json.loads(Path(args.from_json).read_text())
        gradiend_mib = (old.get("gradiend") or {}).get("peak_rss_mib")
        trainer = old.get("trainer") or {}
        steps = {tuple(k.split("/")): v for k, v in (old.get("step") or {}).items()}
        base = next((r["base_rss_mib"] for r in trainer.values() if not r.get("failed")), None)
        print(f"{old['command']}\nn = {old['n']:,}\n")
        print("\n\n".join(([trainer_table(trainer, old["u_mib"], gradiend_mib)] if trainer else [])
                          + ([step_table(steps, old["u_mib"], base, gradiend_mib)] if steps else [])))
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        sys.exit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    parts, sides = args.parts.split(","), args.sides.split(",")
    tiny = args.model.startswith("tiny-")

    import gradedit
    from gradedit.models import select_parameters

    folder = OUT / "data_memory"
    folder.mkdir(parents=True, exist_ok=True)
    model_dir = None
    if tiny:
        from _memory_side import load_lm

        ds, neutral = bench_train._template_dataset(args.max_per_class), ["The river runs to the sea."] * 20
        lm = load_lm(args.model, args.tiny_width, args.tiny_layers)
        chosen = select_parameters(lm.model)
        params_json = folder / "params.json"
        folder.mkdir(parents=True, exist_ok=True)
        params_json.write_text(json.dumps(list(chosen)))
        n = sum(t.numel() for t in chosen.values())
        del lm, chosen
        data_desc = "templates (bench_train._template_dataset)"
    else:
        model_dir = Path(gradedit.zoo.prepare(args.model))
        ds, neutral, data_desc = bench_train.build_data(args.max_per_class, 200)
        params_json, n, _ = bench_train.input_space(model_dir, folder)
    paths = bench_train.export_data(ds, neutral, folder)
    u_mib = 4 * n / 1024**2
    print(f"model {args.model} (width {args.tiny_width}, layers {args.tiny_layers}); n = {n:,} input entries, "
          f"u = 4n bytes = {u_mib:.1f} MiB; data: {data_desc}, {len(ds)} rows", flush=True)
    model_arg = str(model_dir) if model_dir else args.model
    tiny_args = [a for flag, v in (("--tiny-width", args.tiny_width), ("--tiny-layers", args.tiny_layers)) if v
                 for a in (flag, str(v))]

    gradiend = None
    if "gradiend" in sides and not tiny:
        if not bench_train.GRADIEND_PY.exists():
            print(f"{bench_train.GRADIEND_PY} missing: gradiend side skipped (see docs/benchmarks.md)", flush=True)
        else:
            out_json = OUT / "runs" / "memory" / "gradiend.json"
            cmd = [str(bench_train.GRADIEND_PY), str(HERE / "_gradiend_side.py"), "--model", model_arg,
                   "--train-csv", str(paths["gradiend"]), "--neutral-csv", str(paths["neutral"]),
                   "--params-json", str(params_json), "--out", str(out_json),
                   "--experiment-dir", str(OUT / "exp" / "memory_gradiend"), "--warmup", "1",
                   "--steps", str(max(1, args.steps - 1)), "--lr", str(args.lr), "--weight-decay",
                   str(args.weight_decay), "--eval-max", "8", "--threads", str(args.threads)]
            gradiend = run(cmd, "gradiend", out_json, args.threads)
    gradiend_mib = None if not gradiend or gradiend.get("failed") else gradiend["peak_rss_mib"]

    trainer: dict[str, dict] = {}
    if "trainer" in parts and "gradedit" in sides:
        for mode in modes:
            out_json = OUT / "runs" / "memory" / f"trainer_{mode}.json"
            extra = ["--model", model_arg, *tiny_args, "--pairs-csv", str(paths["pairs"]), "--params-json",
                     str(params_json), "--experiment-dir", str(OUT / "exp" / f"memory_{mode}")]
            trainer[mode] = run(side_cmd("trainer", mode, args, out_json, extra), f"trainer_{mode}", out_json,
                                args.threads)
        compare_to_default(trainer)
    steps: dict[tuple[str, str], dict] = {}
    if "step" in parts and "gradedit" in sides:
        for mode in modes:
            for loop in ("now", "fixed"):
                out_json = OUT / "runs" / "memory" / f"step_{mode}_{loop}.json"
                steps[(mode, loop)] = run(side_cmd("step", mode, args, out_json, ["--n", str(n), "--loop", loop]),
                                          f"step_{mode}_{loop}", out_json, args.threads)

    base = next((r["base_rss_mib"] for r in trainer.values() if not r.get("failed")), None)
    print(f"\ngradiend peak RSS: {gib(gradiend_mib)} GiB" if gradiend else "\ngradiend: not run")
    md = []
    if trainer:
        md.append(trainer_table(trainer, u_mib, gradiend_mib))
    if steps:
        md.append(step_table(steps, u_mib, base, gradiend_mib))
    print("\n\n".join(md))
    exe = os.path.relpath(sys.executable, Path.cwd()) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
    summary = {"command": " ".join([exe, *sys.argv]), "args": vars(args), "n": n, "u_mib": u_mib, "data": data_desc,
               "time": time.strftime("%Y-%m-%d %H:%M:%S"), "gradiend": gradiend,
               "trainer": {m: {k: v for k, v in r.items() if k != "weights_sample"} for m, r in trainer.items()},
               "step": {f"{m}/{lp}": r for (m, lp), r in steps.items()},
               "formula_units": {m: {"trainer": trainer_units(m), "step_now": step_units(m, "now"),
                                     "step_fixed": step_units(m, "fixed"), "with_fixes": fixed_units(m)}
                                 for m in MODES},
               "tables": md}
    path = OUT / f"bench_memory{('_' + args.tag) if args.tag else ''}.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
