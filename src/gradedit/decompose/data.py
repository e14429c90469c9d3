"""Inputs of a decomposition: a pool of model inputs, and (for ``objective="layer"``) cached layer inputs."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import DecompositionError
from .hooks import call_model, capture_inputs

logger = logging.getLogger(__name__)

__all__ = ["InputPool", "build_pool", "pack_texts", "cache_layer_inputs"]


@dataclass
class InputPool:
    """Model inputs ``[N, ...]`` sampled by row: examples, or packed token blocks ``[N, seq_len]`` (LMs)."""

    data: Tensor
    is_lm: bool

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def fingerprint(self) -> str:
        """sha256 of the pool's shape, dtype and content (decides whether a checkpoint may resume)."""
        t = self.data.detach().cpu().contiguous()
        h = hashlib.sha256(f"{tuple(t.shape)}:{t.dtype}:{self.is_lm}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]


def pack_texts(tokenizer: object, texts: Sequence[str], seq_len: int) -> Tensor:
    """Tokenise each text, join them (an EOS between texts when the tokenizer adds no BOS), cut into
    blocks ``[N, seq_len]`` of token ids (the incomplete tail is dropped)."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    for text in texts:
        piece = list(tokenizer(text)["input_ids"])  # type: ignore[operator]
        bos = getattr(tokenizer, "bos_token_id", None)
        if ids and eos is not None and not (piece and piece[0] == bos):
            ids.append(int(eos))
        ids.extend(int(i) for i in piece)
    n = len(ids) // seq_len
    if n == 0:
        raise DecompositionError(f"the texts give {len(ids)} tokens, fewer than seq_len={seq_len}; give more text "
                                 f"or a smaller seq_len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def build_pool(inputs: Tensor | Iterable[Tensor] | Sequence[str], *, tokenizer: object | None,
               seq_len: int) -> InputPool:
    """Turn ``inputs`` into an :class:`InputPool`.

    Texts need a language model (``tokenizer``); a tensor is used as ``[N, ...]`` rows; an iterable
    of tensors is concatenated along dim 0 (their trailing shapes must agree).
    """
    is_lm = tokenizer is not None
    if isinstance(inputs, str):
        raise DecompositionError("inputs is one string; pass a list of texts")
    if isinstance(inputs, Tensor):
        data = inputs
    else:
        items = list(inputs)
        if not items:
            raise DecompositionError("inputs is empty; pass a tensor, tensors or (for a LanguageModel) texts")
        if all(isinstance(i, str) for i in items):
            if tokenizer is None:
                raise DecompositionError("texts need a gradedit LanguageModel (its tokenizer); pass the LanguageModel "
                                         "as model, or pass tensors")
            data = pack_texts(tokenizer, items, seq_len)
        elif all(isinstance(i, Tensor) for i in items):
            shapes = {tuple(i.shape[1:]) for i in items}
            if len(shapes) != 1:
                raise DecompositionError(f"input tensors have different trailing shapes {sorted(shapes)[:3]}; "
                                         f"give batches of one shape")
            data = torch.cat(items, 0)
        else:
            kinds = sorted({type(i).__name__ for i in items})
            raise DecompositionError(f"inputs mix {kinds}; give texts or tensors")
    if data.dim() == 0 or data.shape[0] == 0:
        raise DecompositionError(f"inputs have shape {tuple(data.shape)}; need at least one row")
    if is_lm and data.dtype != torch.long:
        raise DecompositionError(f"a LanguageModel's tensor inputs are token ids (int64), got {data.dtype}")
    if not is_lm and data.is_floating_point() is False and data.dtype != torch.long:
        raise DecompositionError(f"unsupported input dtype {data.dtype}")
    return InputPool(data.detach(), is_lm)


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


@torch.no_grad()
def cache_layer_inputs(model: nn.Module, modules: Mapping[str, nn.Module], pool: InputPool,
                       max_rows: int, chunk: int = 8) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Run the model over the pool and keep each module's input rows ``[rows, d_in]`` (float32).

    Modules that read the same tensor (e.g. ``gate_proj`` and ``up_proj`` of one MLP) share one
    cache. Stops once ``max_rows`` rows are held and cuts each forward after the last wanted layer.

    Returns:
        (inputs by group name, group name of each module).
    """
    groups: dict[str, str] = {}
    parts: dict[str, list[Tensor]] = {}
    rows = 0
    for start in range(0, len(pool), chunk):
        batch = pool.data[start: start + chunk]
        with capture_inputs(modules, stop_early=True) as seen:
            call_model(model, batch, pool.is_lm)
        missing = [n for n, v in seen.items() if not v]
        if missing:
            raise DecompositionError(f"module(s) {missing[:3]} were not called by the model's forward; "
                                     f"decompose modules that the forward pass uses")
        firsts = {n: v[0] for n, v in seen.items()}
        if not groups:
            for n, x in firsts.items():
                same = next((m for m in groups if _same_tensor(firsts[m], x)), None)
                groups[n] = groups[same] if same is not None else n
        for n, v in seen.items():
            if groups[n] != n:
                continue
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in v], 0).float()
            parts.setdefault(n, []).append(x)
        rows += parts[next(iter(parts))][-1].shape[0]
        if rows >= max_rows:
            break
    acts = {g: torch.cat(p, 0)[:max_rows].contiguous() for g, p in parts.items()}
    logger.info("cached %d input rows for %d layer input(s) of %d module(s)",
                next(iter(acts.values())).shape[0], len(acts), len(modules))
    return acts, groups
