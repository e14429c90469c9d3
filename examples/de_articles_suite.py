"""The ``de-articles`` suite: which German article cells share parameters (issue 15.7).

    python examples/de_articles_suite.py runs/de_articles_suite                  # gemma3-270m, 8 pairs
    python examples/de_articles_suite.py /tmp/das --model tiny-llama --steps 10 --max-per-class 30   # a quick check

One GRADIEND feature model per class pair (``gradedit.gradiend.Suite``, one shared pre-pruning pass, so
all pairs live in the same input space), in two groups of four:

* **gender pairs** (same case, other gender): masc_nom-fem_nom (der/die), masc_nom-neut_nom (der/das),
  masc_acc-fem_acc (den/die), masc_dat-fem_dat (dem/der);
* **case pairs** (same gender, other case): masc_nom-masc_acc (der/den), masc_nom-masc_dat (der/dem),
  masc_acc-masc_dat (den/dem), fem_nom-fem_dat (die/der).

Each pair's rows come from ``features.build("de-articles:A-B")`` (the pair's own counterfactuals), so a
pair model sees only its two cells. The suite ends in the comparison report (Venn/UpSet, clustered
heatmap with each model's held-out encoder r, layer bars, cross-encoding) in OUT/compare/report.html.
This script then asks the question: do case pairs share more top-k parameters with each other than
gender pairs do, and how does either compare with two random top-k sets of the same size (the chance
level of ``|A∩B| / min`` is k / input size)? Writes OUT/findings.json and prints the group means.
"""

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

import gradedit as ge
from gradedit._files import write_json_atomic
from gradedit.data import features
from gradedit.data.schema import PairDataset
from gradedit.gradiend.suite import Suite

GENDER = [("masc_nom", "fem_nom"), ("masc_nom", "neut_nom"), ("masc_acc", "fem_acc"), ("masc_dat", "fem_dat")]
CASE = [("masc_nom", "masc_acc"), ("masc_nom", "masc_dat"), ("masc_acc", "masc_dat"), ("fem_nom", "fem_dat")]
MEASURES = ("overlap_min", "jaccard", "mass_overlap", "cosine_abs", "spearman")


def pair_rows(lm, pairs, max_per_class: int, seed: int) -> PairDataset:
    """One PairDataset holding every pair's own rows (each pair built, balanced and split on its own)."""
    frames = [features.build(f"de-articles:{a}-{b}", lm, seed=seed, max_size_per_class=max_per_class).to_frame()
              for a, b in pairs]
    both = pd.concat(frames, ignore_index=True)
    both["label"] = 0  # no targets across all pairs: each pair relabels its rows (Trainer: with_targets)
    return PairDataset.from_frame(both)


def group_means(comp, names: list[str], group: dict[str, str]) -> dict:
    """Mean of each similarity measure over model pairs within the gender group, within the case group, across."""
    out: dict = {}
    for m in MEASURES:
        mat = comp.matrix_frame(m)
        cells: dict[str, list[float]] = {"gender-gender": [], "case-case": [], "gender-case": []}
        for a, b in itertools.combinations(names, 2):
            key = "-".join(sorted((group[a], group[b]), key=["gender", "case"].index))
            cells[key].append(float(mat.loc[a, b]))
        out[m] = {k: {"mean": float(np.mean(v)), "n": len(v), "values": v} for k, v in cells.items()}
    return out


def shared_cell(a: str, b: str) -> bool:
    return bool(set(a.split("-vs-")) & set(b.split("-vs-")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pre-prune", type=float, default=0.01)
    ap.add_argument("--max-per-class", type=int, default=300)
    ap.add_argument("--eval-max-size", type=int, default=32, help="validation rows per evaluation during training")
    ap.add_argument("--topk", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    lm = ge.load_model(args.model)
    pairs = GENDER + CASE
    data = pair_rows(lm, pairs, args.max_per_class, args.seed)
    config = {"max_steps": args.steps, "pre_prune_topk": args.pre_prune, "pre_prune_samples": 16, "seed": args.seed,
              "eval_max_size": args.eval_max_size}
    suite = Suite(lm, data, pairs, neutral=features.neutral("de", n=100, seed=args.seed), config=config,
                  experiment_dir=args.out)
    suite.train()
    comp = suite.compare(k=args.topk)
    names = [suite.pair_name(p) for p in pairs]
    group = {**{suite.pair_name(p): "gender" for p in GENDER}, **{suite.pair_name(p): "case" for p in CASE}}
    size = suite.shared_input_space().size  # the one pre-pruned space every pair trained in (cached: no new pass)
    ov = comp.matrix_frame("overlap_min")
    share = [float(ov.loc[a, b]) for a, b in itertools.combinations(names, 2) if shared_cell(a, b)]
    apart = [float(ov.loc[a, b]) for a, b in itertools.combinations(names, 2) if not shared_cell(a, b)]
    findings = {"model": args.model, "pairs": names, "group": group, "topk": args.topk,
                "input_size": size, "chance_overlap_min": args.topk / size,
                "encoder_r": {r.name: r.encoder_r for r in comp.runs},
                "rows": {n: {s: int(((suite.pair_data(p).with_targets(list(p)).to_frame()["split"] == s)).sum())
                             for s in ("train", "val", "test")} for n, p in zip(names, pairs)},
                "groups": group_means(comp, names, group),
                "overlap_min_sharing_a_cell": {"mean": float(np.mean(share)), "n": len(share)},
                "overlap_min_sharing_no_cell": {"mean": float(np.mean(apart)), "n": len(apart)},
                "report": str(args.out / "compare" / "report.html")}
    write_json_atomic(args.out / "findings.json", findings)

    print(f"\n{args.model}: {len(names)} pair models, top-{args.topk} by |decoder weight|, input size {size}")
    print("encoder r (held-out test):", ", ".join(f"{n} {r:+.3f}" if r is not None else f"{n} -"
                                                 for n, r in findings["encoder_r"].items()))
    print(f"{'measure':14} {'gender-gender':>14} {'case-case':>10} {'gender-case':>12}")
    for m, g in findings["groups"].items():
        print(f"{m:14} {g['gender-gender']['mean']:14.3f} {g['case-case']['mean']:10.3f} {g['gender-case']['mean']:12.3f}")
    print(f"overlap_min: pairs sharing a cell {findings['overlap_min_sharing_a_cell']['mean']:.3f} "
          f"(n={len(share)}), sharing none {findings['overlap_min_sharing_no_cell']['mean']:.3f} (n={len(apart)}), "
          f"chance (two random top-{args.topk} sets) {findings['chance_overlap_min']:.4f}")
    print(f"\nwritten: {args.out / 'findings.json'}, report {findings['report']}")


if __name__ == "__main__":
    main()
