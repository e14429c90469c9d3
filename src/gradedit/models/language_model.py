"""The language-model wrapper: an HF model + tokenizer, target-token ids, batched logits."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import TokenError
from .dispatch import autocast_dtype, canonical_autocast, input_device, refuse_dispatched

logger = logging.getLogger(__name__)

ModelKind = Literal["mlm", "clm"]


@dataclass
class LanguageModel:
    """An HF language model with its tokenizer.

    Attributes:
        model: the ``transformers`` model (``*ForCausalLM`` or ``*ForMaskedLM``), in eval mode.
        tokenizer: its tokenizer; a pad token is always set.
        kind: ``"clm"`` (next-token prediction) or ``"mlm"`` (masked-token prediction).
        name: zoo name, local path or hub id it was loaded from.
        autocast: ``"bf16"``, ``"fp16"`` or ``None`` (default): the lower precision that forward-only
            scoring runs in, inside :meth:`inference` only (metrics enter it; gradient, JVP and
            training forwards never do). Logits come back as fp32 either way.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: ModelKind
    name: str
    autocast: str | None = None
    _token_cache: dict[str, int] = field(default_factory=dict, repr=False)
    _token_cache_flags: dict[str, bool] = field(default_factory=dict, repr=False)
    _autocasting: int = field(default=0, repr=False)  # depth of inference() blocks running under autocast

    def __post_init__(self) -> None:
        if self.kind not in ("mlm", "clm"):
            raise ValueError(f"kind must be 'mlm' or 'clm', got {self.kind!r}")
        self.autocast = canonical_autocast(self.autocast)
        ensure_pad_token(self.tokenizer, self.model)
        if self.kind == "mlm" and self.tokenizer.mask_token_id is None:
            raise ValueError(f"{self.name}: a masked LM needs a tokenizer with a mask token")

    @property
    def device(self) -> torch.device:
        """Where inputs go: the model's device (the input embedding's execution device under a device map)."""
        return input_device(self.model)

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Forward-only scoring: no gradients, and the model's :attr:`autocast` (bf16/fp16) if set.

        Enter it around a forward pass only (never around a ``yield`` of a generator). Forwards in
        the block return fp32 logits; under fp16, non-finite logits are logged once (fp16 overflows
        where bf16 and fp32 do not: use bf16).
        """
        dtype = autocast_dtype(self.autocast)
        with torch.no_grad():
            if dtype is None:
                yield
                return
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                self._autocasting += 1
                try:
                    yield
                finally:
                    self._autocasting -= 1

    @property
    def vocab_size(self) -> int:
        """Size of the output distribution (the model's logits dimension)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def token_id(self, word: str) -> int:
        """The id of ``word`` as ONE token, honouring the tokenizer's leading-space convention.

        ``" he"`` is the word after a space (GPT-2 ``Ġhe``, SentencePiece ``▁he``); ``"he"`` is the
        piece without a space marker. WordPiece has no such marker: both map to ``he``.

        Raises:
            TokenError: the word splits into several pieces (they are named in the message).
        """
        if word in self._token_cache:
            return self._token_cache[word]
        if not word or not word.strip():
            raise TokenError(f"{word!r} is empty or only whitespace; give a word such as ' he'")
        tid = _single_token_id(self.tokenizer, word)
        self._token_cache[word] = tid
        return tid

    def is_single_token(self, word: str) -> bool:
        """Whether ``token_id(word)`` succeeds (the word is exactly one token)."""
        try:
            self.token_id(word)
        except TokenError:
            return False
        return True

    def token_ids(self, words: Iterable[str]) -> list[int]:
        """``token_id`` for each word; the error names every word that is not one token."""
        ids, bad = [], []
        for w in words:
            try:
                ids.append(self.token_id(w))
            except TokenError as err:
                bad.append(str(err))
        if bad:
            raise TokenError("; ".join(bad))
        return ids

    def tokenize(self, texts: Sequence[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Tokenize a batch with padding on ``padding_side``; tensors on the model's device.

        Returns ``input_ids``, ``attention_mask`` [B, T] and ``special_tokens_mask`` [B, T].
        """
        old = self.tokenizer.padding_side
        self.tokenizer.padding_side = padding_side
        try:
            enc = self.tokenizer(
                list(texts), return_tensors="pt", padding=True, return_special_tokens_mask=True
            )
        finally:
            self.tokenizer.padding_side = old
        return {k: v.to(self.device) for k, v in enc.items() if k != "token_type_ids"}

    def forward_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       parameters: Mapping[str, torch.Tensor] | None = None,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] with position ids from the mask, so either padding side is exact.

        ``parameters`` substitutes tensors for the named parameters in this call only
        (``torch.func.functional_call``), e.g. dual tensors for forward-mode AD. Gradients flow when
        called outside ``torch.no_grad``. Inside :meth:`inference` with an :attr:`autocast` set, the
        forward runs in that precision and the logits are cast to fp32.

        ``keep`` (sorted sequence positions ``[K]``): logits [B, K, V] at those positions only, the LM
        head skipped elsewhere (HF's ``logits_to_keep``); a model without that argument computes all
        positions and the result is sliced, so the values are the same either way.

        Raises:
            ConfigError: gradients or ``parameters`` on a model dispatched by a device map.
        """
        if parameters or torch.is_grad_enabled():
            refuse_dispatched(self.model, "a forward with gradients or substituted parameters (training, GRADIEND "
                                          "gradients, JVP encodings, the decoder's fast search, fitting an edit)")
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._accepts_position_ids():
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        sliced_by_model = False
        if keep is not None and self._accepts("logits_to_keep"):
            kwargs["logits_to_keep"], sliced_by_model = keep.to(input_ids.device), True
        if parameters:
            from torch.func import functional_call

            out = functional_call(self.model, dict(parameters), args=(), kwargs=kwargs, strict=False, tie_weights=True)
            logits = out.logits
        else:
            logits = self.model(**kwargs).logits
        if keep is not None and not sliced_by_model:
            logits = logits[:, keep.to(logits.device)]
        if parameters:
            return logits
        if self._autocasting and logits.dtype in (torch.bfloat16, torch.float16):
            fp16 = autocast_dtype(self.autocast) == torch.float16
            if fp16 and not self._token_cache_flags.get("fp16_warned"):
                if not bool(torch.isfinite(logits).all()):
                    self._token_cache_flags["fp16_warned"] = True
                    logger.warning("%s: fp16 autocast gave non-finite logits (fp16 overflows at 65504); use "
                                   "autocast='bf16' (fp32's range) or none", self.name)
            logits = logits.float()
        return logits

    def _accepts_position_ids(self) -> bool:
        return self._accepts("position_ids")

    def _accepts(self, argument: str) -> bool:
        """Whether the HF model's ``forward`` takes ``argument`` (cached)."""
        if argument not in self._token_cache_flags:
            params = inspect.signature(self.model.forward).parameters
            self._token_cache_flags[argument] = argument in params
        return self._token_cache_flags[argument]

    def prediction_logits(self, texts: Sequence[str],
                          parameters: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B, V] at each text's prediction point (gradients flow).

        Causal LM: after the last token (a trailing space is stripped first, since BPE tokenizers
        would read it as a token of its own). Masked LM: at the single mask token of each text.

        Raises:
            ValueError: an MLM text without exactly one mask token.
        """
        if self.kind == "clm":
            texts = [t.rstrip(" ") for t in texts]
        enc = self.tokenize(texts, padding_side="right")
        if self.kind == "clm":
            where = enc["attention_mask"].sum(-1) - 1
        else:
            is_mask = enc["input_ids"] == self.tokenizer.mask_token_id
            counts = is_mask.sum(-1)
            if (counts != 1).any():
                bad = texts[int((counts != 1).nonzero()[0, 0])]
                raise ValueError(f"a masked-LM text must contain exactly one {self.tokenizer.mask_token}: {bad!r}")
            where = is_mask.long().argmax(-1)
        # the LM head only where a row predicts: [B, K, V] with K distinct positions, not [B, T, V]
        keep = torch.unique(where)  # sorted
        logits = self.forward_logits(enc["input_ids"], enc["attention_mask"], parameters, keep=keep)
        rows = torch.arange(len(texts), device=logits.device)
        return logits[rows, torch.searchsorted(keep, where).to(logits.device)]


def _pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    return [str(t) for t in tokenizer.convert_ids_to_tokens(list(ids))]


def _single_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) == 1:
        return int(ids[0])
    # Some SentencePiece tokenizers prepend their own space marker; read the word in context
    # instead: the pieces that "x<word>" adds after "x".
    if word.startswith(" "):
        anchor = tokenizer.encode("x", add_special_tokens=False)
        both = tokenizer.encode("x" + word, add_special_tokens=False)
        if both[: len(anchor)] == anchor and len(both) == len(anchor) + 1:
            return int(both[-1])
    pieces = _pieces(tokenizer, ids)
    hint = ""
    if not word.startswith(" ") and len(_single_or_none(tokenizer, " " + word)) == 1:
        hint = f" Did you mean {' ' + word!r} (the word after a space)?"
    raise TokenError(f"{word!r} is not a single token: it splits into {pieces}.{hint}")


def _single_or_none(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    return list(tokenizer.encode(word, add_special_tokens=False))


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Give the tokenizer a pad token if it has none (EOS, else UNK); never resizes the model."""
    if tokenizer.pad_token_id is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            break
    else:
        raise ValueError("tokenizer has no pad, eos or unk token to pad batches with")
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def infer_kind(model: torch.nn.Module) -> ModelKind:
    """``"mlm"`` for ``*ForMaskedLM`` models, ``"clm"`` for ``*ForCausalLM`` / LM-head models."""
    arch = type(model).__name__
    if arch.endswith("ForMaskedLM"):
        return "mlm"
    if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
        return "clm"
    raise ValueError(
        f"{arch} is neither a masked nor a causal LM; load a *ForMaskedLM or *ForCausalLM model"
    )
