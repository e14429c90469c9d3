"""Precision and coverage of the German article → cell assignment on the hand-labelled gold sets.

    python examples/de_articles_gold.py [GOLD.jsonl ...] [--errors]

Default: ``tests/data/de_articles_modern_gold.jsonl`` (modern prose written for issue 15.6, parts
``own-simple`` and ``own-complex``) and ``tests/data/de_articles_gold.jsonl`` (Bible + fortunes).
Prints per file and per source the two figures and a per-cell breakdown; with ``--errors`` also every
wrong assignment. Needs HanTa and german-nouns (``pip install --no-deps hanta==1.2.1 german-nouns==1.2.5``).
"""

import argparse
from pathlib import Path

from gradedit.data.german import GermanArticleTagger
from gradedit.data.german_gold import load_gold, score_gold

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold", nargs="*", type=Path,
                    default=[DATA / "de_articles_modern_gold.jsonl", DATA / "de_articles_gold.jsonl"])
    ap.add_argument("--errors", action="store_true", help="print every wrong assignment")
    args = ap.parse_args()
    tagger = GermanArticleTagger()
    for path in args.gold:
        rows = load_gold(path)
        sources = sorted({r.get("source", "?") for r in rows})
        for source in sources if len(sources) > 1 else []:
            part = score_gold([r for r in rows if r.get("source", "?") == source], tagger)
            print(f"{path.name} [{source}]: precision {part.precision:.3f}, coverage {part.coverage:.3f} "
                  f"({part.correct}/{part.assigned}/{part.articles})")
        score = score_gold(rows, tagger)
        print(f"== {path.name} ==\n{score.table()}\nrejected: {score.reasons}\n")
        if args.errors:
            for row, cell in score.errors:
                s, o = row["sentence"], row["offset"]
                print(f"  {cell} (gold {row['gold']}): {s[:o]}[{row['article']}]{s[o + len(row['article']):]}")


if __name__ == "__main__":
    main()
