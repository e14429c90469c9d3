"""The reference ``gradiend`` package's side of the encoder-evaluation benchmark (``bench_encoder.py``).

Run with the gradiend venv's interpreter (``benchmarks/.venv-gradiend/bin/python``). It does not train:
it converts OUR trained feature model (``interchange.safetensors`` / ``.json`` written by
``_gradedit_encoder_side.py train``) into a gradiend checkpoint with gradiend's own classes
(``ParamMappedGradiendModel`` with an "indices" parameter map, ``save_pretrained``,
``write_gradiend_context``), loads it back with ``TextPredictionModelWithGradiend.from_pretrained`` and
times ONE call of ``TextPredictionTrainer.evaluate_encoder(model_with_gradiend=..., split="test")``
with caching off: every test row of the two classes, its re-masked neutral twins and the neutral CSV's
sentences. Writes a JSON result (times, peak RSS during the call, correlation, every encoded row).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Window, machine_info, setup_threads, touch, write_result  # noqa: E402

CLASSES = ("masc", "fem")


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    return x if isinstance(x, int | str | bool | type(None)) else str(x)


def gradiend_checkpoint(export: Path, folder: Path, direction: dict[str, int] | None = None) -> dict:
    """Our interchange export -> a gradiend checkpoint folder (weights copied exactly).

    ``direction`` (class -> +1/-1, the sign a class encodes to) is written to ``gradiend_context.json``
    as ``feature_class_encoding_direction``: gradiend's decoder evaluation derives each class's
    feature factor from it. ``None`` leaves it to gradiend (from the trainer's class pair on load).
    """
    import torch
    from gradiend.model import ParamMappedGradiendModel
    from gradiend.model.utils import write_gradiend_context
    from safetensors.torch import load_file

    meta = json.loads((export / "interchange.json").read_text())
    t = load_file(str(export / "interchange.safetensors"))
    spec: dict[str, dict[str, Any]] = {}
    for i, (name, shape, has) in enumerate(zip(meta["names"], meta["shapes"], meta["has_index"])):
        spec[name] = ({"shape": tuple(shape), "repr": "indices", "indices": t[f"index.{i}"]} if has
                      else {"shape": tuple(shape), "repr": "all"})
    g = ParamMappedGradiendModel(meta["input_dim"], meta["latent_dim"], spec, activation_encoder="tanh",
                                 activation_decoder="id", bias_decoder="decoder_bias" in t,
                                 torch_dtype=torch.float32, device=torch.device("cpu"), base_model=meta["base_model"])
    enc, dec = g.encoder[0].linear, g.decoder[0].linear
    with torch.no_grad():
        enc.weight.copy_(t["encoder_weight"])
        enc.bias.copy_(t["encoder_bias"])
        dec.weight.copy_(t["decoder_weight"])
        if "decoder_bias" in t:
            dec.bias.copy_(t["decoder_bias"])
    shutil.rmtree(folder, ignore_errors=True)
    g.save_pretrained(str(folder), training={"training_args": {"source": meta["source"], "target": meta["target"]}})
    write_gradiend_context(str(folder), meta["source"], meta["target"], feature_class_encoding_direction=direction)
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="plain HF model folder")
    p.add_argument("--train-csv", required=True, help="gradiend merged-format CSV (same rows as ours)")
    p.add_argument("--neutral-csv", required=True, help="CSV with a 'text' column: exactly the neutral sentences")
    p.add_argument("--params-json", required=True)
    p.add_argument("--export", required=True, help="folder with interchange.safetensors / interchange.json")
    p.add_argument("--experiment-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup_threads(args.threads)

    import gradiend
    import numpy as np
    import torch
    from gradiend import TextPredictionTrainer, TrainingArguments
    from gradiend.trainer.text.prediction.model_with_gradiend import TextPredictionModelWithGradiend

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    ckpt = exp / "converted_checkpoint"
    meta = gradiend_checkpoint(Path(args.export), ckpt)
    mwg = TextPredictionModelWithGradiend.from_pretrained(str(ckpt), require_gradiend_model=True)
    loaded = mwg.gradiend
    src = json.loads((Path(args.export) / "interchange.json").read_text())["source"]
    targs = TrainingArguments(experiment_dir=str(exp / "run"), source=src, target=meta["target"],
                              params=json.loads(Path(args.params_json).read_text()), use_cache=False,
                              seed=args.seed, encoder_eval_max_size=None)
    trainer = TextPredictionTrainer(
        model=args.model, data=args.train_csv, target_classes=list(CLASSES), masked_col="masked", label_col="label",
        label_class_col="label_class", alternative_col="alternative", alternative_class_col="alternative_class",
        split_col="split", eval_neutral_data=args.neutral_csv, training_args=targs,
    )
    touch([*mwg.base_model.parameters(), *loaded.parameters()])
    with Window() as window:
        res = trainer.evaluate_encoder(model_with_gradiend=mwg, split="test", max_size=None, use_cache=False,
                                       return_df=True, plot=False)

    df = res.pop("encoder_df")
    counts = {str(k): int(v) for k, v in df["type"].value_counts().items()}
    rows = []
    for _, r in df.iterrows():  # class rows: "template" holds the text with [MASK]; "text" is filled in
        masked = next((r.get(c) for c in ("template", "masked") if isinstance(r.get(c), str) and "[MASK]" in r.get(c)),
                      None)
        rows.append({"group": str(r["type"]), "text": str(masked if masked is not None else r.get("text")),
                     "factual": _clean(r.get("factual_token", r.get("label_token"))),
                     "alternative": _clean(r.get("alternative_token")),
                     "label": _clean(r.get("label")), "encoded": float(np.asarray(r["encoded"]).reshape(-1)[0])})
    out = {
        "side": "gradiend", "version": gradiend.__version__, "path": "TextPredictionTrainer.evaluate_encoder",
        "input_dim": int(loaded.input_dim), "source": src,
        "loaded_equals_export": bool(torch.equal(loaded.encoder[0].linear.weight.detach().cpu(),
                                                 load_encoder_weight(Path(args.export)))),
        **window.summary(), "rows_encoded": int(len(df)), "rows_by_group": counts,
        "rows_per_s": round(len(df) / window.wall_s, 3),
        "columns": [str(c) for c in df.columns],
        "example_row": {str(k): _clean(v) for k, v in df.iloc[0].items()},
        "metrics": _clean({k: v for k, v in res.items() if not hasattr(v, "to_dict")}),
        "rows": rows, "machine": machine_info(),
    }
    write_result(args.out, out)
    shutil.rmtree(exp, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k not in ("rows", "metrics")}))


def load_encoder_weight(export: Path) -> Any:
    from safetensors.torch import load_file

    return load_file(str(export / "interchange.safetensors"))["encoder_weight"]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
