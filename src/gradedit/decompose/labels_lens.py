"""The output-token lens of decomposed components, and token text for display.

What a component writes, read through the unembedding ``W_E [vocab, hidden]``:

* a module that writes into the residual stream (``o_proj``, ``down_proj``, GPT-2 ``c_proj``, any
  module whose output width is the hidden size and is not an attention input): its write vector
  ``U_c [hidden]``;
* an MLP input (``gate_proj``, ``up_proj``, GPT-2 ``c_fc``, BERT ``intermediate.dense``): its write
  vector in the MLP hidden carried through the MLP's output layer, ``W_down U_c`` — a *linear
  approximation* that ignores the gating nonlinearity (``act(gate) ⊙ up``) and the other branch;
* attention inputs (``q/k/v_proj``, ``c_attn``) write into attention, not the residual stream: no lens.

A norm on the block's output before the residual add (Gemma's ``post_feedforward_layernorm``, and
its ``post_attention_layernorm`` for ``o_proj``) is applied as its elementwise gain (its division by
the RMS of the whole block output is ignored). The direction is then scaled by the final norm's
elementwise gain ``s`` when the model has one (``model.norm``, ``transformer.ln_f``, ...). A gain is
measured as ``norm(1) · sqrt(1 + eps)`` on a constant vector (exact for RMS-type norms, including
Gemma's ``(1 + w)``); for ``nn.LayerNorm`` it is the weight (centring and bias ignored). The lens of ``d`` is ``W_E (s ⊙ d)`` ``[vocab]``:
"promotes" are its largest entries, "suppresses" the largest of ``−W_E (s ⊙ d)``. Both signs are
kept since ``U Vᵀ = (−U)(−V)ᵀ``; which one a component actually writes depends on the sign of its
inner activation where it fires (see :mod:`gradedit.decompose.labels`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..models.linear import is_linear, logical_weight

__all__ = ["final_norm_gain", "token_lens", "token_pieces", "vocab_piece", "write_directions"]

_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm")
_ATTN_INPUTS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "c_attn", "query", "key", "value", "Wqkv")
_MLP_INPUTS = ("gate_proj", "up_proj", "gate_up_proj", "c_fc", "fc1", "w1", "w3")
_MLP_OUTPUTS = ("down_proj", "c_proj", "fc2", "w2")


def _norm_gain(norm: nn.Module) -> tuple[Tensor, str]:
    """The elementwise gain ``[hidden]`` of a norm layer and how it was found."""
    w = norm.weight
    assert isinstance(w, Tensor)
    if isinstance(norm, nn.LayerNorm):
        return w.detach().float().cpu().clone(), "LayerNorm weight (centring and bias ignored)"
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0)) or 0.0)
    with torch.no_grad():
        gain = norm(torch.ones(1, w.shape[0], dtype=w.dtype, device=w.device))[0].float() * math.sqrt(1 + eps)
    return gain.detach().cpu(), f"{type(norm).__name__}(1)·sqrt(1+eps), measured on a constant vector"


def _is_norm(mod: Any) -> bool:
    w = getattr(mod, "weight", None)
    return isinstance(mod, nn.Module) and isinstance(w, Tensor) and w.dim() == 1


def final_norm_gain(net: nn.Module) -> tuple[Tensor | None, dict[str, Any]]:
    """``(gain [hidden] or None, description)`` of the model's final norm (see the module docstring)."""
    base = getattr(net, str(getattr(net, "base_model_prefix", "")), None)
    for owner, prefix in ((base, f"{getattr(net, 'base_model_prefix', '')}."), (net, "")):
        if not isinstance(owner, nn.Module):
            continue
        for attr in _NORM_NAMES:
            norm = getattr(owner, attr, None)
            if isinstance(norm, nn.Module) and _is_norm(norm):
                gain, how = _norm_gain(norm)
                return gain, {"module": prefix + attr, "gain": how}
    return None, {"module": None, "gain": "no final norm found: the raw write vector is used"}


def _post_norm(named: dict[str, nn.Module], module: str) -> str | None:
    """A norm applied to the block's output before the residual add (Gemma's post-MLP / post-attention
    norms), for a module of an MLP (``...mlp.x``) or the attention output (``...self_attn.o_proj``)."""
    parts = module.split(".")
    if len(parts) < 3:
        return None
    layer, block = ".".join(parts[:-2]), parts[-2]
    if block == "mlp":
        name = f"{layer}.post_feedforward_layernorm"
    elif parts[-1] == "o_proj" and _is_norm(named.get(f"{layer}.pre_feedforward_layernorm")):
        name = f"{layer}.post_attention_layernorm"  # Llama's post_attention_layernorm is the MLP's input norm
    else:
        return None
    return name if _is_norm(named.get(name)) else None


def _sibling(named: dict[str, nn.Module], name: str, d_out: int) -> str | None:
    """The MLP output layer reading ``name``'s output (``...mlp.gate_proj`` → ``...mlp.down_proj``)."""
    parent = name.rpartition(".")[0]
    cands = [f"{parent}.{o}" if parent else o for o in _MLP_OUTPUTS]
    if name.endswith("intermediate.dense"):  # BERT
        cands.insert(0, name[: -len("intermediate.dense")] + "output.dense")
    for cand in cands:
        mod = named.get(cand)
        if cand != name and mod is not None and is_linear(mod) and logical_weight(mod).shape[1] == d_out:
            return cand
    return None


def write_directions(net: nn.Module, module: str, U: Tensor, hidden: int) -> tuple[Tensor | None, dict[str, Any]]:
    """Residual-stream write directions ``D [hidden, C]`` of ``module``'s components ``U [C, d_out]``,
    and ``{"kind": "residual" | "via_down" | "none", "via": ..., "note": ...}``."""
    last = module.rsplit(".", 1)[-1]
    if last in _ATTN_INPUTS:
        return None, {"kind": "none", "via": None, "note": "an attention input: writes into attention, not the "
                                                           "residual stream"}
    named = dict(net.named_modules())
    D: Tensor | None = None
    info: dict[str, Any] = {}
    if last in _MLP_INPUTS or module.endswith("intermediate.dense"):
        via = _sibling(named, module, U.shape[1])
        if via is not None:
            W = logical_weight(named[via]).detach().float().cpu()  # [hidden, d_mlp]
            if W.shape[0] == hidden:
                D, info = W @ U.float().T, {"kind": "via_down", "via": via, "note": f"through {via}: a linear "
                                            f"approximation that ignores the gating nonlinearity"}
    if D is None and U.shape[1] == hidden:
        D, info = U.float().T.contiguous(), {"kind": "residual", "via": None, "note": "writes into the residual stream"}
    if D is None:
        return None, {"kind": "none", "via": None, "note": f"output width {U.shape[1]} is not the hidden size "
                                                           f"{hidden} and no MLP output layer was found"}
    post = _post_norm(named, module)
    info["post_norm"] = post
    if post is not None:
        gain, _ = _norm_gain(named[post])
        D = D * gain[:, None]
        info["note"] += f"; times the gain of {post}"
    return D, info


@torch.no_grad()
def token_lens(unembed: Tensor, gain: Tensor | None, D: Tensor, k: int, chunk: int = 64
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top ``k`` tokens of ``W_E (s ⊙ d)`` and of ``−W_E (s ⊙ d)`` for each column ``d`` of ``D [hidden, C]``.

    Returns:
        ``(plus_values, plus_ids, minus_values, minus_ids)``, each ``[C, k]``; ``minus_values`` are
        entries of ``−W_E (s ⊙ d)`` (positive for the most suppressed tokens).
    """
    W = unembed.detach().float()  # no copy when already float32
    dirs = D.float() if gain is None else D.float() * gain.float().to(D.device)[:, None]
    k = min(k, W.shape[0])
    outs: list[tuple[Tensor, ...]] = []
    for start in range(0, dirs.shape[1], chunk):
        logits = (W @ dirs[:, start: start + chunk].to(W.device)).T.cpu()  # [c, vocab]
        pv, pi = logits.topk(k, dim=-1)
        mv, mi = (-logits).topk(k, dim=-1)
        outs.append((pv, pi, mv, mi))
    return tuple(torch.cat([o[j] for o in outs], 0) for j in range(4))  # type: ignore[return-value]


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def token_pieces(tokenizer: Any, ids: Sequence[int], window: int = 3) -> list[str]:
    """The text each token adds (``' der'``, ``'ber'``), decoded with up to ``window`` preceding tokens
    so leading spaces and multi-byte characters come out right; special tokens kept (``'<s>'``)."""
    out: list[str] = []
    for j in range(len(ids)):
        lo = max(0, j - window)
        before = tokenizer.decode(list(ids[lo:j]), skip_special_tokens=False) if j > lo else ""
        after = tokenizer.decode(list(ids[lo: j + 1]), skip_special_tokens=False)
        out.append(after[_common(before, after):])
    return out


def vocab_piece(tokenizer: Any, token_id: int) -> str:
    """A vocabulary entry as text: ``'▁der'`` / ``'Ġder'`` → ``' der'`` (byte-level pieces decoded)."""
    tok = tokenizer.convert_ids_to_tokens(int(token_id))
    if tok is None:
        return f"<{token_id}>"
    text = tokenizer.convert_tokens_to_string([tok])
    if tok.startswith("▁") and not text.startswith(" "):
        text = " " + text
    return str(text)
