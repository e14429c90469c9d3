"""The reference ``gradiend`` package's side of the decoder benchmark (``bench_decoder.py``), public API
only, run with the gradiend venv's interpreter (``benchmarks/.venv-gradiend/bin/python``).

It does not train: it converts OUR trained feature model (the interchange export) into a gradiend
checkpoint (``_gradiend_encoder_side.gradiend_checkpoint``, class directions masc +1 / fem -1 as our
labels), loads it with ``TextPredictionTrainer.get_model(load_directory=...)`` and times ONE call of
``TextPredictionTrainer.evaluate_decoder`` with its default selector (``LMSThresholdPolicy(0.99)``,
or ``--lms-ratio``), caching off. Each ``evaluate_base_model`` call (the base model, then one per
grid point on a copy of the model) is time-stamped. After the timed window every selected edit is
written as the entries ``ModelWithGradiend.rewrite_base_model`` changes (``_decoder_heldout``).
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
from _gradiend_encoder_side import gradiend_checkpoint, load_encoder_weight  # noqa: E402
from _measure import CallStamps, Window, machine_info, setup_threads, touch, write_result  # noqa: E402
from bench_decoder import eval_summary, floats, side_parser  # noqa: E402

CLASSES = ("masc", "fem")
#: the sign each class encodes to in our trained model (our labels: first class +1)
DIRECTION = {"masc": 1, "fem": -1}


def _counts(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Rows and neutral sentences one ``evaluate_base_model`` call scores (LMS uses at most max_size_neutral)."""
    tl, nd, cap = kwargs.get("training_like_df"), kwargs.get("neutral_df"), kwargs.get("max_size_neutral")
    n_neutral = None if nd is None else (len(nd) if not cap else min(len(nd), cap))
    col = next((c for c in ("label_class", "factual_id") if tl is not None and c in tl.columns), None)
    return {"rows": None if tl is None else len(tl), "neutral": n_neutral,
            "rows_per_class": None if col is None else {str(k): int(v) for k, v in tl[col].value_counts().items()}}


def _clean(x: Any) -> Any:
    """JSON-safe copy of a result value (floats, nested dicts and lists only)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    return x if isinstance(x, int | str | bool | type(None)) else str(x)


def edit_entries(mwg: Any, learning_rate: float, feature_factor: float) -> dict:
    """The entries gradiend's rewrite changes: its rewritten copy of the model vs the base model."""
    if learning_rate == 0 or feature_factor == 0:
        return {}
    new = dict(mwg.rewrite_base_model(learning_rate=learning_rate, feature_factor=feature_factor).named_parameters())
    base = dict(mwg.base_model.named_parameters())
    missing = sorted(set(base) ^ set(new))
    if missing:
        raise RuntimeError(f"the rewritten model's parameters differ in name from the base's: {missing[:3]}")
    return changed_entries(base, new)


def main() -> None:
    p = side_parser(__doc__)
    p.add_argument("--train-csv", required=True, help="gradiend merged-format CSV (same rows as ours)")
    p.add_argument("--params-json", required=True)
    p.add_argument("--export", required=True, help="folder with interchange.safetensors / interchange.json")
    args = p.parse_args()
    ffs, lrs = floats(args.ffs), floats(args.lrs)

    setup_threads(args.threads)
    import gradiend
    import torch
    from gradiend import TextPredictionTrainer, TrainingArguments
    from gradiend.evaluator.decoder import LMSThresholdPolicy

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    ckpt = exp / "converted_checkpoint"
    meta = gradiend_checkpoint(Path(args.export), ckpt, direction=DIRECTION)
    targs = TrainingArguments(experiment_dir=str(exp / "run"), source=meta["source"], target=meta["target"],
                              params=json.loads(Path(args.params_json).read_text()), use_cache=False)
    trainer = TextPredictionTrainer(
        model=args.model, data=args.train_csv, target_classes=list(CLASSES), masked_col="masked", label_col="label",
        label_class_col="label_class", alternative_col="alternative", alternative_class_col="alternative_class",
        split_col="split", eval_neutral_data=args.neutral_csv, training_args=targs,
    )
    mwg = trainer.get_model(load_directory=str(ckpt))  # cached: evaluate_decoder uses this instance
    loaded_equal = bool(torch.equal(mwg.gradiend.encoder[0].linear.weight.detach().cpu(),
                                    load_encoder_weight(Path(args.export))))
    touch([*mwg.base_model.parameters(), *mwg.gradiend.parameters()])

    stamps = CallStamps(info=_counts)
    trainer.evaluate_base_model = stamps.wrap(trainer.evaluate_base_model)
    with Window() as window:
        res = trainer.evaluate_decoder(lrs=lrs, feature_factors=ffs, use_cache=False, split="test",
                                       max_size_training_like=args.rows_per_class, max_size_neutral=args.neutral,
                                       target_class=None, increase_target_probabilities=args.direction == "strengthen",
                                       selector=LMSThresholdPolicy(ratio=args.lms_ratio), plot=False)

    grid = res.get("grid", {})
    edits = []
    for key, v in res.items():
        if key == "grid" or not isinstance(v, dict) or "feature_factor" not in v:
            continue
        ff, lr = float(v["feature_factor"]), float(v["learning_rate"])
        path = Path(args.edits) / f"{key}.safetensors"
        m = save_edit(path, edit_entries(mwg, lr, ff), {"key": key, "feature_factor": ff, "learning_rate": lr})
        lms, base_lms = v.get("lms"), v.get("base_lms")
        edits.append({**m, "path": str(path), "selection": _clean({
            "value": v.get("value"), "lms": lms, "base_lms": base_lms,
            "lms_ratio": lms / base_lms if lms is not None and base_lms else None, "id": v.get("id")})})
    rows = {c["rows"] for c in stamps.calls}
    neutral_n = {c["neutral"] for c in stamps.calls}
    out = {
        "side": "gradiend", "version": gradiend.__version__, "call": "TextPredictionTrainer.evaluate_decoder",
        "input_dim": int(mwg.gradiend.input_dim), "loaded_equals_export": loaded_equal,
        "feature_factors": ffs, "learning_rates": lrs, "direction": args.direction,
        "selector": f"LMSThresholdPolicy(ratio={args.lms_ratio})", "lms_ratio": args.lms_ratio,
        **eval_summary(stamps, window),
        "rows_scored": rows.pop() if len(rows) == 1 else sorted(rows, key=str),
        "neutral_scored": neutral_n.pop() if len(neutral_n) == 1 else sorted(neutral_n, key=str),
        "rows_per_class_scored": stamps.calls[0]["rows_per_class"] if stamps.calls else None,
        "points": [{"id": _clean(k), "lms": _clean(v.get("lms")), "probs": _clean(v.get("probs"))}
                   for k, v in grid.items()],
        "edits": edits, "machine": machine_info(),
    }
    write_result(args.out, out)
    shutil.rmtree(exp, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k not in ("points", "point_s")}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
