"""One GRADIEND training step without autograd: MSE loss, gradients and AdamW update in chunks of the input space.

With autograd a step of the encoder-decoder (``k`` latents, ``n`` inputs, ``B`` examples) holds, besides
the weights and their AdamW moments, the reconstruction ``[B, n]``, its gradient ``[B, n]``, the MSE's
difference ``[B, n]`` and the decoder's gradients ``[n, k]`` + ``[n]`` at the same moment (one
autograd node makes the last three), and the encoder's ``[k, n]`` later: about ``(3B + 2) n`` numbers
more than the weights and moments. Here no n-sized temporary exists: every pass walks the input
space in chunks of ``chunk`` entries.

1. ``h = tanh(src @ W_eᵀ + b_e)`` ``[B, k]`` (one matrix-vector product over the whole of ``src``).
2. read-only pass: per chunk ``r = h W_dᵀ + b_d - tgt``; sums ``Σ r²`` (the loss) and ``∂L/∂h = (2/N) r W_d``
   with the weights before the step (as autograd would), ``N = denominator``.
3. nothing is applied if the loss, ``∂L/∂h`` or ``src`` is not finite (the caller stops training).
4. decoder pass: per chunk ``∂L/∂W_d = (2/N) rᵀ h``, ``∂L/∂b_d = (2/N) Σ_b r``, reduced, checked, stepped.
5. encoder pass: ``g = ∂L/∂h ⊙ (1 - h²)``; per chunk ``∂L/∂W_e = gᵀ src``, reduced, checked, stepped;
   then ``∂L/∂b_e = Σ_b g``.

Equal to ``F.mse_loss`` + backward + AdamW up to summation order (the loss and ``∂L/∂h`` are sums over
``n``); the AdamW arithmetic is the same fused kernel. A gradient chunk that is still not finite after
step 3 (a finite product overflowing) stops the step there: chunks and weights before it keep their
update in memory, the caller stops training and ``last/`` keeps the previous checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..feature_model import FeatureModel
from .adamw import FeatureAdamW

logger = logging.getLogger(__name__)

__all__ = ["fused_mse_step", "all_finite", "FUSED_CHUNK", "FINITE_CHUNK"]

#: input entries per chunk (each chunk's temporaries are a few ``[B, chunk]`` fp32 buffers)
FUSED_CHUNK = 1 << 20
#: entries per ``isfinite`` call in :func:`all_finite` (``torch.isfinite`` of a whole n-vector allocates an
#: n-sized float and bool temporary)
FINITE_CHUNK = 1 << 20


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite.

    Fast path: one sum (NaN and ±Inf propagate through a sum), a single read of ``t`` with no temporary.
    Only when the sum is not finite (a NaN/Inf entry, or finite entries whose sum overflows) is it
    decided exactly, ``FINITE_CHUNK`` entries at a time. ``torch.isfinite`` over every chunk costs ~6
    elementwise passes: on the unpruned smollm2 feature model (3 × 106M gradients) it was 1.8 s of a
    3.4 s step (torch profiler), the sum ~0.1 s.
    """
    flat = t.reshape(-1)
    if flat.numel() == 0 or bool(torch.isfinite(flat.sum())):
        return True
    return all(bool(torch.isfinite(flat[lo:lo + FINITE_CHUNK]).all()) for lo in range(0, flat.numel(), FINITE_CHUNK))


_finite = all_finite


@torch.no_grad()
def fused_mse_step(fm: FeatureModel, opt: FeatureAdamW, src: torch.Tensor, tgt: torch.Tensor, *,
                   denominator: int | None = None, reduce_grad: Callable[[torch.Tensor], None] | None = None,
                   chunk: int = FUSED_CHUNK) -> tuple[torch.Tensor, list[str]]:
    """Train ``fm`` one step on sources ``src`` and targets ``tgt`` (``[B, n]`` each, fp32).

    Args:
        fm: the feature model (its weights are updated in place).
        opt: the AdamW over ``fm``'s weights.
        src, tgt: on ``fm``'s device (``TrainConfig.feature_device``).
        denominator: the loss is ``Σ (rec - tgt)² / denominator`` (default ``B · n``, i.e. ``F.mse_loss``;
            data parallel: the whole batch's ``B_total · n`` on every rank, gradients summed by ``reduce_grad``).
        reduce_grad: applied in place to every gradient chunk before it is checked and used.
        chunk: input entries per chunk.

    Returns:
        ``(loss, bad)``: the loss (fp32 scalar; this rank's share under data parallelism) and the names of
        weights whose gradient is not finite. A non-finite loss returns ``bad == []`` with nothing applied.
    """
    if src.ndim != 2 or src.shape != tgt.shape or src.shape[1] != fm.input_dim:
        raise ValueError(f"src and tgt must both be [B, {fm.input_dim}], got {tuple(src.shape)} and {tuple(tgt.shape)}")
    if src.device != fm.device or tgt.device != fm.device:
        raise ValueError(f"src and tgt must be on the feature model's device {fm.device}, got {src.device} and "
                         f"{tgt.device}; move them with .to(fm.device)")
    if fm.dtype != torch.float32:
        raise ValueError(f"the fused step trains fp32 feature models, got {fm.dtype}")
    n, k = fm.input_dim, fm.latent_dim
    src, tgt = src.float(), tgt.float()
    w_e, b_e, w_d, b_d = fm.encoder_weight, fm.encoder_bias, fm.decoder_weight, fm.decoder_bias
    scale = 2.0 / float(denominator if denominator is not None else src.numel())
    h = torch.tanh(torch.nn.functional.linear(src, w_e, b_e))  # [B, k]

    sq = torch.zeros((), dtype=torch.float64, device=h.device)  # on the feature model's device, as every temporary
    grad_h = torch.zeros_like(h)  # [B, k]
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        r = torch.nn.functional.linear(h, w_d[lo:hi], None if b_d is None else b_d[lo:hi]).sub_(tgt[:, lo:hi])
        sq += torch.linalg.vector_norm(r, dtype=torch.float64) ** 2
        grad_h.addmm_(r, w_d[lo:hi])
    loss = (sq * (scale / 2.0)).float()
    grad_h.mul_(scale)
    # [loss not finite, encoder input or gradient not finite]; summed over ranks when data parallel, so
    # every rank takes the same exit (the reducer's collectives must stay in step)
    flags = torch.tensor([float(not _finite(loss)), float(not (_finite(grad_h) and _finite(src)))])
    if reduce_grad is not None:
        reduce_grad(flags)
    if flags[0] > 0:
        return (loss if not _finite(loss) else torch.full((), float("nan"), device=loss.device)), []
    if flags[1] > 0:
        return loss, ["encoder_weight", "encoder_bias"]

    def checked(name: str, g: torch.Tensor) -> bool:
        if reduce_grad is not None:
            reduce_grad(g)
        return _finite(g)

    # decoder: W_d's and b_d's chunks come from one residual of the weights before the step
    dec = [("decoder_weight", opt.begin(w_d), k)] + ([("decoder_bias", opt.begin(b_d), 1)] if b_d is not None else [])
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        r = torch.nn.functional.linear(h, w_d[lo:hi], None if b_d is None else b_d[lo:hi]).sub_(tgt[:, lo:hi])
        grads = [(r.t() @ h).mul_(scale), r.sum(0).mul_(scale)]  # [c, k] (flat rows lo..hi), [c]
        for (name, _, _), g in zip(dec, grads):
            if not checked(name, g):
                return loss, [name]
        for (_, ps, per_row), g in zip(dec, grads):
            ps.update(lo * per_row, hi * per_row, g)
    for _, ps, _ in dec:
        ps.finish()

    # encoder: row j of W_e is the flat slice [j n, (j + 1) n)
    g_pre = grad_h.mul_(1.0 - h * h)  # [B, k]
    ps = opt.begin(w_e)
    for j in range(k):
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            g = g_pre[:, j] @ src[:, lo:hi]
            if not checked("encoder_weight", g):
                return loss, ["encoder_weight"]
            ps.update(j * n + lo, j * n + hi, g)
    ps.finish()
    gb = g_pre.sum(0)
    if not checked("encoder_bias", gb):
        return loss, ["encoder_bias"]
    ps = opt.begin(b_e)
    ps.update(0, k, gb)
    ps.finish()
    return loss, []
