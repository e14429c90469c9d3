"""Blast radius: an edit's effect on its target, KL to the base model and cross-entropy change per
corpus, next to a random edit of the same structure and norm; Pareto sweeps over edit strengths.

    report = blast_radius(lm, edit, {"en": en, "de": de}, target="de")
    print(report.summary()); report.to_frame(); report.save("blast.json")
"""

from __future__ import annotations

from .control import random_like
from .pareto import pareto_front, pareto_sweep
from .radius import blast_radius, evaluate_edits
from .report import TARGET_KEY, BlastReport, TargetSpec

__all__ = [
    "TARGET_KEY",
    "BlastReport",
    "TargetSpec",
    "blast_radius",
    "evaluate_edits",
    "pareto_front",
    "pareto_sweep",
    "random_like",
]
