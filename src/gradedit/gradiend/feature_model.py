"""FeatureModel: the GRADIEND encoder–decoder (Drechsel & Herbold, ICLR 2026).

::

    h  = tanh(W_e g + b_e)      encoder; W_e: [k, n], b_e: [k]
    ĝ  = W_d h + b_d            decoder (identity activation); W_d: [n, k], b_d: [n]

``g`` is a gradient flattened over the input space of a :class:`ParamMap` (``n`` selected entries of
base-model parameters); ``k = latent_dim`` is usually 1. A rewrite of the base model is
``θ' = θ + learning_rate · decode(feature_factor)`` (see :meth:`FeatureModel.update_vector`).
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..errors import ArtifactError  # noqa: F401  (re-exported: callers catch it from here)
from ..models.param_map import ParamMap
from .feature_model_io import FORMAT_VERSION, as_dtype, dtype_name, load_feature_model, save_feature_model

logger = logging.getLogger(__name__)


Part = Literal["encoder-weight", "decoder-weight", "decoder-bias", "decoder-sum"]
PARTS: tuple[str, ...] = ("encoder-weight", "decoder-weight", "decoder-bias", "decoder-sum")



class FeatureModel(nn.Module):
    """GRADIEND encoder–decoder over an ``n``-dim gradient space with ``k`` latent neurons.

    Args:
        input_dim: ``n``, the number of gradient entries (``param_map.size`` when a map is given).
        latent_dim: ``k``, the number of feature neurons.
        param_map: which base-model parameter entries the ``n`` inputs are.
        bias_decoder: learn the decoder bias ``b_d``.
        dtype: weight dtype (a ``torch.dtype`` or its name, e.g. ``"bfloat16"``).
        seed: seed of the private generator used for init (the global RNG is never touched);
            ``None`` draws a fresh seed, kept in ``init_seed``.
        metadata: JSON-serialisable provenance (base model id, source/target, data fingerprint...),
            saved in ``config.json`` and restored by :meth:`from_pretrained`.
    """

    decoder_bias: nn.Parameter | None

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = 1,
        *,
        param_map: ParamMap | None = None,
        bias_decoder: bool = True,
        dtype: torch.dtype | str = torch.float32,
        seed: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._setup(input_dim, latent_dim, param_map, metadata)
        dtype = as_dtype(dtype)
        n, k = self.input_dim, self.latent_dim
        # torch.empty + in-place init: no second copy of an n-sized weight is ever allocated.
        self.encoder_weight = nn.Parameter(torch.empty(k, n, dtype=dtype))
        self.encoder_bias = nn.Parameter(torch.empty(k, dtype=dtype))
        self.decoder_weight = nn.Parameter(torch.empty(n, k, dtype=dtype))
        bias = nn.Parameter(torch.empty(n, dtype=dtype)) if bias_decoder else None
        self.register_parameter("decoder_bias", bias)
        self.reset_parameters(seed)

    def _setup(self, input_dim: int, latent_dim: int, param_map: ParamMap | None, metadata: Any) -> None:
        for name, v in [("input_dim", input_dim), ("latent_dim", latent_dim)]:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if param_map is not None and param_map.size != input_dim:
            raise ValueError(f"param_map selects {param_map.size} entries but input_dim is {input_dim}")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        self.input_dim, self.latent_dim = int(input_dim), int(latent_dim)
        self.param_map = param_map
        self.metadata: dict[str, Any] = copy.deepcopy(metadata) if metadata else {}
        self.init_seed: int | None = None

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Init as the reference package: encoder like ``nn.Linear`` (U(±1/√n)), then decoder weight
        and bias U(±x) with ``x = max(W_e)`` (``max|W_e|`` in the degenerate case ``max(W_e) <= 0``)."""
        gen = torch.Generator()
        seed = gen.seed() if seed is None else int(seed)
        gen.manual_seed(seed)
        nn.init.kaiming_uniform_(self.encoder_weight, a=math.sqrt(5), generator=gen)
        bound = 1 / math.sqrt(self.input_dim)
        nn.init.uniform_(self.encoder_bias, -bound, bound, generator=gen)
        x = float(self.encoder_weight.max())
        if x <= 0:
            x = float(self.encoder_weight.abs().max())
        nn.init.uniform_(self.decoder_weight, -x, x, generator=gen)
        if self.decoder_bias is not None:
            nn.init.uniform_(self.decoder_bias, -x, x, generator=gen)
        self.init_seed = seed

    @classmethod
    def _from_tensors(cls, tensors: dict[str, torch.Tensor], *, param_map: ParamMap | None,
                      metadata: dict[str, Any] | None, init_seed: int | None) -> FeatureModel:
        """Wrap existing tensors (no copy, no init) as a FeatureModel."""
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        k, n = tensors["encoder_weight"].shape
        obj._setup(n, k, param_map, metadata)
        obj.encoder_weight = nn.Parameter(tensors["encoder_weight"])
        obj.encoder_bias = nn.Parameter(tensors["encoder_bias"])
        obj.decoder_weight = nn.Parameter(tensors["decoder_weight"])
        bias = tensors.get("decoder_bias")
        obj.register_parameter("decoder_bias", None if bias is None else nn.Parameter(bias))
        obj.init_seed = init_seed
        return obj

    # -- properties -------------------------------------------------------------------------------

    @property
    def bias_decoder(self) -> bool:
        return self.decoder_bias is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder_weight.device

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim:,}, latent_dim={self.latent_dim}, "
                f"bias_decoder={self.bias_decoder}, dtype={dtype_name(self.dtype)}")

    # -- forward ----------------------------------------------------------------------------------

    def pre_activation(self, g: torch.Tensor) -> torch.Tensor:
        """``W_e g + b_e``: ``[..., n] -> [..., k]`` (``g`` is cast to the model dtype)."""
        if g.shape[-1:] != (self.input_dim,):
            raise ValueError(f"expected gradients of shape [..., {self.input_dim}], got {tuple(g.shape)}")
        return F.linear(g.to(self.dtype), self.encoder_weight, self.encoder_bias)

    def encode(self, g: torch.Tensor) -> torch.Tensor:
        """``h = tanh(W_e g + b_e)``: ``[..., n] -> [..., k]``."""
        return torch.tanh(self.pre_activation(g))

    def decode(self, h: torch.Tensor | float) -> torch.Tensor:
        """``W_d h + b_d``: ``[..., k] -> [..., n]``; a python float (``k == 1``) gives ``[n]``."""
        if not torch.is_tensor(h) or h.ndim == 0:
            if self.latent_dim != 1:
                raise ValueError(f"a scalar feature factor needs latent_dim == 1 (have {self.latent_dim})")
            h = torch.as_tensor(h, dtype=self.dtype, device=self.device).reshape(1)
        elif h.shape[-1] != self.latent_dim:
            raise ValueError(f"expected latents of shape [..., {self.latent_dim}], got {tuple(h.shape)}")
        return F.linear(h.to(self.dtype), self.decoder_weight, self.decoder_bias)

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction [..., n], h [..., k])``."""
        h = self.encode(g)
        return self.decode(h), h

    @torch.no_grad()
    def update_vector(self, feature_factor: float, learning_rate: float) -> torch.Tensor:
        """``learning_rate · decode(feature_factor)``: the weight update ``[n]`` (in input-space order)."""
        return self.decode(feature_factor).mul_(learning_rate)

    @torch.no_grad()
    def flip_sign_(self) -> FeatureModel:
        """Negate ``W_e``, ``b_e`` and ``W_d`` in place: ``encode`` flips sign (exactly, tanh is odd) and
        ``decode(-h)`` equals the old ``decode(h)`` bit for bit. Reset optimizer state afterwards."""
        self.encoder_weight.neg_()
        self.encoder_bias.neg_()
        self.decoder_weight.neg_()
        return self

    @torch.no_grad()
    def reorder_latents_(self, order: list[int], signs: list[float]) -> FeatureModel:
        """In place: new latent ``j`` is ``signs[j] * old latent order[j]`` (signs are ±1), exactly: the
        encoder rows and bias are permuted and negated (tanh is odd), the decoder columns likewise, so
        ``decode`` of the reordered latent equals the old ``decode`` bit for bit. Reset optimizer state."""
        k = self.latent_dim
        if sorted(order) != list(range(k)) or len(signs) != k or any(s not in (1, -1, 1.0, -1.0) for s in signs):
            raise ValueError(f"order must be a permutation of range({k}) and signs {k} values of +1/-1, "
                             f"got {order} and {signs}")
        idx = torch.as_tensor(order, device=self.device)
        s = torch.as_tensor(signs, dtype=self.dtype, device=self.device)
        self.encoder_weight.copy_(self.encoder_weight.index_select(0, idx) * s[:, None])
        self.encoder_bias.copy_(self.encoder_bias.index_select(0, idx) * s)
        self.decoder_weight.copy_(self.decoder_weight.index_select(1, idx) * s[None, :])
        return self

    @torch.no_grad()
    def latent(self, j: int) -> FeatureModel:
        """A NEW one-latent model of latent ``j`` (copies): its ``encode`` is column ``j`` of this model's
        and ``decode(ff)`` equals this model's ``decode(ff * e_j)`` (decoder bias included)."""
        if not 0 <= int(j) < self.latent_dim:
            raise IndexError(f"latent {j} out of range for latent_dim {self.latent_dim}")
        j = int(j)
        tensors = {"encoder_weight": self.encoder_weight[j : j + 1].clone(),
                   "encoder_bias": self.encoder_bias[j : j + 1].clone(),
                   "decoder_weight": self.decoder_weight[:, j : j + 1].clone()}
        if self.decoder_bias is not None:
            tensors["decoder_bias"] = self.decoder_bias.detach().clone()
        meta = {**self.metadata, "latent_of": {"latent": j, "latent_dim": self.latent_dim}}
        return type(self)._from_tensors(tensors, param_map=self.param_map, metadata=meta,
                                        init_seed=self.init_seed).train(self.training)

    # -- importance, top-k, pruning ---------------------------------------------------------------

    @torch.no_grad()
    def importance(self, part: Part = "decoder-weight") -> torch.Tensor:
        """Per-input importance ``[n]``: ``|W_e|`` or ``|W_d|`` summed over ``k``, ``|b_d|``, or
        ``|W_d.sum(1) + b_d|`` (``part`` = encoder-weight, decoder-weight, decoder-bias, decoder-sum)."""
        if part == "encoder-weight":
            w = self.encoder_weight
            return w.reshape(-1).abs() if self.latent_dim == 1 else w.abs().sum(0)
        if part == "decoder-weight":
            w = self.decoder_weight
            return w.reshape(-1).abs() if self.latent_dim == 1 else w.abs().sum(1)
        if part == "decoder-bias":
            if self.decoder_bias is None:
                raise ValueError("part='decoder-bias' needs a decoder bias (bias_decoder=False here)")
            return self.decoder_bias.abs()
        if part == "decoder-sum":
            s = self.decoder_weight.sum(1)
            if self.decoder_bias is not None:
                s += self.decoder_bias
            return s.abs_()
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")

    def _count(self, k: int | float) -> int:
        n = self.input_dim
        if isinstance(k, bool):
            raise TypeError("top-k must be an int count or a float fraction, not a bool")
        if isinstance(k, numbers.Integral):
            if not 1 <= k <= n:
                raise ValueError(f"top-k count must be in [1, {n}], got {k}")
            return int(k)
        if isinstance(k, numbers.Real):
            if not 0 < k <= 1:
                raise ValueError(f"a float top-k is a fraction in (0, 1], got {k}; pass an int for a count")
            return max(1, min(n, round(float(k) * n)))
        raise TypeError(f"top-k must be an int or a float, got {type(k).__name__}")

    def topk(self, k: int | float, part: Part = "decoder-weight") -> torch.Tensor:
        """Input positions (int64) of the ``k`` most important entries, most important first.

        ``k``: an int count in ``[1, n]``, or a float fraction in ``(0, 1]`` (rounded, at least 1).
        """
        count = self._count(k)
        imp = self.importance(part)
        if bool(torch.isnan(imp.max())):
            raise ValueError(f"{part} importance contains NaN; the model weights are not finite")
        return _topk_indices(imp, count)

    def topk_params(self, k: int | float, part: Part = "decoder-weight") -> list[tuple[str, int, float]]:
        """``(param_name, flat_index, importance)`` of the top-``k`` entries, most important first."""
        if self.param_map is None:
            raise ValueError("topk_params() needs a param_map; build the model with param_map=...")
        idx = self.topk(k, part)
        values = self.importance(part)[idx].tolist()
        return [(name, flat, v) for (name, flat), v in zip(self.param_map.locate(idx.cpu()), values)]

    def prune(self, topk: int | float | None = None, threshold: float | None = None,
              part: Part = "decoder-weight") -> FeatureModel:
        """A NEW model over the ``topk`` most important inputs, or those with importance ``> threshold``.

        Kept inputs stay in their original order, so ``param_map.select`` remains ordered.
        """
        if topk is not None and threshold is None:
            idx = torch.sort(self.topk(topk, part)).values
        elif threshold is not None and topk is None:
            imp = self.importance(part)
            idx = torch.nonzero(imp > threshold).reshape(-1)
            if idx.numel() == 0:
                raise ValueError(f"no input has {part} importance > {threshold} (max {float(imp.max()):.3g})")
        else:
            raise ValueError("pass exactly one of topk= or threshold=")
        return self.restrict(idx)

    @torch.no_grad()
    def restrict(self, indices: torch.Tensor) -> FeatureModel:
        """A NEW model over the given strictly increasing input positions (weights are sliced copies)."""
        idx = torch.as_tensor(indices).reshape(-1).long().to(self.device)
        if idx.numel() == 0:
            raise ValueError("restrict() needs at least one input position")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError("restrict() needs strictly increasing positions; pass torch.unique(idx)")
        if int(idx[0]) < 0 or int(idx[-1]) >= self.input_dim:
            raise IndexError(f"positions must lie in [0, {self.input_dim})")
        tensors = {
            "encoder_weight": self.encoder_weight.index_select(1, idx),
            "encoder_bias": self.encoder_bias.detach().clone(),
            "decoder_weight": self.decoder_weight.index_select(0, idx),
        }
        if self.decoder_bias is not None:
            tensors["decoder_bias"] = self.decoder_bias.index_select(0, idx)
        pm = None if self.param_map is None else self.param_map.select(idx.cpu())
        new = type(self)._from_tensors(tensors, param_map=pm, metadata=self.metadata, init_seed=self.init_seed)
        logger.info("pruned FeatureModel from %d to %d inputs", self.input_dim, new.input_dim)
        return new.train(self.training)

    # -- persistence ------------------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """What ``config.json`` holds."""
        return {
            "model_type": "gradedit-feature-model", "format_version": FORMAT_VERSION,
            "library": "gradedit", "library_version": __version__,
            "input_dim": self.input_dim, "latent_dim": self.latent_dim, "bias_decoder": self.bias_decoder,
            "dtype": dtype_name(self.dtype), "encoder_activation": "tanh", "decoder_activation": "identity",
            "init_seed": self.init_seed, "has_param_map": self.param_map is not None, "metadata": self.metadata,
        }

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``param_map.json`` into ``path`` (atomic;
        see :func:`gradedit.gradiend.feature_model_io.save_feature_model`)."""
        return save_feature_model(self, Path(path))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> FeatureModel:
        """Load a folder written by :meth:`save_pretrained`.

        Raises:
            FileNotFoundError: the folder or one of its files is missing (named in the message).
            ArtifactError: a file is corrupt/truncated or disagrees with ``config.json``.
        """
        return load_feature_model(cls, Path(path), device=device)


def _topk_indices(values: torch.Tensor, count: int, chunk: int = 1 << 22) -> torch.Tensor:
    """``torch.topk(values, count).indices`` (descending); for ``count < chunk``, per-chunk top-k
    candidates first, so a 100M-entry vector never needs torch.topk's ~16 bytes/entry scratch."""
    if count >= chunk or values.numel() <= chunk:
        return torch.topk(values, count, sorted=True).indices
    cand_v, cand_i = [], []
    for start in range(0, values.numel(), chunk):
        part = values[start : start + chunk]
        v, i = torch.topk(part, min(count, part.numel()), sorted=False)
        cand_v.append(v)
        cand_i.append(i + start)
    return torch.cat(cand_i)[torch.topk(torch.cat(cand_v), count, sorted=True).indices]
