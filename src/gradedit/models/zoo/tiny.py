"""Tiny random-init models with locally trained tokenizers: offline, deterministic, for tests.

Each tokenizer follows the convention of its family so that target-token rules are exercised:
``tiny-gpt2`` byte-level BPE (``Ġhe``, no BOS), ``tiny-llama`` SentencePiece-style metaspace BPE
(``▁he``, BOS added), ``tiny-bert`` lower-cased WordPiece with ``[CLS] … [SEP]`` and ``[MASK]``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from ..language_model import LanguageModel

_SUBJECTS = ["he", "she", "they", "it", "the doctor", "the nurse", "my friend", "the teacher", "er", "sie"]
_VERBS = ["said", "thinks", "knows", "wrote", "believes", "saw", "hopes", "sagte", "dit", "dijo"]
_OBJECTS = [
    "that he would be late", "that she would be late", "that they left early", "the house is old",
    "his book was lost", "her letter came today", "the city is quiet", "der Mann ist hier",
    "die Frau ist dort", "le livre est rouge", "el perro come", "il gatto dorme",
]
_EXTRA = [
    "The quick brown fox jumps over the lazy dog.",
    "Das ist ein kleines Haus mit einem roten Dach.",
    "Le chat noir dort sur la chaise.",
    "El niño juega en el parque con su hermana.",
    "La ragazza legge un libro nella biblioteca.",
    "Numbers like 1, 2, 3 and symbols such as % & $ appear too.",
]


def tiny_corpus(seed: int = 0) -> list[str]:
    """A few hundred short multilingual sentences, the same for the same seed."""
    rng = random.Random(seed)
    lines = [
        f"{s[0].upper()}{s[1:]} {v} {o}."
        for s, v, o in itertools.product(_SUBJECTS, _VERBS, _OBJECTS)
    ]
    rng.shuffle(lines)
    return lines[:600] + _EXTRA * 5


def _train(tok: Tokenizer, trainer: trainers.Trainer, seed: int) -> Tokenizer:
    tok.train_from_iterator(tiny_corpus(seed), trainer=trainer)
    return tok


def gpt2_tokenizer(seed: int = 0, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    _train(tok, trainer, seed)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos)


def llama_tokenizer(seed: int = 0, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = sorted(set("".join(tiny_corpus(seed))) | set("abcdefghijklmnopqrstuvwxyzäöüßéèàñç"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=alphabet, show_progress=False,
    )
    _train(tok, trainer, seed)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def bert_tokenizer(seed: int = 0, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    _train(tok, trainer, seed)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def _seeded(build: Callable[[], PreTrainedModel], seed: int) -> PreTrainedModel:
    """Build a model with a private RNG state so callers' global seeds are left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_llama(seed: int = 0) -> LanguageModel:
    tok = llama_tokenizer(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = _seeded(lambda: LlamaForCausalLM(cfg), seed)
    return LanguageModel(model=model.eval(), tokenizer=tok, kind="clm", name="tiny-llama")


def tiny_gpt2(seed: int = 0) -> LanguageModel:
    tok = gpt2_tokenizer(seed)
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = _seeded(lambda: GPT2LMHeadModel(cfg), seed)
    return LanguageModel(model=model.eval(), tokenizer=tok, kind="clm", name="tiny-gpt2")


def tiny_bert(seed: int = 0) -> LanguageModel:
    tok = bert_tokenizer(seed)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
    )
    model = _seeded(lambda: BertForMaskedLM(cfg), seed)
    return LanguageModel(model=model.eval(), tokenizer=tok, kind="mlm", name="tiny-bert")


TINY_BUILDERS: dict[str, Callable[[int], LanguageModel]] = {
    "tiny-llama": tiny_llama,
    "tiny-gpt2": tiny_gpt2,
    "tiny-bert": tiny_bert,
}
