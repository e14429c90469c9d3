"""Our GRADIEND train step against the physical floor, and how the step scales (issue 16 item 4).

    .venv/bin/python benchmarks/bench_floor.py --model smollm2-135m --tag s1     # the lead's run (~6-8 min idle)
    .venv/bin/python benchmarks/bench_floor.py --model tiny-llama --tag tiny     # smoke test (~1 min)

**Floor**: one plain forward + backward of the base model on the same row (same tokens, fp32), the loss
a single next-token cross-entropy at the prediction point, gradients only for the parameters our
step differentiates (every matrix holding at least one selected entry; ``autograd.backward(inputs=)``).
A "lean floor" also asks the HF model for the last position's logits only (``logits_to_keep=1``): what
a step could cost if the LM head were not applied to every position.

**Our step**: ``Trainer.train()`` (batch 1, one row per gradient, ``--source``/``--target``, default
diff/diff as ``TrainConfig``) on a given input space (``Trainer(input_space=...)``, so no pre-pruning
inside the timing). Step k = wall / process CPU time between optimiser updates k-1 and k (torch's global
optimiser-step hook): the row's gradient vector, the encoder-decoder forward/backward and AdamW. After
the timed steps the hook stops the run (an exception), so no evaluation or checkpoint of a large model
is paid for.

**Grid**: selected-parameter fraction (0.1%, 1%, 10% = pre-pruned by mean |diff gradient| over 16
training rows, as the trainer does; 100% = every entry of every transformer-block matrix) x prompt length
(16/32/64/128 tokens: each row's context is trimmed from the left, or lengthened on the left with neutral
text, to exactly that many tokens; rows that cannot be fitted exactly are dropped). Per cell the floor
is measured half before and half after our run (load drift shows in both); medians are reported.
**Headline (same rows)**: ``--natural-rows`` unmodified rows at 1%: one untimed epoch, then two timed
epochs (every row twice), and the floor on each of these rows twice: the same multiset of rows.
With ``--source`` != ``--target`` our step needs two backward passes; the floor stays one.

Times: wall and process CPU time are both recorded; ``--clock`` (default ``cpu``) picks the one the plot
and the verdict use. With one torch thread, CPU time is the compute a step does; on a shared machine the
wall time also counts the time spent waiting for a core (on an idle machine the two agree).

Output: a markdown table on stdout, ``benchmarks/out/bench_floor_<tag>.json`` and the plot
(``docs/img/train_step_scaling.png`` for smollm2-135m, else ``benchmarks/out/train_step_scaling_<model>.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DOC_IMG = HERE.parent / "docs" / "img" / "train_step_scaling.png"
CLASSES = ("masc", "fem")
TARGET = 1.3


class Enough(Exception):
    """Raised from the optimiser hook once the timed steps are done (stops Trainer.train early)."""


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# -------------------------------------------------------------------------------------------------
# data: rows of exactly L prompt tokens
# -------------------------------------------------------------------------------------------------
def prompt_tokens(lm: Any, prompt: str) -> int:
    """Tokens the model sees for ``prompt``, exactly as LanguageModel.prediction_logits tokenizes it."""
    return int(lm.tokenize([prompt.rstrip(" ")])["attention_mask"].sum())


def fit_prompt(lm: Any, prompt: str, length: int, filler: list[int]) -> str | None:
    """``prompt`` trimmed on the left, or preceded by filler tokens, to exactly ``length`` tokens."""
    tok = lm.tokenizer
    body = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = filler + body
    want = length - (prompt_tokens(lm, "x") - len(tok("x", add_special_tokens=False)["input_ids"]))
    for _ in range(8):
        if want < 1 or want > len(ids):
            return None
        text = tok.decode(ids[-want:]).strip()
        got = prompt_tokens(lm, text)
        if got == length:
            return text
        want += length - got
    return None


def rows_of_length(lm: Any, data: Any, length: int | None, n_train: int, filler: list[int]) -> Any:
    """A PairDataset: ``n_train`` train rows of both classes (alternating) + 2 val rows, each context
    fitted to ``length`` tokens (None: unmodified)."""
    from gradedit.data.columns import MASK, split_masked
    from gradedit.data.schema import PairDataset

    frame = data.to_frame()
    picked, val = [], []
    pools = {c: frame[(frame["split"] == "train") & (frame["factual_class"] == c)] for c in CLASSES}
    for i in range(max(len(p) for p in pools.values())):
        for c in CLASSES:
            if len(picked) < n_train and i < len(pools[c]):
                row = pools[c].iloc[i].to_dict()
                if length is not None:
                    left, right = split_masked(row["text"])
                    fitted = fit_prompt(lm, left.rstrip(), length, filler)
                    if fitted is None:
                        continue
                    row["text"] = f"{fitted} {MASK}{right}"
                picked.append(row)
    val = [r.to_dict() for _, r in frame[frame["split"] == "val"].head(2).iterrows()]
    if len(picked) < n_train:
        sys.exit(f"only {len(picked)} rows could be fitted to {length} tokens; need {n_train}")
    import pandas as pd

    return PairDataset.from_frame(pd.DataFrame(picked + val).reset_index(drop=True), target_classes=list(CLASSES))


# -------------------------------------------------------------------------------------------------
# measurements
# -------------------------------------------------------------------------------------------------
def floor_passes(lm: Any, params: list[Any], rows: tuple, order: list[int], lean: bool = False) -> list[tuple]:
    """(wall, CPU) of one plain forward + backward per row index in ``order``."""
    import torch
    import torch.nn.functional as F

    from gradedit.gradiend.gradients import only_these_require_grad

    texts, factual = rows[0], rows[1]
    keep = {str(i): p for i, p in enumerate(params)}
    out = []
    for i in order:
        t0, c0 = time.perf_counter(), time.process_time()
        with only_these_require_grad(lm.model, keep), torch.enable_grad():
            enc = lm.tokenize([texts[i].rstrip(" ")])
            kw = {"logits_to_keep": 1} if lean else {}
            logits = lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kw).logits
            loss = F.cross_entropy(logits[0, -1:].float(), factual[i : i + 1])
            torch.autograd.backward(loss, inputs=params)
        for p in params:
            p.grad = None
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def our_steps(lm: Any, data: Any, pmap: Any, args: argparse.Namespace, warmup: int, steps: int, folder: Path) -> dict:
    """Per-step (wall, CPU) of Trainer.train on ``pmap``: steps warmup+1 .. warmup+steps."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from gradedit.gradiend.train import TrainConfig, Trainer

    stamps: list[tuple[float, float]] = []
    total = warmup + steps

    def hook(*_: Any) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
        if len(stamps) >= total:
            raise Enough

    shutil.rmtree(folder, ignore_errors=True)
    cfg = TrainConfig(experiment_dir=str(folder), source=args.source, target=args.target, train_batch_size=1,
                      rows_per_gradient=1, max_steps=total + 1, eval_steps=total + 1, eval_max_size=2, seed=0,
                      max_seeds=1, resume=False, early_stopping_patience=None)
    t0 = time.perf_counter()
    trainer = Trainer(lm, data, list(CLASSES), config=cfg, input_space=pmap)
    handle = register_optimizer_step_post_hook(hook)
    try:
        trainer.train()
    except Enough:
        pass
    finally:
        handle.remove()
        shutil.rmtree(folder, ignore_errors=True)
    if len(stamps) < total:
        raise RuntimeError(f"the optimiser hook fired {len(stamps)} times for {total} steps")
    w = [b[0] - a[0] for a, b in zip(stamps[warmup - 1 :], stamps[warmup:])]
    c = [b[1] - a[1] for a, b in zip(stamps[warmup - 1 :], stamps[warmup:])]
    return {"wall": w, "cpu": c, "to_first_step_s": stamps[0][0] - t0}


def cell(lm: Any, data: Any, pmap: Any, params: list[Any], args: argparse.Namespace, warmup: int, steps: int,
         floor_order: list[int], folder: Path, lean: bool) -> dict[str, Any]:
    """One grid cell: floor (half before, half after), our steps, optional lean floor."""
    texts, f, _, _ = data.split("train").model_inputs(lm)
    rows = (texts, f)
    half = len(floor_order) // 2
    floor_passes(lm, params, rows, floor_order[:1])  # warm-up pass
    before = floor_passes(lm, params, rows, floor_order[:half])
    ours = our_steps(lm, data, pmap, args, warmup, steps, folder)
    after = floor_passes(lm, params, rows, floor_order[half:])
    fl = before + after
    res = {"tokens": sorted({prompt_tokens(lm, t) for t in texts}), "step_wall_s": ours["wall"],
           "step_cpu_s": ours["cpu"], "floor_wall_s": [x[0] for x in fl], "floor_cpu_s": [x[1] for x in fl],
           "to_first_step_s": ours["to_first_step_s"]}
    if lean:
        ln = floor_passes(lm, params, rows, floor_order)
        res.update(lean_floor_wall_s=[x[0] for x in ln], lean_floor_cpu_s=[x[1] for x in ln])
    for k in [k for k in res if k.endswith("_s") and isinstance(res[k], list)]:
        res[k.removesuffix("_s") + "_median_s"] = median(res[k])
    res["ratio_wall"] = res["step_wall_median_s"] / res["floor_wall_median_s"]
    res["ratio_cpu"] = res["step_cpu_median_s"] / res["floor_cpu_median_s"]
    return res


# -------------------------------------------------------------------------------------------------
# report
# -------------------------------------------------------------------------------------------------
def table(cells: list[dict], head: dict | None, clock: str) -> str:
    """Markdown table, the headline (same rows) first; the ratio of ``clock`` time in bold."""
    bw, bc = ("**", "") if clock == "wall" else ("", "**")
    rows = [f"| selected | entries | prompt tokens | step wall s | floor wall s | {bw}step ÷ floor (wall){bw} | step CPU s "
            f"| floor CPU s | {bc}step ÷ floor (CPU){bc} | lean floor wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in ([head] if head else []) + cells:
        toks = c["tokens"]
        tok = f"{toks[0]}" if len(toks) == 1 else f"{toks[0]}–{toks[-1]} (same rows)"
        lean = f"{c['lean_floor_wall_median_s']:.3f}" if "lean_floor_wall_median_s" in c else "—"
        rows.append(f"| {c['fraction']:.1%} | {c['entries']:,} | {tok} | {c['step_wall_median_s']:.3f} "
                    f"| {c['floor_wall_median_s']:.3f} | {bw}{c['ratio_wall']:.2f}{bw} | {c['step_cpu_median_s']:.3f} "
                    f"| {c['floor_cpu_median_s']:.3f} | {bc}{c['ratio_cpu']:.2f}{bc} | {lean} |")
    return "\n".join(rows)


def plot(cells: list[dict], path: Path, title: str, clock: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fracs = sorted({c["fraction"] for c in cells})
    lengths = sorted({c["length"] for c in cells})
    at = {(c["fraction"], c["length"]): c for c in cells}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.5, 4.3))
    for i, n in enumerate(lengths):
        color = f"C{i}"
        a1.plot([100 * f for f in fracs], [at[f, n][f"step_{clock}_median_s"] for f in fracs], "o-", color=color,
                label=f"{n} tokens: our step")
        a1.plot([100 * f for f in fracs], [at[f, n][f"floor_{clock}_median_s"] for f in fracs], "s--", color=color,
                alpha=0.6, label=f"{n} tokens: floor (fwd+bwd)")
    a1.set(xscale="log", yscale="log", xlabel="selected entries (% of the block matrices)",
           ylabel=f"{clock} s per step (median)", title="step time vs selected fraction")
    a1.legend(fontsize=7, ncol=2)
    for i, f in enumerate(fracs):
        a2.plot(lengths, [at[f, n][f"ratio_{clock}"] for n in lengths], "o-", color=f"C{i}", label=f"{f:.1%} selected")
    a2.axhline(TARGET, ls=":", color="k", label=f"target {TARGET}x")
    a2.axhline(1.0, ls="-", color="0.7", lw=0.8)
    a2.set_xscale("log", base=2)
    a2.set_xticks(lengths, [str(n) for n in lengths])
    a2.set(xlabel="prompt tokens", ylabel=f"our step / floor ({clock} time, medians)", title="ratio to the physical floor")
    a2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="zoo model name or model folder")
    p.add_argument("--fractions", default="0.001,0.01,0.1,1", help="selected fractions of the input space")
    p.add_argument("--lengths", default="16,32,64,128", help="prompt lengths in tokens")
    p.add_argument("--steps", type=int, default=5, help="timed steps (and floor passes) per cell")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them (>= 1)")
    p.add_argument("--natural-rows", type=int, default=8, help="rows of the same-rows headline at 1%% (0: skip)")
    p.add_argument("--headline-fraction", type=float, default=0.01)
    p.add_argument("--source", default="diff")
    p.add_argument("--target", default="diff")
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--max-per-class", type=int, default=200, help="en-pronouns rows per class")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="time the plot and the headline verdict use (the table shows both): process CPU time is "
                        "what a step computes; on a shared machine wall time also counts waiting for a core")
    p.add_argument("--plot", default="", help="PNG path (default: docs/img/train_step_scaling.png for "
                   "smollm2-135m, else benchmarks/out/train_step_scaling_<model>.png)")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 2:
        sys.exit("--warmup must be >= 1 and --steps >= 2")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("GRADEDIT_NO_PROGRESS", "1")
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from gradedit.data import features
    from gradedit.gradiend.gradients import GradientEngine
    from gradedit.gradiend.rows import Rows, balanced_cap
    from gradedit.gradiend.train.pruning import resolve_topk, top_entries
    from gradedit.models import load_model
    from gradedit.models.param_map import ParamMap

    fractions, lengths = floats(args.fractions), [int(x) for x in floats(args.lengths)]
    t_start = time.perf_counter()
    lm = load_model(args.model)
    data = features.build("en-pronouns", lm, max_size_per_class=args.max_per_class).with_targets(list(CLASSES))
    filler_text = " ".join(features.neutral("en", n=200))
    filler = lm.tokenizer(filler_text, add_special_tokens=False)["input_ids"][: max(lengths) + 64]
    engine = GradientEngine(lm)
    full = ParamMap.from_params(engine.params)

    # pre-pruning scores once (as the trainer: mean |diff gradient| over a balanced sample of training rows)
    train = data.split("train")
    train = train.where(train.to_frame()["label"].to_numpy() != 0)
    texts, f_ids, a_ids, labels = train.model_inputs(lm)
    sample = balanced_cap(Rows(list(texts), f_ids, a_ids, labels), args.pre_prune_samples, 0)
    acc = {n: torch.zeros_like(q, dtype=torch.float32) for n, q in engine.params.items()}
    t0 = time.perf_counter()
    for i in range(len(sample)):
        engine.each_gradient([sample.texts[i]], sample.factual[i : i + 1], sample.alternative[i : i + 1], "diff",
                             lambda n, g: acc[n].add_(g.abs()))
    maps: dict[float, Any] = {}
    for frac in sorted(set(fractions) | ({args.headline_fraction} if args.natural_rows else set())):
        if frac >= 1:
            maps[frac] = full
            continue
        keep = top_entries(acc, resolve_topk(frac, full.size))
        maps[frac] = full.select(torch.cat([keep[n] + off for n, off in zip(full.names, full.offsets) if keep[n].numel()]))
    prune_s = time.perf_counter() - t0
    acc.clear()

    per_cell = args.warmup + args.steps
    datasets = {n: rows_of_length(lm, data, n, per_cell, filler) for n in lengths}
    # plan: one floor pass per length (every block matrix) to estimate the run time
    probe = {}
    for n in lengths:
        ds = datasets[n]
        t_, f_, _, _ = ds.split("train").model_inputs(lm)
        probe[n] = median([w for w, _ in floor_passes(lm, list(engine.params.values()), (t_, f_), [0, 0, 1])[1:]])
    passes = per_cell + args.steps + 1  # our steps + floor passes (+ warm-up) per cell
    est = len(fractions) * sum(probe.values()) * passes * 1.3 + (probe[min(lengths)] * 6 * args.natural_rows if args.natural_rows else 0)
    print(f"plan: {args.model}, {args.threads} thread(s), source {args.source} -> target {args.target}, batch 1; "
          f"input space {full.size:,} entries in {len(full.names)} matrices; fractions {fractions} "
          f"(entries {[maps[f].size for f in fractions]}, in {[len(maps[f].names) for f in fractions]} matrices; "
          f"pre-pruning scores over {len(sample)} rows took {prune_s:.1f} s) x lengths {lengths}: {len(fractions) * len(lengths)} "
          f"cells of {args.warmup}+{args.steps} steps and {args.steps} floor passes"
          f"{f'; headline: {args.natural_rows} unmodified rows at {args.headline_fraction:.1%}' if args.natural_rows else ''}. "
          f"One floor pass: " + ", ".join(f"{n} tok {probe[n]:.3f} s" for n in lengths) +
          f"; estimated {est / 60:.1f} min (more for the unpruned cells' encoder-decoder); load {os.getloadavg()[0]:.1f}",
          flush=True)

    folder = OUT / "floor_runs" / (args.tag or "default")
    lean_frac = args.headline_fraction if args.headline_fraction in fractions else fractions[0]
    cells: list[dict] = []
    for frac in fractions:
        pmap = maps[frac]
        params = [engine.params[n] for n in pmap.names]
        for n in lengths:
            order = list(range(args.steps))  # every row of the cell has the same length: any rows will do
            res = cell(lm, datasets[n], pmap, params, args, args.warmup, args.steps, order, folder, frac == lean_frac)
            res.update(fraction=frac, length=n, entries=pmap.size, matrices=len(pmap.names), load=os.getloadavg()[0])
            cells.append(res)
            print(f"  {frac:.1%} x {n} tok: step {res['step_wall_median_s']:.3f} s (CPU {res['step_cpu_median_s']:.3f}), "
                  f"floor {res['floor_wall_median_s']:.3f} s (CPU {res['floor_cpu_median_s']:.3f}): "
                  f"x{res['ratio_wall']:.2f} wall, x{res['ratio_cpu']:.2f} CPU (load {res['load']:.1f})", flush=True)
    head = None
    if args.natural_rows:
        m = args.natural_rows
        ds = rows_of_length(lm, data, None, m, filler)
        pmap = maps[args.headline_fraction]
        params = [engine.params[n] for n in pmap.names]
        head = cell(lm, ds, pmap, params, args, m, 2 * m, list(range(m)) * 2, folder, True)
        head.update(fraction=args.headline_fraction, length=None, entries=pmap.size, matrices=len(pmap.names))
        print(f"  headline {args.headline_fraction:.1%}, {m} unmodified rows ({head['tokens'][0]}-{head['tokens'][-1]} "
              f"tokens): step {head['step_wall_median_s']:.3f} s, floor {head['floor_wall_median_s']:.3f} s: "
              f"x{head['ratio_wall']:.2f} wall, x{head['ratio_cpu']:.2f} CPU", flush=True)

    md = table(cells, head, args.clock)
    print()
    print(md)
    if head:
        met = "met" if head[f"ratio_{args.clock}"] <= TARGET else "NOT met"
        print(f"\nheadline: our pre-pruned step = {head['ratio_cpu']:.2f}x the floor on the same rows in CPU time "
              f"({head['ratio_wall']:.2f}x wall); target <= {TARGET}x ({args.clock}): {met}")
    plot_path = Path(args.plot) if args.plot else (DOC_IMG if args.model == "smollm2-135m"
                                                   else OUT / f"train_step_scaling_{Path(args.model).name}.png")
    plot(cells, plot_path, f"GRADIEND train step vs one plain forward+backward: {args.model}, batch 1, "
                           f"{args.source}->{args.target}, {args.threads} thread(s), {args.clock} time", args.clock)
    summary = {"command": " ".join([sys.executable, *sys.argv]), "args": vars(args), "model": args.model,
               "input_space": full.size, "pre_prune_s": prune_s, "torch": torch.__version__, "cpus": os.cpu_count(),
               "headline": head, "cells": cells, "table": md, "plot": str(plot_path),
               "seconds": time.perf_counter() - t_start}
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"bench_floor{'_' + args.tag if args.tag else ''}.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} and {plot_path} ({summary['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
