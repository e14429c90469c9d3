"""Write-vector edits: replace what one component writes, analytically or by training.

A component ``σ U Vᵀ`` (see :mod:`gradedit.edits.components.svd`) writes ``(V·x) · σU`` into its module's
output. Replacing the write vector ``σU`` by ``new_U`` keeps *when* the component fires (its read
direction ``V``) and changes *what* it writes: ``W' = W + (new_U − σU) Vᵀ``, a rank-1 edit.

``suppress_token`` sets ``new_U = −α · sign · û``, where ``û`` is the token's unembedding direction
pulled back through the final norm. Assumptions (documented approximations):

- the module writes into the residual stream (its output size equals the hidden size: attention
  output / MLP down projections). An extra per-dimension norm on the branch (e.g. Gemma's
  post-feedforward norm) is *not* undone, so there the direction is approximate;
- the final norm acts as a per-dimension gain ``g`` (RMSNorm: ``g`` read as ``norm(1)``, LayerNorm:
  its weight); its per-position ``1/rms`` and LayerNorm's centring are ignored, so
  ``û = normalise(g ⊙ w_token)`` with ``w_token`` the token's row of the output head;
- the write lowers the token's logit by ``∝ α · sign · (V·x)``: pass ``sign`` = the sign of the
  component's typical activation where it should act (activations can be negative).

``train_write_vector`` learns ``new_U`` instead: CE (or unlikelihood) at the positions where the
component fires (``|V·x|`` above a quantile on ``fire_texts``) plus ``kl_weight`` · KL(base ‖ edit) at
the other positions of ``fire_texts`` and on ``other_texts``; only ``new_U`` has a gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...models import LanguageModel
from ..fitting import Positions, TokenLedger, base_logprobs, batches, frozen_params, kl_rows, logprobs_at
from ..hooks import add_to_outputs
from ..terms import EditError
from ..weight_edit import WeightEdit
from .activations import component_activations
from .svd import Component, linear_modules

logger = logging.getLogger(__name__)

__all__ = ["optimise_write_vector", "replace_write_vector", "suppress_token", "train_write_vector",
           "unembedding_direction"]

#: ``loss_terms()`` -> ``(target_loss, kl)``, both 0-dim, evaluated while the trained write vector is hooked in
LossTerms = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def replace_write_vector(component: Component, new_U: torch.Tensor) -> WeightEdit:
    """The edit ``W' = W + (new_U − σU) Vᵀ``: the component now writes ``(V·x) · new_U``; ``new_U [out]``."""
    new_U = new_U.detach()
    if new_U.shape != component.U.shape:
        raise EditError(f"new_U has shape {tuple(new_U.shape)}, {component.label} writes vectors of shape "
                        f"{tuple(component.U.shape)}")
    delta = new_U.to(component.U.dtype) - component.write
    meta = {"method": "write_vector", "components": [component.to_dict()],
            "new_write_norm": float(new_U.norm())}
    if component.stored_transposed:
        return WeightEdit.rank_one(component.module_name, component.V, delta, metadata=meta)
    return WeightEdit.rank_one(component.module_name, delta, component.V, metadata=meta)


def _final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    for attr in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        mod = getattr(base, attr, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    return None


def _norm_gain(norm: torch.nn.Module | None, d: int, like: torch.Tensor) -> torch.Tensor:
    if norm is None:
        return torch.ones(d, dtype=like.dtype, device=like.device)
    if isinstance(norm, torch.nn.LayerNorm):
        return norm.weight.detach() if norm.weight is not None else torch.ones_like(like)
    with torch.no_grad():  # RMSNorm-like: the image of the all-ones vector (rms 1) is the gain
        return norm(torch.ones(1, d, dtype=like.dtype, device=like.device))[0].detach()


def unembedding_direction(lm: LanguageModel, token: str | int) -> torch.Tensor:
    """Unit direction ``[d]`` in the residual stream that raises ``token``'s logit (see module docstring)."""
    tid = lm.token_id(token) if isinstance(token, str) else int(token)
    head = lm.model.get_output_embeddings()
    if head is None:
        raise EditError(f"{type(lm.model).__name__} has no output head to read an unembedding from")
    if not 0 <= tid < head.weight.shape[0]:
        raise EditError(f"token id {tid} is outside the vocabulary (size {head.weight.shape[0]})")
    w = head.weight.detach()[tid]
    u = w * _norm_gain(_final_norm(lm.model), w.numel(), w)
    return u / u.norm()


def suppress_token(lm: LanguageModel, component: Component, token: str | int, alpha: float, *,
                   sign: float = 1.0) -> WeightEdit:
    """Make ``component`` write ``−α · sign · û(token)`` (``α`` = norm of the new write vector)."""
    hidden = int(lm.model.get_output_embeddings().weight.shape[1])
    if component.U.numel() != hidden:
        raise EditError(f"{component.module_name} writes {component.U.numel()}-dim vectors, not into the "
                        f"{hidden}-dim residual stream; use an output projection (o_proj, down_proj, c_proj)")
    u = unembedding_direction(lm, token).to(component.U.device, component.U.dtype)
    edit = replace_write_vector(component, -float(alpha) * float(sign) * u)
    edit.metadata.update({"method": "suppress_token", "token": token, "alpha": float(alpha), "sign": float(sign)})
    return edit


def train_write_vector(lm: LanguageModel, component: Component, fire_texts: Sequence[str],
                       other_texts: Sequence[str], *, steps: int = 50, lr: float = 1e-2, kl_weight: float = 1.0,
                       quantile: float = 0.9, remove: bool = False, max_fire_tokens: int | None = 256,
                       max_kl_tokens: int = 256, batch_size: int = 16) -> tuple[WeightEdit, list[dict[str, Any]]]:
    """Optimise only the component's write vector (see the module docstring).

    Args:
        fire_texts: texts where the component should act; its firing positions are those with
            ``|V·x|`` at or above the ``quantile`` of its ``|V·x|`` over these texts (special tokens
            excluded), at most ``max_fire_tokens`` of them.
        other_texts: texts to keep unchanged (KL).
        remove: ``False`` lowers CE of the next token at firing positions; ``True`` lowers its
            probability instead, by the bounded unlikelihood loss ``−log(1 − p)``.
        max_kl_tokens: KL positions, half from the quiet positions of ``fire_texts``, half from
            ``other_texts``.

    Returns:
        ``(edit, history)``; ``history`` has one dict per step (``loss``, ``fire_loss``, ``kl``) before
        the update, and a last entry for the final vector. ``edit.metadata["target_tokens_used"]``
        counts the ``fire_texts`` tokens read: ``selection`` (all of them, to find the firing
        positions), ``fit`` (the rows trained on) and their distinct ``total``.
    """
    if not 0.0 <= quantile < 1.0:
        raise EditError(f"quantile must be in [0, 1), got {quantile}")
    if steps < 0:
        raise EditError(f"steps must be >= 0, got {steps}")
    fire_texts, other_texts = list(fire_texts), list(other_texts)
    acts = component_activations(lm, [component], fire_texts, per_token=True, batch_size=batch_size)
    assert acts.per_token is not None and acts.positions is not None
    flat = torch.cat([a[:, 0].abs() for a in acts.per_token])
    if flat.numel() == 0:
        raise EditError("fire_texts have no countable token")
    thr = float(torch.quantile(flat.double(), quantile))
    fires = {(ti, int(p)) for ti, (a, ps) in enumerate(zip(acts.per_token, acts.positions))
             for v, p in zip(a[:, 0].tolist(), ps.tolist()) if abs(v) >= thr}
    counted = {(ti, int(p)) for ti, ps in enumerate(acts.positions) for p in ps.tolist()}
    fire = Positions.from_texts(lm, fire_texts, max_fire_tokens, keep=lambda t, p: (t, p) in fires)
    quiet = Positions.from_texts(lm, fire_texts, max_kl_tokens // 2,
                                 keep=lambda t, p: (t, p) in counted and (t, p) not in fires)
    other = Positions.from_texts(lm, other_texts, max_kl_tokens - quiet.n)
    if fire.n == 0:
        raise EditError("the component fires at no scorable position of fire_texts; lower the quantile")
    ledger = TokenLedger()  # fire_texts are the target text: all of it is read to find where the component fires
    for text, n in zip(fire_texts, acts.n_tokens.tolist()):
        ledger.add("selection", text, int(n))
    ledger.add_positions(lm, "fit", fire_texts, fire)
    ledger.add_positions(lm, "fit", fire_texts, quiet)
    fire_b, kl_b = batches(lm, fire, batch_size), batches(lm, quiet, batch_size) + batches(lm, other, batch_size)
    n_kl = quiet.n + other.n
    with frozen_params(lm.model):
        refs = base_logprobs(lm, kl_b)

        def terms() -> tuple[torch.Tensor, torch.Tensor]:
            fl = torch.zeros((), dtype=torch.float32, device=lm.device)  # logprobs_at is fp32
            for b in fire_b:
                lp = logprobs_at(lm, b).gather(-1, b.targets[:, None]).squeeze(-1)
                fl = fl + (-torch.log1p(-lp.exp().clamp_max(1 - 1e-6)) if remove else -lp).sum()
            # a tensor even without KL positions (n_kl == 0), so the history can read it
            kl = sum((kl_rows(r, logprobs_at(lm, b)).sum() for b, r in zip(kl_b, refs)),
                     torch.zeros((), dtype=torch.float32, device=lm.device))
            return fl / fire.n, kl / max(1, n_kl)

        w, history = optimise_write_vector(lm, component, terms, steps=steps, lr=lr, kl_weight=kl_weight,
                                           target_key="fire_loss")
    edit = replace_write_vector(component, w)
    edit.metadata.update({"method": "write_vector_trained", "remove": remove, "quantile": quantile,
                          "threshold": thr, "n_fire_tokens": fire.n, "n_kl_tokens": n_kl, "steps": steps,
                          "target_tokens_used": ledger.counts(),
                          "lr": lr, "kl_weight": kl_weight, "history": history})
    logger.info("train_write_vector %s: loss %.4f -> %.4f (%d fire, %d KL tokens)", component.label,
                history[0]["loss"], history[-1]["loss"], fire.n, n_kl)
    return edit, history


def optimise_write_vector(lm: LanguageModel, component: Component, loss_terms: LossTerms, *, steps: int,
                          lr: float, kl_weight: float, target_key: str = "target_loss"
                          ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Adam on ``component``'s write vector alone (start: its current ``σU``), minimising
    ``target_loss + kl_weight · kl`` from ``loss_terms()``, which runs the model while a forward hook
    adds ``(V·x) · (w − σU)`` to the module's output (the model's own weights stay frozen: call it
    inside :func:`~gradedit.edits.fitting.frozen_params`).

    Returns:
        ``(w [out], history)``: ``history`` has one dict per step (``step``, ``loss``, ``target_key``,
        ``kl``) before that step's update, and a last one for the returned vector.
    """
    mods = linear_modules(lm, [component.module_name])
    dev, dtype = lm.device, next(lm.model.parameters()).dtype
    V, w0 = component.V.to(dev, dtype), component.write.to(dev, dtype)
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([w], lr=lr)

    def delta(name: str, x: torch.Tensor) -> torch.Tensor:
        return (x @ V)[..., None] * (w - w0)

    history: list[dict[str, Any]] = []
    for step in range(steps + 1):
        opt.zero_grad()
        with add_to_outputs(mods, delta):
            target_loss, kl = loss_terms()
        loss = target_loss + kl_weight * kl
        history.append({"step": step, "loss": float(loss.detach()), target_key: float(target_loss.detach()),
                        "kl": float(kl.detach())})
        if step == steps:
            break
        loss.backward()
        opt.step()
    return w.detach(), history
