"""Our side of the decoder benchmark (``bench_decoder.py``), run with the project's interpreter: load the
shared feature model (a finished run of ``_gradedit_encoder_side.py train``) and time ONE selection,
``gradedit.gradiend.evaluate.decoder.evaluate_decoder(search=...)`` on the run's ``test`` rows (the
driver left exactly ``--rows-per-class`` per class there) and the ``--neutral`` selection sentences.

Selector: gradiend's ``LMSThresholdPolicy(r)`` bounds its causal-LM LMS = 1 / (1 + mean neutral CE),
so LMS ≥ r x base ⇔ CE − CE_base ≤ (1 + CE_base)(1/r − 1). Ours gets that bound as a perplexity bound,
``perplexity:{exp((1 + CE_base)(1/r − 1)) − 1}``, with CE_base measured by the call's own base pass:
inside the timed window the base point is scored first through a point cache in a fresh folder, and
``evaluate_decoder`` (same probe fingerprint) reads it from there instead of scoring it again.

After the timed window every selected edit is written as the entries it changes (``_decoder_heldout``).
Writes a JSON result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _decoder_heldout import changed_entries, save_edit  # noqa: E402
from _measure import CallStamps, Window, machine_info, setup_threads, touch, write_result  # noqa: E402
from bench_decoder import eval_summary, floats, side_parser  # noqa: E402

CLASSES = ("masc", "fem")


def perplexity_bound(base_perplexity: float, lms_ratio: float) -> float:
    """The ``max_increase`` of our perplexity selector equal to gradiend's LMS ≥ ``lms_ratio`` x base."""
    ce = math.log(base_perplexity)
    return math.exp((1.0 + ce) * (1.0 / lms_ratio - 1.0)) - 1.0


def edit_entries(mwg: Any, learning_rate: float, feature_factor: float) -> dict:
    """The entries our rewrite (``mwg.applied``) changes: the mapped entries before and inside the block."""
    pm = mwg.param_map
    named = dict(mwg.lm.model.named_parameters())

    def gather() -> dict:
        return {n: named[n].detach().reshape(-1)[i] if i is not None else named[n].detach().reshape(-1).clone()
                for n, i in zip(pm.names, pm.indices)}

    base = gather()
    with mwg.applied(learning_rate, feature_factor):
        new = gather()
    return changed_entries(base, new, dict(zip(pm.names, pm.indices)))


def main() -> None:
    p = side_parser(__doc__)
    p.add_argument("--run-dir", required=True, help="finished run of _gradedit_encoder_side.py train")
    p.add_argument("--search", choices=("grid", "fast"), required=True)
    p.add_argument("--derivatives", default="fd")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--refine-steps", type=int, default=0)
    args = p.parse_args()
    ffs, lrs = floats(args.ffs), floats(args.lrs)
    increase = args.direction == "strengthen"

    setup_threads(args.threads)
    import pandas as pd

    import gradedit
    from gradedit.gradiend.evaluate import decoder as dec
    from gradedit.gradiend.train.trainer import Trainer
    from gradedit.models import load_model

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    lm = load_model(args.model)
    trainer = Trainer.load(args.run_dir, lm=lm)
    mwg = trainer.get_model()
    data = trainer.data.split("test")
    neutral = pd.read_csv(args.neutral_csv)["text"].astype(str).tolist()[: args.neutral]
    touch([*lm.model.parameters(), *mwg.feature_model.parameters()])

    stamps = CallStamps(info=lambda probe: {"rows": len(probe.prompts), "neutral": len(probe.neutral),
                                            "rows_per_class": {str(c): int((probe.row_class == c).sum())
                                                               for c in probe.classes}})
    dec.DecoderProbe.score = stamps.wrap(dec.DecoderProbe.score)
    cache = exp / "points"
    with Window() as window:
        probe = dec.make_probe(mwg, data, CLASSES, neutral, 16, args.rows_per_class, cache, None)
        bound = perplexity_bound(probe.base_point()["perplexity"], args.lms_ratio)
        res = dec.evaluate_decoder(mwg, data, CLASSES, neutral, target_class=None,
                                   increase_target_probabilities=increase, feature_factors=ffs, learning_rates=lrs,
                                   selector=f"perplexity:{bound!r}", refine_steps=args.refine_steps,
                                   max_rows_per_class=args.rows_per_class, cache_dir=cache, split="test",
                                   search=args.search, tolerance=args.tolerance, derivatives=args.derivatives)

    edits = []
    for key, s in res.selections.items():
        entries = edit_entries(mwg, s.learning_rate, s.feature_factor) if s.admissible else {}
        path = Path(args.edits) / f"{key}.safetensors"
        meta = save_edit(path, entries, {"key": key, "feature_factor": s.feature_factor,
                                         "learning_rate": s.learning_rate, "admissible": s.admissible})
        edits.append({**meta, "path": str(path), "selection": {
            "value": s.value, "base_value": s.base_value, "metric_ratio": s.value / s.base_value if s.base_value else None,
            "perplexity_ratio": s.perplexity / s.base_perplexity, "lms": s.lms, "base_lms": s.base_lms,
            "admissible": s.admissible, "reason": s.reason}})
    rows = {c["rows"] for c in stamps.calls}
    neutral_n = {c["neutral"] for c in stamps.calls}
    out = {
        "side": f"gradedit-{args.search}", "version": gradedit.__version__,
        "call": f"evaluate_decoder(search={args.search!r}" + (f", derivatives={args.derivatives!r})" if args.search == "fast"
                                                              else f", refine_steps={args.refine_steps})"),
        "input_dim": int(mwg.feature_model.input_dim), "feature_factors": ffs, "learning_rates": lrs,
        "direction": args.direction, "selector": f"perplexity:{bound!r}", "lms_ratio": args.lms_ratio,
        **eval_summary(stamps, window),
        "jvp_passes": int(res.info.get("jvp_passes", 0)), "library_forward_passes": res.info["forward_passes"],
        "rows_scored": rows.pop() if len(rows) == 1 else sorted(rows),
        "neutral_scored": neutral_n.pop() if len(neutral_n) == 1 else sorted(neutral_n),
        "rows_per_class_scored": stamps.calls[0]["rows_per_class"] if stamps.calls else None,
        "result_info": {k: v for k, v in res.info.items() if k != "lines"}, "lines": res.info.get("lines"),
        "points": [{"ff": q["feature_factor"], "lr": q["learning_rate"], "lms": q["lms"], "perplexity": q["perplexity"],
                    **q["metrics"]} for q in [res.base, *res.grid]],
        "edits": edits, "machine": machine_info(),
    }
    write_result(args.out, out)
    shutil.rmtree(exp, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k not in ("points", "point_s", "lines")}, default=str))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
