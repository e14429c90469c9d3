"""Our side of the encoder-evaluation benchmark (``bench_encoder.py``), run with the project's interpreter.

Two modes, each its own process:

- ``train``: train ONE feature model (pre-pruned, a few steps; not timed), keep the finished run folder
  and export the model in a neutral format (``interchange.safetensors`` + ``interchange.json``: encoder
  and decoder weights, the input space as parameter names, shapes and flat indices) that the gradiend
  side turns into a gradiend checkpoint. Both sides then evaluate exactly these weights.
- ``eval``: load that run (``Trainer.load``) and time ONE call of ``Trainer.evaluate_encoder(split="test")``
  (all test rows of the two classes + identity, neutral-masked and neutral rows; JVP encodings).

- ``reference``: an independent oracle that uses no gradedit code (plain ``transformers`` + torch): for
  each class row of an ``eval`` result, one forward + backward of the HF model on the prompt with the
  ``source`` loss read at the LAST prompt position (the next token after the whole context, what ours
  encodes) and one position earlier (where a label placed on the last prompt token lands after HF's
  internal label shift); each gradient is gathered into the exported input space and encoded with the
  exported encoder, ``tanh(w_e . g + b_e)``.

Writes a JSON result (times, peak RSS during the call, correlation, every encoded row).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Window, machine_info, setup_threads, touch, write_result  # noqa: E402

CLASSES = ("masc", "fem")


def export_interchange(fm: object, folder: Path, source: str, target: str, model_dir: str) -> dict:
    """Write ``fm``'s weights and input space for the gradiend side (stdlib + safetensors readable)."""
    import torch
    from safetensors.torch import save_file

    pm = fm.param_map  # type: ignore[attr-defined]
    tensors = {"encoder_weight": fm.encoder_weight.detach().contiguous(),  # type: ignore[attr-defined]
               "encoder_bias": fm.encoder_bias.detach().contiguous(),  # type: ignore[attr-defined]
               "decoder_weight": fm.decoder_weight.detach().contiguous()}  # type: ignore[attr-defined]
    if fm.decoder_bias is not None:  # type: ignore[attr-defined]
        tensors["decoder_bias"] = fm.decoder_bias.detach().contiguous()  # type: ignore[attr-defined]
    for i, idx in enumerate(pm.indices):
        if idx is not None:
            tensors[f"index.{i}"] = idx.to(torch.int64).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "interchange.safetensors"))
    meta = {"names": list(pm.names), "shapes": [list(s) for s in pm.shapes],
            "has_index": [idx is not None for idx in pm.indices], "input_dim": int(pm.size),
            "latent_dim": int(fm.latent_dim), "source": source, "target": target,  # type: ignore[attr-defined]
            "classes": list(CLASSES), "base_model": model_dir}
    (folder / "interchange.json").write_text(json.dumps(meta))
    return meta


def train(args: argparse.Namespace) -> None:
    import pandas as pd

    import gradedit
    from gradedit.data.schema import PairDataset
    from gradedit.gradiend.evaluate.decoder import lr_scale
    from gradedit.gradiend.train.config import TrainConfig
    from gradedit.gradiend.train.trainer import Trainer
    from gradedit.models import load_model

    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    lm = load_model(args.model)
    data = PairDataset.load(args.pairs_csv, target_classes=list(CLASSES))
    neutral = pd.read_csv(args.neutral_csv)["text"].astype(str).tolist()
    cfg = TrainConfig(
        experiment_dir=str(run), source=args.source, target=args.target,
        params=json.loads(Path(args.params_json).read_text()), train_batch_size=1, rows_per_gradient=1,
        max_steps=args.train_steps, eval_steps=args.train_steps, eval_max_size=args.eval_max,
        learning_rate=args.train_lr, weight_decay=args.weight_decay, seed=args.seed, max_seeds=1,
        pre_prune_topk=args.pre_prune, pre_prune_samples=args.pre_prune_samples, resume=False,
    )
    trainer = Trainer(lm, data, list(CLASSES), neutral=neutral, config=cfg)
    t0 = time.perf_counter()
    fm = trainer.train()
    train_s = time.perf_counter() - t0
    meta = export_interchange(fm, Path(args.export), args.source, args.target, args.model)
    res = trainer.seed_results[0]
    out = {"side": "gradedit-train", "version": gradedit.__version__, "train_s": round(train_s, 2),
           "input_dim": meta["input_dim"], "params_with_entries": len(meta["names"]),
           "val_correlation": res.correlation, "best_step": res.best_step,
           "lr_scale": lr_scale(trainer.get_model()), "machine": machine_info()}
    write_result(args.out, out)
    print(json.dumps(out))


def evaluate(args: argparse.Namespace) -> None:
    import numpy as np

    import gradedit
    from gradedit.gradiend.evaluate.encoder import evaluate_encoder
    from gradedit.gradiend.train.trainer import Trainer
    from gradedit.models import load_model

    lm = load_model(args.model)
    trainer = Trainer.load(args.run_dir, lm=lm)
    fm = trainer.feature_model
    touch([*lm.model.parameters(), *fm.parameters()])
    with Window() as window:
        if args.batch_size:  # the module function: same rows, another JVP batch size
            res = evaluate_encoder(trainer.get_model(), trainer.data, trainer.classes, neutral=trainer.neutral,
                                   split="test", seed=trainer.config.seed, batch_size=args.batch_size)
        else:  # the user's path (JVP, batch 8); also writes encoder_results_test.json + rows CSV
            res = trainer.evaluate_encoder(split="test")
    rows = res.rows
    counts = {str(k): int(v) for k, v in rows["data_type"].value_counts().items()}
    out = {
        "side": "gradedit", "version": gradedit.__version__, "path": (f"evaluate_encoder(batch_size={args.batch_size})"
                                                                     if args.batch_size else "Trainer.evaluate_encoder"),
        "input_dim": int(fm.input_dim), "source": trainer.config.source,
        **window.summary(), "rows_encoded": int(len(rows)), "rows_by_group": counts,
        "rows_per_s": round(len(rows) / window.wall_s, 3),
        "correlation": res.correlation, "correlation_with_neutral": res.correlation_with_neutral,
        "accuracy_binary": res.accuracy_binary, "mean_by_class": res.mean_by_class,
        "rows": [{"group": g, "text": t, "factual": f, "alternative": a, "label": int(y), "encoded": float(h)}
                 for g, t, f, a, y, h in zip(rows["data_type"], rows["text"], rows["factual"], rows["alternative"],
                                             rows["label"], np.asarray(rows["encoded"], dtype=float))],
        "machine": machine_info(),
    }
    write_result(args.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))


def reference(args: argparse.Namespace) -> None:
    """Encodings of the class rows of ``--rows-json`` recomputed with plain torch (see the module docstring)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = Path(args.export)
    meta = json.loads((export / "interchange.json").read_text())
    t = load_file(str(export / "interchange.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    named = dict(model.named_parameters())
    chosen = [named[n] for n in meta["names"]]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    w, b = t["encoder_weight"][0].double(), float(t["encoder_bias"][0])

    def encode(ids: torch.Tensor, f: int, a: int, pos: int) -> float:
        logits = model(input_ids=ids).logits[0, pos].float()
        lp = torch.log_softmax(logits, -1)
        loss = {"factual": -lp[f], "alternative": -lp[a], "diff": logits[a] - logits[f]}[meta["source"]]
        grads = torch.autograd.grad(loss, chosen)
        parts = [g.reshape(-1)[t[f"index.{i}"]] if has else g.reshape(-1)
                 for i, (g, has) in enumerate(zip(grads, meta["has_index"]))]
        return float(torch.tanh(w @ torch.cat(parts).double() + b))

    rows = [r for r in json.loads(Path(args.rows_json).read_text())["rows"] if r["group"] == "training"]
    out = []
    for r in rows[: args.max_rows or None]:
        prompt = r["text"].split("[MASK]", 1)[0].rstrip()
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        f, a = (tok(w_, add_special_tokens=False)["input_ids"][0] for w_ in (r["factual"], r["alternative"]))
        out.append({"text": r["text"], "factual": r["factual"], "label": r["label"], "tokens": int(ids.shape[1]),
                    "last": encode(ids, f, a, -1), "one_earlier": encode(ids, f, a, -2) if ids.shape[1] > 1 else None})
    write_result(args.out, {"side": "reference", "source": meta["source"], "rows": out})
    print(f"reference encodings of {len(out)} class rows written to {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=("train", "eval", "reference"))
    p.add_argument("--model", required=True, help="plain HF model folder")
    p.add_argument("--run-dir", default="", help="our experiment folder (train writes it, eval reads it)")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    # train only
    p.add_argument("--pairs-csv")
    p.add_argument("--neutral-csv")
    p.add_argument("--params-json")
    p.add_argument("--export", help="folder for interchange.safetensors / interchange.json")
    p.add_argument("--source", default="alternative")
    p.add_argument("--target", default="diff")
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--eval-max", type=int, default=16, help="validation rows (one evaluation, after the last step)")
    p.add_argument("--pre-prune", type=float, default=0.01)
    p.add_argument("--pre-prune-samples", type=int, default=16)
    p.add_argument("--train-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    # eval only
    p.add_argument("--batch-size", type=int, default=0, help="0: Trainer.evaluate_encoder (batch 8)")
    # reference only (also --export)
    p.add_argument("--rows-json", help="an eval result whose class rows are recomputed")
    p.add_argument("--max-rows", type=int, default=0, help="0: every class row")
    args = p.parse_args()
    setup_threads(args.threads)
    {"train": train, "eval": evaluate, "reference": reference}[args.mode](args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
