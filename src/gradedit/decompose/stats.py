"""Statistics of learned components (firing frequency, mean importance, alive count, L0) and the
reconstruction quality of a decomposition under stochastic and importance masks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .hooks import call_model, capture_inputs, masked_model
from .layers import ComponentLayer
from .losses import mean_square, output_recon, sample_masks

__all__ = ["component_stats", "layer_reconstruction", "output_reconstruction", "summarise"]


@torch.no_grad()
def component_stats(layers: Mapping[str, ComponentLayer], xs: Mapping[str, Tensor], threshold: float,
                    alpha: float = 0.01) -> dict[str, dict[str, Any]]:
    """Per module, over input rows ``xs[name] [rows, d_in]``:

    ``firing_frequency [C]`` (share of rows with ``g > threshold``), ``mean_importance [C]``,
    ``alive`` (components that fire on at least one row), ``mean_l0`` (components firing per row),
    ``rows``.
    """
    out: dict[str, dict[str, Any]] = {}
    for n, layer in layers.items():
        g = layer.importance(xs[n].reshape(-1, xs[n].shape[-1]), alpha)
        fires = g > threshold
        freq = fires.double().mean(0)
        out[n] = {
            "rows": int(g.shape[0]),
            "threshold": threshold,
            "firing_frequency": [float(v) for v in freq],
            "mean_importance": [float(v) for v in g.double().mean(0)],
            "alive": int((freq > 0).sum()),
            "mean_l0": float(fires.double().sum(-1).mean()),
        }
    return out


@torch.no_grad()
def layer_reconstruction(layers: Mapping[str, ComponentLayer], xs: Mapping[str, Tensor],
                         weights: Mapping[str, Tensor], seed: int, alpha: float = 0.01) -> dict[str, dict[str, float]]:
    """Per module, each layer's output error (MSE, and MSE / mean square of ``W x``) when masked with

    ``stochastic`` masks (``g + (1 − g) r``, residual mask ``U(0, 1)``, as in training),
    ``importance`` (mask = ``g``, residual off: the active components alone) and
    ``components`` (mask = 1, residual off: ``(VU)ᵀ`` in place of ``W``).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    for n, layer in layers.items():
        x = xs[n].reshape(-1, xs[n].shape[-1])
        y = x @ weights[n].T
        a = layer.inner(x)
        g = layer.importance(x, alpha)
        norm = mean_square(y)
        masks, dmasks = sample_masks({n: g}, gen, delta=True)
        zero = torch.zeros(g.shape[:-1])
        res: dict[str, float] = {}
        for tag, m, dm in (("stochastic", masks[n], dmasks[n]), ("importance", g, zero),
                           ("components", torch.ones_like(g), zero)):
            mse = float(layer.masked_change(a, y, m, dm).double().pow(2).mean())
            res[f"mse_{tag}"] = mse
            res[f"rel_mse_{tag}"] = mse / norm
        res["target_mean_square"] = norm
        out[n] = res
    return out


@torch.no_grad()
def output_reconstruction(model: nn.Module, modules: Mapping[str, nn.Module], layers: Mapping[str, ComponentLayer],
                          batch: Tensor, is_lm: bool, kind: str, seed: int, alpha: float = 0.01,
                          chunk: int = 1) -> dict[str, float]:
    """The model's output with all decomposed layers masked at once, vs the target model:
    KL (``kind="kl"``, nats per position) or MSE, with stochastic masks and with importance as mask
    (residual off). Importances come from the clean forward's layer inputs, as in training.
    Rows are processed ``chunk`` at a time (LM logits are large)."""
    gen = torch.Generator().manual_seed(seed)
    sums = {"stochastic": 0.0, "importance": 0.0}
    for start in range(0, batch.shape[0], chunk):
        part = batch[start: start + chunk]
        with capture_inputs(modules) as seen:
            target = call_model(model, part, is_lm)
        assert target is not None
        if any(len(v) != 1 for v in seen.values()):
            return {}
        g = {n: layers[n].importance(seen[n][0], alpha) for n in layers}
        masks, dmasks = sample_masks(g, gen, delta=True)
        zeros: dict[str, Tensor | None] = {n: torch.zeros(v.shape[:-1]) for n, v in g.items()}
        for tag, ms, ds in (("stochastic", masks, dmasks), ("importance", g, zeros)):
            def mask_fn(n: str, _x: Tensor, ms: Mapping[str, Tensor] = ms,
                        ds: Mapping[str, Tensor | None] = ds) -> tuple[Tensor, Tensor | None]:
                return ms[n], ds[n]

            with masked_model(modules, layers, mask_fn):
                pred = call_model(model, part, is_lm)
            assert pred is not None
            sums[tag] += float(output_recon(pred, target, kind)) * part.shape[0]
    n = batch.shape[0]
    return {"rows": float(n), **{f"{kind}_{tag}": v / n for tag, v in sums.items()}}


def summarise(stats: Mapping[str, Mapping[str, Any]], recon: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """One-line-per-module summary (alive, L0, relative MSEs) for logs and JSON."""
    return {n: {"C": len(s["firing_frequency"]), "alive": s["alive"], "mean_l0": round(s["mean_l0"], 3),
                **{k: round(v, 6) for k, v in recon.get(n, {}).items() if k.startswith("rel_")}}
            for n, s in stats.items()}
