"""The causal-LM MLM head (the gradiend package's ``clm_mlm_head``, written anew): a small classifier on
a causal LM's hidden states that predicts the masked word from context on BOTH sides.

The whole sentence goes through the causal LM with a placeholder token where ``[MASK]`` is; the final
hidden states at the placeholder and the ``L - 1`` tokens after it are mean-pooled (a causal LM's
state at position ``t`` has read every token up to ``t``, so the states after the placeholder carry
the right-hand context), and a linear layer maps the pooled state ``[d]`` to logits over the data's
target tokens ``[n]``::

    z = mean(h[m], ..., h[m + L - 1])          h = last hidden states (after the final norm)  [T, d]
    logits = W z + b                            W: [n, d], b: [n]

``L`` (pooling length) is chosen by validation loss (:func:`train_mlm_head`; ``L = 1`` reads the left
context only). GRADIEND gradients are then taken through the head (``GradientEngine(head=...)``): the
base model's selected parameters receive gradients of the head's losses; the head's own parameters are
frozen and never part of a feature model's input space.

Differences to the reference: the base model is never changed (no added ``[MASK]`` token, no resized
embeddings; an existing special token — mask, else eos — is the placeholder), the hidden states are computed once and the
head for every candidate ``L`` is fit on them, the baseline (class prior, no context) is recorded, and
the head is saved as safetensors + JSON only.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .._files import read_json_object, save_safetensors_atomic, write_folder, write_json_atomic
from .._version import __version__
from ..data.schema import PairDataset
from ..errors import ArtifactError, ConfigError, DataError
from ..models import LanguageModel

logger = logging.getLogger(__name__)

__all__ = ["MLMHead", "HeadFit", "placeholder_of", "train_mlm_head"]

CONFIG_NAME = "mlm_head.json"
WEIGHTS_NAME = "mlm_head.safetensors"


def placeholder_of(lm: LanguageModel, placeholder: str | None = None) -> str:
    """The token that stands for ``[MASK]``: ``placeholder`` if given, else the tokenizer's mask, eos or
    unk token (the first that exists; unk last, since characters outside a small vocabulary also become
    unk). It must encode to exactly one special id."""
    tok = lm.tokenizer
    text = placeholder or tok.mask_token or tok.eos_token or tok.unk_token
    if not text:
        raise ConfigError(f"{lm.name}'s tokenizer has no mask, eos or unk token; give placeholder='<one token>'")
    ids = tok(f"a {text} b", add_special_tokens=False)["input_ids"]
    pid = tok.convert_tokens_to_ids(text)
    if not isinstance(pid, int) or ids.count(pid) != 1:
        raise ConfigError(f"the placeholder {text!r} is not one token of {lm.name} in running text; give "
                          "placeholder= a special token of its tokenizer")
    return str(text)


class MLMHead(nn.Module):
    """Linear head over pooled causal-LM hidden states (see the module docstring).

    Args:
        hidden_size: ``d`` of the base model.
        tokens: the target words (``[n]``, e.g. ``[" he", " she"]``); ``token_ids`` their vocabulary ids.
        pooling_length: ``L``, states pooled from the placeholder on.
        placeholder: the token text put where ``[MASK]`` is.
        info: JSON provenance (base model, validation losses per L, baseline loss, ...).
    """

    def __init__(self, hidden_size: int, tokens: Sequence[str], token_ids: Sequence[int], pooling_length: int,
                 placeholder: str, info: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if len(tokens) != len(token_ids) or len(set(token_ids)) != len(token_ids) or len(tokens) < 2:
            raise ConfigError(f"the head needs at least two distinct target tokens with one id each, got {list(tokens)}")
        if pooling_length < 1:
            raise ConfigError(f"pooling_length must be >= 1, got {pooling_length}")
        self.tokens, self.token_ids = [str(t) for t in tokens], [int(i) for i in token_ids]
        self.pooling_length, self.placeholder = int(pooling_length), placeholder
        self.info: dict[str, Any] = dict(info or {})
        self.proj = nn.Linear(int(hidden_size), len(self.tokens))
        self._index = {tid: i for i, tid in enumerate(self.token_ids)}
        self.requires_grad_(False)  # only train_mlm_head fits it, on detached features

    # -- inputs ---------------------------------------------------------------------------------------
    def texts(self, data: PairDataset) -> list[str]:
        """The rows' full texts with the placeholder where ``[MASK]`` is."""
        return data.prompts("mlm", self.placeholder)

    def index(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids ``[B]`` -> head output positions ``[B]`` (DataError for a token the head lacks)."""
        out = [self._index.get(int(i), -1) for i in ids.tolist()]
        if -1 in out:
            bad = int(ids[out.index(-1)])
            raise DataError(f"token id {bad} is not one of the head's targets {self.tokens}; train the head on data "
                            "with this token")
        return torch.tensor(out, dtype=torch.long)

    # -- forward --------------------------------------------------------------------------------------
    def states(self, lm: LanguageModel, texts: Sequence[str], length: int,
               parameters: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The final hidden states at the placeholder and the ``length - 1`` tokens after it ``[B, length, d]``
        (zeros past a text's end) and how many of them are real ``[B]``. Gradients flow (and
        ``parameters`` substitute named base-model tensors, as in ``LanguageModel.forward_logits``)."""
        enc = lm.tokenize(list(texts), padding_side="right")
        ids, attn = enc["input_ids"], enc["attention_mask"]
        pid = int(lm.tokenizer.convert_tokens_to_ids(self.placeholder))  # type: ignore[arg-type]
        is_placeholder = (ids == pid) & attn.bool()  # the pad token may be the placeholder (eos) too
        counts = is_placeholder.sum(-1)
        if (counts != 1).any():
            bad = texts[int((counts != 1).nonzero()[0, 0])]
            raise DataError(f"an MLM-head text must contain the placeholder {self.placeholder!r} exactly once: {bad!r}; "
                            "build texts with head.texts(data)")
        base = lm.model.base_model
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "use_cache": False}
        if "position_ids" in _forward_args(base):
            kwargs["position_ids"] = (attn.long().cumsum(-1) - 1).clamp_min(0)
        if parameters:
            from torch.func import functional_call

            prefix = lm.model.base_model_prefix + "."
            sub = {n[len(prefix):]: v for n, v in parameters.items() if n.startswith(prefix)}
            hidden = functional_call(base, sub, args=(), kwargs=kwargs, strict=False, tie_weights=True).last_hidden_state
        else:
            hidden = base(**kwargs).last_hidden_state
        start = is_placeholder.long().argmax(-1)  # [B]
        pos = start[:, None] + torch.arange(length, device=ids.device)[None, :]  # [B, length]
        valid = (pos < ids.shape[1]) & attn.gather(1, pos.clamp_max(ids.shape[1] - 1)).bool()
        picked = hidden.gather(1, pos.clamp_max(ids.shape[1] - 1)[..., None].expand(-1, -1, hidden.shape[-1]))
        return picked * valid[..., None].to(picked.dtype), valid.sum(-1)

    def pool(self, states: torch.Tensor, counts: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Mean of the first ``min(length, count)`` states of each row: ``[B, T', d] -> [B, d]``."""
        n = self.pooling_length if length is None else int(length)
        part = states[:, :n]
        k = counts.clamp_max(n).clamp_min(1).to(part.dtype)
        return part.sum(1) / k[:, None]

    def logits(self, lm: LanguageModel, texts: Sequence[str],
               parameters: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Head logits ``[B, n]`` (in the order of ``tokens``); gradients flow into the base model."""
        states, counts = self.states(lm, texts, self.pooling_length, parameters)
        z = self.pool(states, counts)
        return self.proj(z.to(self.proj.weight.dtype))

    # -- files ----------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """``mlm_head.json`` + ``mlm_head.safetensors`` in ``path`` (atomic; no pickle)."""
        path = Path(path)
        config = {"format": "gradedit-mlm-head", "library_version": __version__, "hidden_size": self.proj.in_features,
                  "tokens": self.tokens, "token_ids": self.token_ids, "pooling_length": self.pooling_length,
                  "placeholder": self.placeholder, "info": self.info}

        def write(folder: Path) -> None:
            save_safetensors_atomic({"weight": self.proj.weight.detach().contiguous().cpu(),
                                     "bias": self.proj.bias.detach().contiguous().cpu()}, folder / WEIGHTS_NAME)
            write_json_atomic(folder / CONFIG_NAME, config)  # last: a folder with a config is complete

        write_folder(path, write)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], lm: LanguageModel | None = None) -> MLMHead:
        """Load a head saved by :meth:`save_pretrained`; with ``lm``, check it was made for that model."""
        path = Path(path)
        fix = "train the head again (train_mlm_head) and save it"
        cfg = read_json_object(path / CONFIG_NAME, fix)
        if cfg.get("format") != "gradedit-mlm-head":
            raise ArtifactError(f"{path / CONFIG_NAME} is not a gradedit MLM head; {fix}")
        if not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path / WEIGHTS_NAME} is missing; {fix}")
        try:
            tensors = load_file(str(path / WEIGHTS_NAME))
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise ArtifactError(f"{path / WEIGHTS_NAME} is unreadable ({err}); {fix}") from None
        head = cls(cfg["hidden_size"], cfg["tokens"], cfg["token_ids"], cfg["pooling_length"], cfg["placeholder"],
                   cfg.get("info"))
        want = {"weight": tuple(head.proj.weight.shape), "bias": tuple(head.proj.bias.shape)}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != want:
            raise ArtifactError(f"{path / WEIGHTS_NAME} holds {got}, its config says {want}; {fix}")
        with torch.no_grad():
            head.proj.weight.copy_(tensors["weight"])
            head.proj.bias.copy_(tensors["bias"])
        if lm is not None:
            base = head.info.get("base_model")
            if base is not None and base != lm.name:
                raise ArtifactError(f"{path} is a head for {base}, not {lm.name}; {fix} for {lm.name}")
            if lm.token_ids(head.tokens) != head.token_ids:
                raise ArtifactError(f"{path}'s token ids differ from {lm.name}'s tokenizer; {fix}")
        return head


def _forward_args(module: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


@dataclass
class HeadFit:
    """What :func:`train_mlm_head` measured: validation loss per pooling length, the chosen length,
    the no-context baseline (cross-entropy of the training class prior on the validation rows)."""

    val_loss: dict[int, float]
    pooling_length: int
    baseline_loss: float
    train_rows: int
    val_rows: int
    train_loss: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"val_loss": {str(k): v for k, v in self.val_loss.items()}, "pooling_length": self.pooling_length,
                "baseline_loss": self.baseline_loss, "train_rows": self.train_rows, "val_rows": self.val_rows,
                "train_loss": {str(k): v for k, v in self.train_loss.items()}}


@torch.no_grad()
def _features(head: MLMHead, lm: LanguageModel, texts: list[str], length: int,
              batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    states, counts = [], []
    for s in range(0, len(texts), batch_size):
        st, c = head.states(lm, texts[s:s + batch_size], length)
        states.append(st.float().cpu())
        counts.append(c.cpu())
    return torch.cat(states), torch.cat(counts)


def train_mlm_head(lm: LanguageModel, data: PairDataset, *, pooling_lengths: Sequence[int] = (1, 2, 3, 4, 5),
                   steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 16,
                   placeholder: str | None = None, seed: int = 0,
                   max_rows: int | None = 2000) -> tuple[MLMHead, HeadFit]:
    """Fit the head on ``data``'s train rows for each pooling length and keep the one with the lowest
    validation loss (ties: the shorter). The base model is frozen: its hidden states are computed once.

    The head predicts each row's factual token among all factual/alternative tokens of ``data``
    (full-batch AdamW for ``steps`` steps on the pooled states; ``max_rows`` caps the rows per split).

    Raises:
        ConfigError: ``lm`` is not a causal LM, or a bad pooling length.
        DataError: no train or val rows.
    """
    if lm.kind != "clm":
        raise ConfigError(f"the MLM head is for causal LMs; {lm.name} is a masked LM: train GRADIEND on it directly")
    lengths = sorted({int(x) for x in pooling_lengths})
    if not lengths or lengths[0] < 1:
        raise ConfigError(f"pooling_lengths must be positive ints, got {list(pooling_lengths)}")
    frame = data.to_frame()
    tokens = list(dict.fromkeys([*frame["factual"], *frame["alternative"]]))
    ids = lm.token_ids(tokens)
    hidden = int(lm.model.get_output_embeddings().weight.shape[-1])
    probe = MLMHead(hidden, tokens, ids, lengths[-1], placeholder_of(lm, placeholder))
    gen = torch.Generator().manual_seed(seed)
    split_data = {}
    for name in ("train", "val"):
        part = data.split(name)
        if len(part) == 0:
            raise DataError(f"the MLM head needs {name!r} rows (train fits it, val picks the pooling length); re-split")
        if max_rows is not None and len(part) > max_rows:
            keep = torch.randperm(len(part), generator=gen)[:max_rows].sort().values
            mask = torch.zeros(len(part), dtype=torch.bool)
            mask[keep] = True
            part = part.where(mask.numpy())
        x, c = _features(probe, lm, probe.texts(part), lengths[-1], batch_size)
        y = probe.index(torch.tensor(lm.token_ids(part.to_frame()["factual"].tolist())))
        split_data[name] = (x, c, y)
    (xt, ct, yt), (xv, cv, yv) = split_data["train"], split_data["val"]
    prior = torch.bincount(yt, minlength=len(tokens)).double() + 0.5  # add-half smoothing
    baseline = float(-(prior / prior.sum()).log()[yv].mean())
    unembed = lm.model.get_output_embeddings().weight.detach().float()[ids]
    fits: dict[int, tuple[float, float, dict[str, torch.Tensor]]] = {}
    for n in lengths:
        head = MLMHead(hidden, tokens, ids, n, probe.placeholder)
        zt, zv = head.pool(xt, ct, n), head.pool(xv, cv, n)
        w = nn.Parameter(unembed.clone())
        b = nn.Parameter(torch.zeros(len(tokens)))
        opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(zt @ w.T + b, yt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = float(nn.functional.cross_entropy(zv @ w.T + b, yv))
        fits[n] = (val, float(loss.detach()), {"weight": w.detach(), "bias": b.detach()})
        logger.info("MLM head pooling_length=%d: train loss %.4f, val loss %.4f (no-context %.4f)", n,
                    fits[n][1], val, baseline)
    best = min(lengths, key=lambda n: (fits[n][0] if math.isfinite(fits[n][0]) else math.inf, n))
    if not fits[best][0] < baseline:
        logger.warning("the MLM head does not beat the no-context baseline on validation (%.4f >= %.4f at pooling "
                       "length %d): its gradients carry little of the context; use more rows or other lengths",
                       fits[best][0], baseline, best)
    fit = HeadFit({n: fits[n][0] for n in lengths}, best, baseline, len(yt), len(yv),
                  {n: fits[n][1] for n in lengths})
    head = MLMHead(hidden, tokens, ids, best, probe.placeholder,
                   {"base_model": lm.name, "data_fingerprint": data.fingerprint(), **fit.to_dict()})
    with torch.no_grad():
        head.proj.weight.copy_(fits[best][2]["weight"].to(head.proj.weight.dtype))
        head.proj.bias.copy_(fits[best][2]["bias"].to(head.proj.bias.dtype))
    head.to(lm.device)
    return head, fit
