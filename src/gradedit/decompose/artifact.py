"""The result of a decomposition: components, importance functions, residuals, statistics; save/load."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .._files import save_safetensors_atomic, write_folder, write_json_atomic
from ..errors import DecompositionError
from .config import DecomposeConfig
from .hooks import masked_model
from .layers import ComponentLayer, LayerInfo, find_linear_modules, model_fingerprint

logger = logging.getLogger(__name__)

__all__ = ["Decomposition", "TENSORS_FILE", "META_FILE", "FORMAT"]

TENSORS_FILE = "decomposition.safetensors"
META_FILE = "decomposition.json"
FORMAT = "gradedit-decomposition/1"


def _model_of(model: Any) -> nn.Module:
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and not isinstance(model, nn.Module) else model


class Decomposition:
    """Learned rank-1 components of some linear layers of a model (SPD-style).

    For module ``m`` with ``C`` components: ``V [d_in, C]``, ``U [C, d_out]`` (component ``c``'s weight
    in ``[out, in]`` orientation is ``outer(U[c], V[:, c])``), a residual ``Δ = W − (VU)ᵀ`` ``[out, in]``
    and an importance function ``x [..., d_in] → g [..., C]``.

    Attributes:
        infos: per module: ``d_in``, ``d_out``, ``C``, bias, stored orientation.
        config: the :class:`DecomposeConfig` it was trained with.
        fingerprints: per module, a hash of the target weights it decomposes.
        stats: component statistics (see :func:`gradedit.decompose.stats.component_stats`).
        metrics: faithfulness and reconstruction measured after training; ``meta``: run facts.
    """

    def __init__(self, infos: Mapping[str, LayerInfo], layers: Mapping[str, ComponentLayer],
                 residuals: Mapping[str, Tensor], config: DecomposeConfig, fingerprints: Mapping[str, str],
                 stats: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        self.infos = dict(infos)
        self._layers = dict(layers)
        self._residuals = dict(residuals)
        self.config = config
        self.fingerprints = dict(fingerprints)
        self.stats: dict[str, Any] = dict(stats or {})
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.meta: dict[str, Any] = dict(meta or {})
        for layer in self._layers.values():
            layer.requires_grad_(False)

    # ------------------------------------------------------------------ access
    @property
    def modules(self) -> list[str]:
        """Decomposed module names, in model order."""
        return list(self.infos)

    @property
    def objective(self) -> str:
        return self.config.objective

    def __repr__(self) -> str:
        cs = ", ".join(f"{n}:{i.C}" for n, i in self.infos.items())
        return f"Decomposition({self.objective}, {cs})"

    def _get(self, module: str) -> ComponentLayer:
        if module not in self._layers:
            raise DecompositionError(f"{module!r} is not decomposed here; decomposed modules: {self.modules}")
        return self._layers[module]

    def layer(self, module: str) -> ComponentLayer:
        """The :class:`ComponentLayer` of ``module`` (parameters frozen)."""
        return self._get(module)

    def components(self, module: str) -> tuple[Tensor, Tensor]:
        """``(V [d_in, C], U [C, d_out])`` of ``module`` (copies)."""
        layer = self._get(module)
        return layer.V.detach().clone(), layer.U.detach().clone()

    def residual(self, module: str) -> Tensor:
        """``Δ = W − (VU)ᵀ`` ``[d_out, d_in]`` of ``module``."""
        self._get(module)
        return self._residuals[module].clone()

    @torch.no_grad()
    def importance(self, module: str, x: Tensor) -> Tensor:
        """Causal importance ``g [..., C]`` in ``[0, 1]`` of ``module``'s components on inputs ``x [..., d_in]``."""
        layer = self._get(module)
        if x.shape[-1] != layer.info.d_in:
            raise DecompositionError(f"{module} takes inputs of width {layer.info.d_in}, got shape {tuple(x.shape)}")
        return layer.importance(x.float(), self.config.leaky_alpha)

    def faithfulness(self, relative: bool = False) -> float:
        """``Σ‖W − (VU)ᵀ‖²`` divided by the number of weights (``relative``: by ``Σ‖W‖²``)."""
        num = sum(float(d.double().pow(2).sum()) for d in self._residuals.values())
        if relative:
            den = sum(float((d.double() + self._layers[n].weight().double()).pow(2).sum())
                      for n, d in self._residuals.items())
            return num / max(den, 1e-300)
        return num / max(sum(d.numel() for d in self._residuals.values()), 1)

    # ------------------------------------------------------------------ model binding
    def check(self, model: Any) -> dict[str, nn.Module]:
        """The decomposed modules of ``model`` (a module or LanguageModel), verified against the fingerprints.

        Raises:
            DecompositionError: a module is missing or its weights differ from the decomposed ones.
        """
        net = _model_of(model)
        named = dict(net.named_modules())
        missing = [n for n in self.modules if n not in named]
        if missing:
            raise DecompositionError(f"this decomposition is of another model: {type(net).__name__} has no module "
                                     f"{missing[0]!r}; use the model it was trained on or run decompose() on this one")
        mods = find_linear_modules(net, self.modules)
        fps = model_fingerprint(mods)
        bad = [n for n in self.modules if fps.get(n) != self.fingerprints.get(n)]
        if bad:
            raise DecompositionError(f"this decomposition is of another model: the weights of {bad[0]!r} differ "
                                     f"({fps.get(bad[0])} != {self.fingerprints.get(bad[0])}); use the model it was "
                                     f"trained on or run decompose() on this one")
        return mods

    @contextlib.contextmanager
    def masked(self, model: Any, masks: Mapping[str, Tensor | float] | str = "importance",
               residual: float | None = None) -> Iterator[None]:
        """Run ``model`` with component masks inside the block (weights untouched).

        ``masks``: per module a mask ``[C]`` (broadcast over positions) or a scalar, modules left out
        run unchanged; or ``"importance"``: each module's own importance on its input at that point.
        ``residual``: the residual's mask (``None`` = 1, i.e. ``W`` itself minus the masked-out parts).
        """
        mods = self.check(model)
        alpha = self.config.leaky_alpha
        if isinstance(masks, str):
            if masks != "importance":
                raise DecompositionError(f"masks is a mapping or 'importance', got {masks!r}")
            chosen = dict(self._layers)
        else:
            chosen = {n: self._get(n) for n in masks}

        def mask_fn(name: str, x: Tensor) -> tuple[Tensor, Tensor | None]:
            layer = chosen[name]
            if isinstance(masks, str):
                m = layer.importance(x.float(), alpha)
            else:
                m = torch.as_tensor(masks[name], dtype=layer.V.dtype)
            dm = None if residual is None else torch.full(x.shape[:-1], float(residual))
            return m, dm

        with torch.no_grad(), masked_model({n: mods[n] for n in chosen}, chosen, mask_fn):
            yield

    def statistics(self, model: Any, inputs: Any, *, threshold: float | None = None,
                   max_rows: int = 8192) -> dict[str, dict[str, Any]]:
        """Component statistics (firing frequency, mean importance, alive, mean L0) on other inputs,
        e.g. German-only text: ``inputs`` as for :func:`~gradedit.decompose.decompose` (texts need a
        LanguageModel), at most ``max_rows`` rows (tokens) per layer."""
        from .data import build_pool, cache_layer_inputs
        from .objectives import frozen
        from .stats import component_stats

        mods = self.check(model)
        net = _model_of(model)
        tok = getattr(model, "tokenizer", None) if not isinstance(model, nn.Module) else None
        pool = build_pool(inputs, tokenizer=tok, seq_len=self.config.seq_len)
        with frozen(net):
            acts, groups = cache_layer_inputs(net, mods, pool, max_rows)
        xs = {n: acts[groups[n]] for n in self.modules}
        thr = self.config.fire_threshold if threshold is None else threshold
        return component_stats(self._layers, xs, thr, self.config.leaky_alpha)

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "modules": [i.to_dict() for i in self.infos.values()],
                "n_components": {n: i.C for n, i in self.infos.items()}, "objective": self.objective,
                "steps": self.config.steps, "seed": self.config.seed, "config": self.config.to_dict(),
                "fingerprints": self.fingerprints, "metrics": self.metrics, "meta": self.meta}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``decomposition.safetensors`` + ``decomposition.json`` (+ ``stats.json``) into folder ``path``."""
        path = Path(path)

        def write(folder: Path) -> None:
            tensors: dict[str, Tensor] = {}
            for n, layer in self._layers.items():
                for k, v in layer.state_dict().items():
                    tensors[f"{n}::{k}"] = v.detach().contiguous().clone()
                tensors[f"{n}::residual"] = self._residuals[n].contiguous()
            save_safetensors_atomic(tensors, folder / TENSORS_FILE, metadata={"format": FORMAT})
            write_json_atomic(folder / "stats.json", self.stats)
            write_json_atomic(folder / META_FILE, self.to_json())  # last: its presence marks a complete save

        write_folder(path, write)
        logger.info("saved decomposition of %d module(s) to %s", len(self.infos), path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any = None) -> Decomposition:
        """Read a folder written by :meth:`save`; with ``model``, also :meth:`check` it against that model."""
        path = Path(path)
        meta_file, tensor_file = path / META_FILE, path / TENSORS_FILE
        if not meta_file.is_file() or not tensor_file.is_file():
            raise DecompositionError(f"no decomposition in {path} ({META_FILE} or {TENSORS_FILE} missing); "
                                     f"give the folder that decompose(out=...) or Decomposition.save wrote")
        try:
            info = json.loads(meta_file.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_file))
            stats = json.loads((path / "stats.json").read_text(encoding="utf-8")) if (path / "stats.json").is_file() else {}
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt artefact
            raise DecompositionError(f"decomposition in {path} is unreadable ({type(err).__name__}: {err}); "
                                     f"re-run decompose()") from err
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            got = info.get("format") if isinstance(info, dict) else type(info).__name__
            raise DecompositionError(f"{meta_file} has format {got!r}, expected {FORMAT!r}; re-run decompose()")
        try:
            config = DecomposeConfig.from_dict(info["config"])
            infos = {d["name"]: LayerInfo(**d) for d in info["modules"]}
            fingerprints = dict(info["fingerprints"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DecompositionError(f"{meta_file} is incomplete or inconsistent ({type(err).__name__}: {err}); "
                                     f"re-run decompose()") from None
        layers, residuals = {}, {}
        for n, li in infos.items():
            layer = ComponentLayer(li, config.ci_hidden)
            sd = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.split("::", 1)[0] == n}
            if "residual" not in sd:
                raise DecompositionError(f"{tensor_file} holds no tensors of module {n!r} that {META_FILE} lists; "
                                         f"the two files are of different decompositions: re-run decompose()")
            residuals[n] = sd.pop("residual")
            try:
                layer.load_state_dict(sd)
            except RuntimeError as err:
                raise DecompositionError(f"{tensor_file} does not fit {n} ({err.args[0].splitlines()[0]}); "
                                         f"re-run decompose()") from err
            layers[n] = layer
        dec = cls(infos, layers, residuals, config, fingerprints, stats, info.get("metrics"), info.get("meta"))
        if model is not None:
            dec.check(model)
        return dec
