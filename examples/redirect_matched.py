"""Matched-effect comparison of a redirect study's edit families, from its points.json.

    python examples/redirect_matched.py runs/demo-redirect-full

For each family (analytic / trained write vector on a decomposed or SVD component, LoRA) and each
surrounding-KL budget: the largest held-out P(target) any of its edits reaches within the budget
(with that edit's global KL and label); and for each P(target) level: the smallest surrounding KL
that reaches it. All numbers are the study's held-out measurements (text no edit read).
"""

import argparse
import json
from pathlib import Path

BUDGETS = (0.01, 0.02, 0.05, 0.1)
LEVELS = (1e-3, 1e-2, 0.1, 0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    args = ap.parse_args()
    points = json.loads((Path(args.run_dir) / "points.json").read_text(encoding="utf-8"))["points"]
    families = sorted({p["family"] for p in points})
    base = json.loads((Path(args.run_dir) / "summary.json").read_text(encoding="utf-8"))["base"]["p_target"]
    print(f"base P(target) at held-out fire positions: {base:.3g}")
    print("\nlargest held-out P(target) within a surrounding-KL budget (global KL, edit):")
    for fam in families:
        mine = [p for p in points if p["family"] == fam]
        cells = []
        for b in BUDGETS:
            ok = [p for p in mine if p["measured"]["surrounding_kl"] <= b]
            if ok:
                best = max(ok, key=lambda p: p["measured"]["p_target"])
                m = best["measured"]
                cells.append(f"KL<={b:g}: {m['p_target']:.3g} (g {m['global_kl']:.3g}, {best['label'].split(' ', 1)[1]})")
            else:
                cells.append(f"KL<={b:g}: -")
        print(f"  {fam:<22} " + " | ".join(cells))
    print("\nsmallest surrounding KL reaching a held-out P(target) level:")
    for fam in families:
        mine = [p for p in points if p["family"] == fam]
        cells = []
        for level in LEVELS:
            ok = [p for p in mine if p["measured"]["p_target"] >= level]
            if ok:
                best = min(ok, key=lambda p: p["measured"]["surrounding_kl"])
                cells.append(f"P>={level:g}: {best['measured']['surrounding_kl']:.3g}")
            else:
                cells.append(f"P>={level:g}: -")
        print(f"  {fam:<22} " + " | ".join(cells))


if __name__ == "__main__":
    main()
