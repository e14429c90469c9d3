"""Loss terms of the decomposition: faithfulness, reconstruction under masks, importance minimality."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .layers import ComponentLayer

__all__ = ["faithfulness", "importance_minimality", "sample_masks", "layer_recon", "output_recon", "mean_square"]


def faithfulness(layers: Mapping[str, ComponentLayer], weights: Mapping[str, Tensor], total: float,
                 rows: Mapping[str, Tensor] | None = None) -> Tensor:
    """``Σ_layers ‖W − (VU)ᵀ‖² / total`` with ``total = Σ_layers ‖W‖²`` (0 = the components sum to ``W``).

    ``rows`` (per layer, output-row indices) gives an unbiased estimate from those rows only, scaled
    by ``d_out / len(rows)``: much cheaper for wide layers.
    """
    num = torch.zeros(())
    for n, layer in layers.items():
        if rows is None:
            num = num + ((weights[n] - layer.weight()) ** 2).sum()
        else:
            idx = rows[n]
            part = weights[n][idx] - (layer.V @ layer.U[:, idx]).T
            num = num + (part ** 2).sum() * (weights[n].shape[0] / idx.numel())
    return num / max(total, 1e-30)


def importance_minimality(g_upper: Mapping[str, Tensor], p: float, eps: float, beta: float,
                          reduce: Callable[[Tensor], Tensor] | None = None, total_rows: int | None = None) -> Tensor:
    """``Σ_layers Σ_c [mean_rows(g+eps)^p · (1 + beta · log2(1 + sum_rows(g+eps)^p))]``.

    ``g_upper [rows, C]`` per layer; ``beta > 0`` adds VPD's frequency (description-length) term.
    Data parallel: ``reduce`` sums the per-component row sums ``[C]`` over ranks and ``total_rows``
    is the number of rows of all ranks together.
    """
    total = torch.zeros(())
    for g in g_upper.values():
        vals = (g + eps).pow(p)
        s = vals.sum(0)
        if reduce is not None:
            s = reduce(s)
        mean = s / (vals.shape[0] if total_rows is None else total_rows)
        term = mean if beta == 0 else mean * (1 + beta * torch.log2(1 + s))
        total = total + term.sum()
    return total


def sample_masks(g_lower: Mapping[str, Tensor], generator: torch.Generator, delta: bool,
                 part: slice | None = None, total: int | None = None
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """Stochastic masks ``m = g + (1 − g) r`` with ``r ~ U(0, 1)``; a residual mask ``U(0, 1)`` per row.

    Without the residual component (``delta=False``) the residual mask is 0 (components alone).
    Data parallel: ``g`` holds rows ``part`` of a global batch of ``total`` rows (dim 0); the noise
    is drawn for the whole global batch, in the same order as one process, and sliced.
    """
    def rand(shape: torch.Size, dtype: torch.dtype) -> Tensor:
        if part is None or total is None:
            return torch.rand(shape, generator=generator, dtype=dtype)
        return torch.rand((total, *shape[1:]), generator=generator, dtype=dtype)[part]

    masks: dict[str, Tensor] = {}
    dmasks: dict[str, Tensor | None] = {}
    for name, g in g_lower.items():
        r = rand(g.shape, g.dtype)
        masks[name] = g + (1 - g) * r
        rows = g.shape[:-1]
        dmasks[name] = rand(rows, g.dtype) if delta else torch.zeros(rows, dtype=g.dtype)
    return masks, dmasks


def layer_recon(layer: ComponentLayer, a: Tensor, y_nobias: Tensor, mask: Tensor,
                delta_mask: Tensor | None, norm: float) -> Tensor:
    """Mean squared error of the masked layer's output vs its target output, divided by ``norm``.

    ``a [rows, C]`` inner activations, ``y_nobias [rows, d_out]`` = ``W x``; ``norm`` is the mean
    of ``‖W x‖² / d_out`` over the data (so 1.0 means "as bad as outputting the bias alone").
    """
    change = layer.masked_change(a, y_nobias, mask, delta_mask)
    return change.pow(2).mean() / norm


def output_recon(pred: Tensor, target: Tensor, kind: str, norm: float = 1.0,
                 valid: Tensor | None = None) -> Tensor:
    """``KL(p_target ‖ p_pred)`` per position (``kind="kl"``, logits ``[..., V]``) or MSE / ``norm``.

    ``valid [...]`` (bool, KL only) selects the positions that count.
    """
    if kind == "kl":
        lt = torch.log_softmax(target.float(), -1)
        lp = torch.log_softmax(pred.float(), -1)
        kl = (lt.exp() * (lt - lp)).sum(-1)
        if valid is not None:
            return kl[valid].mean()
        return kl.mean()
    return (pred.float() - target.float()).pow(2).mean() / norm


def mean_square(t: Tensor) -> float:
    """Mean of ``t²`` in float64 (a normaliser; at least a tiny positive number)."""
    return max(float(t.double().pow(2).mean()), 1e-30) if t.numel() else 1.0
