"""Encode data rows with a FeatureModel: h = tanh(W_e·∇θL + b_e), via forward-mode AD (no gradient
materialised) or, for checking, via explicit per-row gradients; :func:`encode_rows_by_rank` splits the
batches over the ranks of a launcher."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import dist
from .._progress import progress
from .feature_model import FeatureModel
from .gradients import GradientEngine, Source

if TYPE_CHECKING:
    from .rows import Rows


def encode_rows(engine: GradientEngine, fm: FeatureModel, rows: Rows, source: Source, *,
                batch_size: int = 8, method: str = "jvp") -> np.ndarray:
    """Encoded values [N, k] of each row's ``source`` gradient.

    ``method="jvp"``: one forward-mode pass per batch and latent dimension gives ⟨w_e, ∇θ L_i⟩ for
    every row of the batch. ``method="explicit"``: one backward per row, then the dense product.

    The feature model may live on another device than the base model (``TrainConfig.feature_device``):
    the jvp path moves each encoder row ``[n]`` to the base model once (never the model); the explicit
    path moves each row's gathered gradient ``[n]`` to the feature model.
    """
    if fm.param_map is None:
        raise ValueError("the feature model has no param_map; it cannot be applied to a base model")
    n = len(rows)
    out = np.zeros((n, fm.latent_dim), dtype=np.float64)
    if method == "explicit":
        for i in progress(range(n), desc="encoding", leave=False):
            g = engine.gradients([rows.texts[i]], rows.factual[i : i + 1], rows.alternative[i : i + 1], source)
            with torch.no_grad():
                out[i] = fm.encode(fm.param_map.gather(g).to(fm.device)).double().cpu().numpy()
        return out
    if method != "jvp":
        raise ValueError(f"method must be 'jvp' or 'explicit', got {method!r}")
    base = engine.lm.device
    w_e = fm.encoder_weight.detach()
    b_e = fm.encoder_bias.detach().to("cpu", torch.float64)  # [k], as python floats below
    # each encoder row [n] goes to the base model's device once; scatter then builds the directions there
    directions = [fm.param_map.scatter(w_e[j].to(base)) for j in range(fm.latent_dim)]
    for s in progress(range(0, n, batch_size), desc="encoding", leave=False):
        sl = slice(s, min(n, s + batch_size))
        for j, d in enumerate(directions):
            pre = engine.jvp_dot(rows.texts[sl], rows.factual[sl], rows.alternative[sl], d, source)
            out[sl, j] = torch.tanh(pre.double() + float(b_e[j])).cpu().numpy()
    return out


def encode_rows_by_rank(engine: GradientEngine, fm: FeatureModel, rows: Rows, source: Source, *,
                        batch_size: int = 8) -> np.ndarray:
    """:func:`encode_rows` (jvp) [N, k]; under ``torchrun`` / ``accelerate launch`` each rank encodes a
    contiguous block of the batches of ``batch_size`` rows and the values are gathered in row order on
    every rank. The batches are the single process's batches, so the values are the same bits (with
    the same torch thread count). Every rank must call it with the same rows."""
    if not dist.is_distributed():
        return encode_rows(engine, fm, rows, source, batch_size=batch_size)
    n = len(rows)
    mine = dist.shard_range(math.ceil(n / batch_size))
    idx = list(range(mine.start * batch_size, min(n, mine.stop * batch_size)))
    part = (encode_rows(engine, fm, rows.subset(idx), source, batch_size=batch_size) if idx
            else np.zeros((0, fm.latent_dim), dtype=np.float64))
    return dist.all_gather_rows(torch.from_numpy(np.ascontiguousarray(part))).numpy()
