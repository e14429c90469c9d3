"""LoRA baseline: remove German from gemma3-270m with 16 / 64 / 256 German tokens, rank 1 and rank 4.

    OMP_NUM_THREADS=1 python examples/german_lora.py runs/german_lora

Training text: the FIRST German Bible sentences, capped at N scored tokens (``max_target_tokens``); the
KL term (weight ``--kl-weight``) is on the FIRST ``--kl-sentences`` sentences of each of fr/es/it/en.
Evaluation: the LAST ``--eval-sentences`` sentences of de/fr/es/it/en, never used in training. Prints
held-out cross-entropy deltas (nats/token, edited − base) per language, the CE change on the German
training tokens themselves, and how well the top-k KL estimate matched the full KL on the KL text.
Each edit is saved to RUN_DIR/r<rank>_t<tokens>/; all numbers to RUN_DIR/summary.json.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import gradedit as ge
from gradedit import metrics
from gradedit.data.corpora import sentences
from gradedit.edits.lora.data import TopKDist, full_kl
from gradedit.edits.lora.train import LoraConfig, train_lora

LANGS = ["de", "fr", "es", "it", "en"]


def held_out_ce(lm, evals):
    """Cross-entropy (nats/token) per language on the held-out sentences."""
    return {lang: metrics.cross_entropy(lm, texts) for lang, texts in evals.items()}


def train_token_ce(lm, texts, used):
    """Mean CE on exactly the German tokens the LoRA was trained on."""
    lp = metrics.token_logprobs(lm, texts)
    vals = [lp.values[t.text_index][lp.positions[t.text_index] == t.position] for t in used]
    return -float(torch.cat(vals).double().mean())


def mean_loss(history):
    """Mean training loss over some steps (each step's batch differs, so single steps are noisy)."""
    return sum(h["loss"] for h in history) / len(history)


@torch.no_grad()
def kl_check(lm, edit, texts, k):
    """Mean full-vocabulary KL(base ‖ edit) on ``texts`` and its top-k estimate."""
    enc = lm.tokenize(texts)
    keep = enc["attention_mask"].bool()
    keep[torch.arange(len(texts)), enc["attention_mask"].sum(-1) - 1] = False  # last token predicts nothing
    base = lm.forward_logits(enc["input_ids"], enc["attention_mask"])[keep]
    with edit.applied(lm.model):
        new = lm.forward_logits(enc["input_ids"], enc["attention_mask"])[keep]
    return float(full_kl(base, new).mean()), float(TopKDist.from_logits(base, k).kl_to(new).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=2, help="German sequences (and KL sentences) per step")
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--kl-topk", type=int, default=256, help="0 = full base distribution on the fly")
    ap.add_argument("--kl-sentences", type=int, default=2, help="per other language, from the start")
    ap.add_argument("--eval-sentences", type=int, default=30, help="per language, from the end")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    t_start = time.process_time()

    lm = ge.load_model(args.model)
    corpus = {lang: sentences(lang) for lang in LANGS}
    evals = {lang: corpus[lang][-args.eval_sentences:] for lang in LANGS}
    german = corpus["de"][:64]  # more than enough for the largest cap; max_target_tokens truncates
    kl_text = [s for lang in LANGS[1:] for s in corpus[lang][: args.kl_sentences]]
    assert not set(german) & set(evals["de"]), "training and evaluation sentences overlap"

    base = held_out_ce(lm, evals)
    rows = []
    for rank in args.ranks:
        for n_tokens in args.tokens:
            cfg = LoraConfig(rank=rank, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                             kl_weight=args.kl_weight, kl_topk=args.kl_topk or None, max_target_tokens=n_tokens)
            t0 = time.process_time()
            res = train_lora(lm, german, cfg, remove=True, other_texts=kl_text)
            t_train = time.process_time() - t0
            texts = german[: res.target_tokens[-1].text_index + 1]
            ce_train_base = train_token_ce(lm, texts, res.target_tokens)
            with res.edit.applied(lm.model):
                ce_train = train_token_ce(lm, texts, res.target_tokens)
                edited = held_out_ce(lm, evals)
            kl_full, kl_topk = kl_check(lm, res.edit, kl_text, args.kl_topk or 256)
            res.save(Path(args.run_dir) / f"r{rank}_t{n_tokens}")
            rows.append({"rank": rank, "tokens": res.n_target_tokens, "sentences": len(texts),
                         "german_tokens_read": res.edit.metadata["target_tokens_used"],
                         "train_de": ce_train - ce_train_base, "loss0": mean_loss(res.history[:4]),
                         "loss_end": mean_loss(res.history[-4:]), "kl_full": kl_full, "kl_topk": kl_topk,
                         "delta": {lang: edited[lang] - base[lang] for lang in LANGS}, "cpu_s": t_train})

    print(f"\n{args.model}: LoRA on MLP projections, {args.steps} steps, lr {args.lr}, kl_weight {args.kl_weight}, "
          f"KL top-{args.kl_topk or 'full'} on {len(kl_text)} fr/es/it/en sentences; held-out = last "
          f"{args.eval_sentences} sentences per language")
    print("base held-out CE: " + "  ".join(f"{lang} {base[lang]:.3f}" for lang in LANGS))
    head = "rank tokens  loss 1st4->last4   train-de  " + "  ".join(f"{'d' + lang:>6}" for lang in LANGS)
    print(head + "  others/de  KL(other) full/top-k  cpu s")
    for r in rows:
        d = r["delta"]
        others = sum(d[lang] for lang in LANGS[1:]) / (len(LANGS) - 1)
        print(f"{r['rank']:4d} {r['tokens']:6d}  {r['loss0']:.3f} -> {r['loss_end']:.3f}   {r['train_de']:+8.2f}  "
              + "  ".join(f"{d[lang]:+6.3f}" for lang in LANGS)
              + f"  {others / d['de'] if d['de'] > 0 else float('nan'):9.2f}  {r['kl_full']:.4f}/{r['kl_topk']:.4f}"
              + f"  {r['cpu_s']:5.0f}")
    total = time.process_time() - t_start
    print(f"total CPU time {total:.0f} s")
    summary = {"args": vars(args), "base_ce": base, "rows": rows, "cpu_s": total}
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.run_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
