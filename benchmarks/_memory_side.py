"""One memory run of our trainer in one training-memory mode (run by ``bench_memory.py``, one process each).

``--part trainer``: ``Trainer.train()`` on the model, unpruned, ``--steps`` steps of one row each, the
evaluation after the last step, the default post-pruning; records the RSS before training (the base:
model, data, runtime), the sampled peak per phase and the process peak (VmHWM), the last step's
validation r and a fixed sample of the trained weights (to compare modes).

``--part step``: the encoder-decoder step alone, no base model: random source/target vectors of the
model's input size, the loop's current vector handling (``--loop now``: the example's vectors and their
stacked copies, as ``SeedTrainer._batch``) or the proposed one (``--loop fixed``: the vectors of a batch
of one used as ``[1, n]`` views, no copy). Records the peak over the RSS before the feature model.
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
from _measure import StepClock, machine_info, peak_rss_mib, rss_mib, setup_threads, write_result  # noqa: E402

MODES = {  # name -> TrainConfig fields (bench_memory.py lists the same names)
    "default": {},
    "in_backward": {"optimizer_in_backward": True},
    "bf16": {"optimizer_state": "bf16"},
    "bf16_in_backward": {"optimizer_state": "bf16", "optimizer_in_backward": True},
    "fused": {"fused_step": True},
    "fused_bf16": {"fused_step": True, "optimizer_state": "bf16"},
}
SAMPLE_BLOCKS = 8  # the compared weights: this many contiguous blocks spread over each weight


def load_lm(name: str, width: int | None, layers: int | None):  # noqa: ANN201
    """A zoo model / folder, or a widened random tiny-llama (``--tiny-width``/``--tiny-layers``)."""
    from gradedit.models import load_model

    if not (width or layers):
        return load_model(name)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gradedit.models import LanguageModel
    from gradedit.models.zoo.tiny import llama_tokenizer

    if name != "tiny-llama":
        sys.exit("--tiny-width/--tiny-layers scale tiny-llama only")
    tok = llama_tokenizer(0)
    w, n_layers = width or 64, layers or 2
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=w, intermediate_size=int(w * 2.75), num_hidden_layers=n_layers,
                      num_attention_heads=max(1, w // 64), num_key_value_heads=max(1, w // 256),
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    return LanguageModel(model=model.eval(), tokenizer=tok, kind="clm", name=f"tiny-llama-w{w}-l{n_layers}")


def weight_sample(folder: Path, block: int) -> dict[str, list[float]]:
    """``SAMPLE_BLOCKS`` contiguous blocks of ``block`` input entries of each weight of a one-latent
    FeatureModel folder, read by slices (the whole model is never loaded)."""
    from safetensors import safe_open

    out: dict[str, list[float]] = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        for key in ("encoder_weight", "encoder_bias", "decoder_weight", "decoder_bias"):
            sl = fh.get_slice(key)
            shape = sl.get_shape()
            if key == "encoder_bias":
                out[key] = fh.get_tensor(key).reshape(-1).tolist()
                continue
            n = shape[1] if key == "encoder_weight" else shape[0]  # [1, n] / [n, 1] / [n]
            starts = sorted({(n - block) * b // (SAMPLE_BLOCKS - 1) for b in range(SAMPLE_BLOCKS)}) if n > block else [0]
            vals: list[float] = []
            for lo in starts:
                part = sl[:, lo:lo + block] if key == "encoder_weight" else sl[lo:lo + block]
                vals += part.reshape(-1).tolist()
            out[key] = vals
    return out


def run_trainer(args: argparse.Namespace) -> dict:
    from gradedit.data.schema import PairDataset
    from gradedit.gradiend.train.config import TrainConfig
    from gradedit.gradiend.train.trainer import Trainer

    exp = Path(args.experiment_dir)
    shutil.rmtree(exp, ignore_errors=True)
    lm = load_lm(args.model, args.tiny_width, args.tiny_layers)
    data = PairDataset.load(args.pairs_csv, target_classes=["masc", "fem"])
    params = json.loads(Path(args.params_json).read_text()) if args.params_json else None
    cfg = TrainConfig(experiment_dir=str(exp), source=args.source, target=args.target, params=params,
                      train_batch_size=1, rows_per_gradient=1, max_steps=args.steps, eval_steps=args.steps,
                      eval_max_size=args.eval_max, learning_rate=args.lr, weight_decay=args.weight_decay,
                      seed=args.seed, max_seeds=1, pre_prune_topk=None, resume=False, early_stopping_patience=None,
                      **MODES[args.mode])
    trainer = Trainer(lm, data, ["masc", "fem"], config=cfg)
    base = rss_mib()
    clock = StepClock(args.steps)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    clock.close()
    peak = peak_rss_mib()  # before anything below reads files
    last = exp / "seed_0" / "last"
    n = int(json.loads((last / "config.json").read_text())["input_dim"])
    res = {"part": "trainer", "mode": args.mode, "config": MODES[args.mode], "model": lm.name, "n": n,
           "base_rss_mib": base, "peak_rss_mib_train": peak, **clock.summary(1, t0), "train_s": round(seconds, 2),
           "r_last": trainer.seed_results[0].history[-1]["correlation"],
           "weights_sample": weight_sample(last, args.sample_block), "machine": machine_info()}
    shutil.rmtree(exp, ignore_errors=True)
    return res


def run_step(args: argparse.Namespace) -> dict:
    """The encoder-decoder step alone on random vectors of ``--n`` entries (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from gradedit.gradiend.feature_model import FeatureModel
    from gradedit.gradiend.train.config import TrainConfig
    from gradedit.gradiend.train.optim import FeatureOptimizer

    n, steps = args.n, args.steps
    base = rss_mib()
    fm = FeatureModel(n, 1, seed=args.seed)
    opt = FeatureOptimizer(fm, TrainConfig(learning_rate=args.lr, weight_decay=args.weight_decay, **MODES[args.mode]))
    gen = torch.Generator().manual_seed(args.seed)

    def vectors() -> tuple[torch.Tensor, torch.Tensor]:  # what the gradient engine hands the loop: fresh [n] vectors
        return torch.randn(n, generator=gen), torch.randn(n, generator=gen)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        if args.loop == "now":  # as SeedTrainer._batch: the examples' pairs, then their stacked copies
            pairs = [vectors()]
            return torch.stack([q[0] for q in pairs]), torch.stack([q[1] for q in pairs])
        s, t = vectors()  # proposed for one example per rank: the engine's vectors as [1, n] views, no copy
        return s.unsqueeze(0), t.unsqueeze(0)

    def one_step() -> None:  # as SeedTrainer._train_step: everything it made is freed when it returns
        src, tgt = batch()
        if opt.fused:
            opt.fused_step(src, tgt)
        else:
            rec, _ = fm(src)
            opt.step(F.mse_loss(rec, tgt))

    peaks = []
    for _ in range(steps):
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM: the peak of this step alone
            fh.write("5")
        one_step()
        peaks.append(peak_rss_mib() - base)
    return {"part": "step", "mode": args.mode, "loop": args.loop, "n": n, "base_rss_mib": base,
            "step_peaks_over_base_mib": peaks, "peak_over_base_mib": max(peaks[1:] or peaks), "machine": machine_info()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("trainer", "step"), required=True)
    p.add_argument("--mode", choices=sorted(MODES), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="smollm2-135m", help="zoo name or HF folder (trainer part)")
    p.add_argument("--tiny-width", type=int, default=None)
    p.add_argument("--tiny-layers", type=int, default=None)
    p.add_argument("--pairs-csv", help="PairDataset CSV (trainer part)")
    p.add_argument("--params-json", default=None, help="input-space parameter names (default: our default space)")
    p.add_argument("--experiment-dir", default="benchmarks/out/exp/memory")
    p.add_argument("--n", type=int, default=None, help="input entries (step part)")
    p.add_argument("--loop", choices=("now", "fixed"), default="now", help="vector handling (step part)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--source", default="alternative")
    p.add_argument("--target", default="diff")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-max", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-block", type=int, default=4096, help="entries per compared block of each weight")
    args = p.parse_args()
    setup_threads(args.threads)
    res = run_trainer(args) if args.part == "trainer" else run_step(args)
    write_result(args.out, res)  # adds the process peak (VmHWM) and the load
    print(json.dumps({k: v for k, v in res.items() if k not in ("weights_sample", "step_times_s")}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
