"""Score the German article tagger on a hand-labelled gold set (JSONL, one article occurrence a row).

Row fields: ``sentence``, ``offset`` (character offset of the article), ``article``, ``gold`` (a cell
such as ``fem_dat``, or ``none`` for a relative/demonstrative pronoun), optional ``ambiguous: true``
(the annotator's best reading, excluded from both figures) and ``source``.

* **coverage** = articles given a cell / unambiguous gold articles;
* **precision** = articles given their gold cell / articles given a cell;
* pronouns (``none``) given a cell are counted separately (they should be 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .german import CELLS, GermanArticleTagger

__all__ = ["GoldScore", "load_gold", "score_gold"]


@dataclass
class GoldScore:
    """Counts of one scoring run; ``per_cell[gold cell] = [articles, assigned, correct]``."""

    articles: int = 0
    assigned: int = 0
    correct: int = 0
    excluded_ambiguous: int = 0
    pronouns: int = 0
    pronouns_assigned: int = 0
    per_cell: dict[str, list[int]] = field(default_factory=lambda: {c: [0, 0, 0] for c in CELLS})
    errors: list[tuple[Mapping[str, Any], str]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return self.correct / self.assigned if self.assigned else float("nan")

    @property
    def coverage(self) -> float:
        return self.assigned / self.articles if self.articles else float("nan")

    def table(self) -> str:
        """A plain-text summary: the two figures, then one line per cell."""
        lines = [f"articles {self.articles} (+{self.excluded_ambiguous} ambiguous, excluded), assigned "
                 f"{self.assigned}, correct {self.correct}: precision {self.precision:.3f}, coverage "
                 f"{self.coverage:.3f}; pronouns given a cell {self.pronouns_assigned}/{self.pronouns}",
                 f"{'cell':9} {'gold':>5} {'assigned':>8} {'correct':>7}"]
        lines += [f"{c:9} {n:5d} {a:8d} {k:7d}" for c, (n, a, k) in self.per_cell.items()]
        return "\n".join(lines)


def load_gold(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a gold JSONL file; DataError when a row's offset does not point at its article."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for n, r in enumerate(rows):
        if not r["sentence"][r["offset"]:].startswith(r["article"]) or r["gold"] not in (*CELLS, "none"):
            raise DataError(f"{path}: row {n} has a bad offset or cell ({r['article']!r} at {r['offset']}, "
                            f"gold {r['gold']!r}); fix the row")
    return rows


def score_gold(rows: Iterable[Mapping[str, Any]], tagger: GermanArticleTagger | None = None) -> GoldScore:
    """Run ``tagger`` (default: HanTa + german-nouns) on every row and count (see the module docstring)."""
    tagger = tagger or GermanArticleTagger()
    score = GoldScore()
    for r in rows:
        found = [a for a in tagger.analyze(r["sentence"]) if a.offset == r["offset"]]
        cell = found[0].cell if found else None
        if r["gold"] == "none":
            score.pronouns += 1
            score.pronouns_assigned += cell is not None
            continue
        if r.get("ambiguous"):
            score.excluded_ambiguous += 1
            continue
        score.articles += 1
        counts = score.per_cell[r["gold"]]
        counts[0] += 1
        if cell is None:
            why = found[0].reason if found else "missing"
            score.reasons[why] = score.reasons.get(why, 0) + 1
            continue
        score.assigned += 1
        counts[1] += 1
        if cell == r["gold"]:
            score.correct += 1
            counts[2] += 1
        else:
            score.errors.append((r, cell))
    return score
