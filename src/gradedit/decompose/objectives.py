"""The two training objectives: per-layer reconstruction from cached inputs, or the model's output."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from ..errors import DecompositionError
from .config import DecomposeConfig
from .data import InputPool, cache_layer_inputs
from .hooks import call_model, capture_inputs, masked_model
from .layers import ComponentLayer, logical_weight, lower_leaky_hard_sigmoid, upper_leaky_hard_sigmoid
from .losses import faithfulness, importance_minimality, layer_recon, mean_square, output_recon, sample_masks
from .parallel import BatchSplit

logger = logging.getLogger(__name__)

__all__ = ["LayerObjective", "OutputObjective", "frozen", "make_objective"]

Terms = dict[str, Tensor]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter of ``model``; both restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


def _importances(layers: Mapping[str, ComponentLayer], xs: Mapping[str, Tensor], alpha: float
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Inner activations, mask importances (lower leaky) and loss importances (upper leaky), per layer."""
    a, gl, gu = {}, {}, {}
    for n, layer in layers.items():
        a[n] = layer.inner(xs[n])
        lg = layer.logits(a[n])
        gl[n] = lower_leaky_hard_sigmoid(lg, alpha)
        gu[n] = upper_leaky_hard_sigmoid(lg, alpha)
    return a, gl, gu


class _Base:
    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module], pool: InputPool,
                 cfg: DecomposeConfig, split: BatchSplit | None = None) -> None:
        self.model, self.modules, self.pool, self.cfg = model, dict(modules), pool, cfg
        #: this rank's share of each global batch (one process: all of it)
        self.split = split or BatchSplit()
        self.weights = {n: logical_weight(m).detach().float().contiguous() for n, m in modules.items()}
        self.weight_total = sum(float(w.double().pow(2).sum()) for w in self.weights.values())

    def faithfulness(self, layers: Mapping[str, ComponentLayer], gen: torch.Generator | None = None) -> Tensor:
        """Relative faithfulness error (exact; estimated from ``faithfulness_rows`` random rows when given ``gen``)."""
        k = self.cfg.faithfulness_rows
        if gen is None or k is None:
            return faithfulness(layers, self.weights, self.weight_total)
        rows = {n: torch.randint(0, w.shape[0], (min(k, w.shape[0]),), generator=gen) for n, w in self.weights.items()}
        return faithfulness(layers, self.weights, self.weight_total, rows)

    def init_layers(self, layers: Mapping[str, ComponentLayer], xs: Mapping[str, Tensor],
                    gen: torch.Generator) -> None:
        """Before training: set each layer's fixed importance-input scale to 1 / RMS norm of its inputs
        ``xs [rows, d_in]``; with ``init="data"`` point each ``V`` column at a random non-zero input row
        (unit norm); unless a faithfulness warm-up is asked for, fit ``U`` by ridge least squares so
        that ``(VU)ᵀ ≈ W`` from the first step (exact up to the tiny ridge when ``C ≥ rank W``)."""
        with torch.no_grad():
            for n, layer in layers.items():
                x = xs[n].reshape(-1, xs[n].shape[-1]).float()
                rms = float(x.double().pow(2).sum(-1).mean().sqrt())
                layer.ci_in_scale.fill_(1.0 / max(rms, 1e-12))
                if self.cfg.init == "data":
                    norms = x.norm(dim=-1)
                    rows = x[norms > 1e-6 * max(float(norms.max()), 1e-30)]
                    if rows.shape[0] == 0:
                        raise DecompositionError(f"{n} sees only zero inputs; give other inputs or init='random'")
                    v = rows[torch.randint(0, rows.shape[0], (layer.info.C,), generator=gen)]
                    layer.V.copy_((v / v.norm(dim=-1, keepdim=True)).T)
                if not self.cfg.faithfulness_warmup_steps:
                    V = layer.V.double()
                    gram = V.T @ V
                    ridge = 1e-4 * float(gram.diagonal().mean())
                    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
                    layer.U.copy_(torch.linalg.solve(gram + ridge * eye, V.T @ self.weights[n].T.double()))

    def minimality(self, gu: Mapping[str, Tensor], p: float, n_local: int) -> Tensor:
        """Importance minimality of this rank's ``n_local`` batch rows, over the global batch."""
        flat = {n: g.reshape(-1, g.shape[-1]) for n, g in gu.items()}
        if not self.split.active:
            return importance_minimality(flat, p, self.cfg.importance_eps, self.cfg.frequency_beta)
        per_row = next(iter(flat.values())).shape[0] // n_local  # positions per batch row
        return importance_minimality(flat, p, self.cfg.importance_eps, self.cfg.frequency_beta,
                                     reduce=self.split.sum, total_rows=per_row * self.cfg.batch_size)

    def draw(self, gen: torch.Generator, n: int) -> tuple[Tensor, slice]:
        """The global batch's row indices ``[batch_size]`` (drawn from ``range(n)``) and this rank's part."""
        idx = torch.randint(0, n, (self.cfg.batch_size,), generator=gen)
        return idx, self.split.rows(self.cfg.batch_size)

    def masks(self, gl: Mapping[str, Tensor], gen: torch.Generator, part: slice
              ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
        if not self.split.active:
            return sample_masks(gl, gen, self.cfg.delta_component)
        return sample_masks(gl, gen, self.cfg.delta_component, part, self.cfg.batch_size)

    def combine(self, faith: Tensor, recon: Tensor, imp: Tensor, imp_coeff: float,
                extra: Terms | None = None) -> tuple[Tensor, Terms]:
        cfg = self.cfg
        loss = cfg.faithfulness_coeff * faith + cfg.stoch_coeff * recon + imp_coeff * imp
        terms = {"faith": faith, "stoch": recon, "imp": imp}
        for k, v in (extra or {}).items():
            loss = loss + cfg.layerwise_coeff * v
            terms[k] = v
        terms["loss"] = loss
        return loss, terms


class LayerObjective(_Base):
    """Each layer's own output reconstructed (normalised MSE) from cached inputs; no model forward per step."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module], pool: InputPool,
                 cfg: DecomposeConfig, split: BatchSplit | None = None) -> None:
        super().__init__(model, modules, pool, cfg, split)
        with frozen(model):
            self.acts, self.groups = cache_layer_inputs(model, modules, pool, cfg.max_pool_rows)
        self.rows = int(next(iter(self.acts.values())).shape[0])
        # normaliser per layer: mean over rows and outputs of (W x)^2
        self.norms = {}
        for n in modules:
            x = self.acts[self.groups[n]][:4096]
            self.norms[n] = mean_square(x @ self.weights[n].T)

    def layer_inputs(self, idx: Tensor | slice) -> dict[str, Tensor]:
        per_group = {g: a[idx] for g, a in self.acts.items()}
        return {n: per_group[self.groups[n]] for n in self.modules}

    def setup(self, layers: Mapping[str, ComponentLayer], gen: torch.Generator) -> None:
        self.init_layers(layers, self.layer_inputs(slice(0, 4096)), gen)

    def step(self, layers: Mapping[str, ComponentLayer], gen: torch.Generator, s: int) -> tuple[Tensor, Terms]:
        """Loss and its terms at main-phase step ``s`` (one batch, one mask sample)."""
        idx, part = self.draw(gen, self.rows)
        xs = self.layer_inputs(idx[part])
        n_local, B = part.stop - part.start, self.cfg.batch_size
        a, gl, gu = _importances(layers, xs, self.cfg.leaky_alpha)
        masks, dmasks = self.masks(gl, gen, part)
        recon = torch.zeros(())
        for n, layer in layers.items():
            with torch.no_grad():
                y = xs[n] @ self.weights[n].T
            term = layer_recon(layer, a[n], y, masks[n], dmasks[n], self.norms[n])
            recon = recon + self.split.mean(term, n_local, B)
        recon = recon / len(layers)
        imp = self.minimality(gu, self.cfg.p_at(s), n_local)
        return self.combine(self.faithfulness(layers, gen), recon, imp, self.cfg.importance_coeff_at(s))


class OutputObjective(_Base):
    """The model's output under masks vs the target model's (KL for LMs, normalised MSE otherwise)."""

    def __init__(self, model: nn.Module, modules: Mapping[str, nn.Module], pool: InputPool,
                 cfg: DecomposeConfig, split: BatchSplit | None = None) -> None:
        super().__init__(model, modules, pool, cfg, split)
        self.kind = cfg.output_loss if cfg.output_loss != "auto" else ("kl" if pool.is_lm else "mse")
        first = pool.data[: min(len(pool), 256)]
        with frozen(model), torch.no_grad():
            xs, target = self.clean(first)
        self.first_inputs = xs
        self.norm = mean_square(target) if self.kind == "mse" else 1.0

    def clean(self, batch: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Target output and each module's input for ``batch`` (no grad)."""
        with torch.no_grad(), capture_inputs(self.modules) as seen:
            target = call_model(self.model, batch, self.pool.is_lm)
        many = [n for n, v in seen.items() if len(v) != 1]
        if many:
            raise DecompositionError(f"module {many[0]!r} ran {len(seen[many[0]])} times in one forward; "
                                     f"objective='output' needs each decomposed module called once — use objective='layer'")
        assert target is not None
        return {n: v[0] for n, v in seen.items()}, target

    def setup(self, layers: Mapping[str, ComponentLayer], gen: torch.Generator) -> None:
        self.init_layers(layers, self.first_inputs, gen)

    def masked_output(self, layers: Mapping[str, ComponentLayer], batch: Tensor,
                      masks: Mapping[str, Tensor], dmasks: Mapping[str, Tensor | None]) -> Tensor:
        with masked_model(self.modules, layers, lambda n, _x: (masks[n], dmasks[n])):
            out = call_model(self.model, batch, self.pool.is_lm)
        assert out is not None
        return out

    def step(self, layers: Mapping[str, ComponentLayer], gen: torch.Generator, s: int) -> tuple[Tensor, Terms]:
        """Loss and its terms at main-phase step ``s`` (one batch, one mask sample)."""
        idx, part = self.draw(gen, len(self.pool))
        batch = self.pool.data[idx[part]]
        n_local, B = part.stop - part.start, self.cfg.batch_size
        xs, target = self.clean(batch)
        _a, gl, gu = _importances(layers, xs, self.cfg.leaky_alpha)
        masks, dmasks = self.masks(gl, gen, part)
        out = self.masked_output(layers, batch, masks, dmasks)
        recon = self.split.mean(output_recon(out, target, self.kind, self.norm), n_local, B)
        extra: Terms = {}
        if self.cfg.layerwise_coeff > 0 and len(layers) > 1:
            lw = torch.zeros(())
            for n in layers:
                out = self.masked_output({n: layers[n]}, batch, masks, dmasks)
                lw = lw + self.split.mean(output_recon(out, target, self.kind, self.norm), n_local, B)
            extra["layerwise"] = lw / len(layers)
        imp = self.minimality(gu, self.cfg.p_at(s), n_local)
        return self.combine(self.faithfulness(layers, gen), recon, imp, self.cfg.importance_coeff_at(s), extra)


def make_objective(model: nn.Module, modules: Mapping[str, nn.Module], pool: InputPool,
                   cfg: DecomposeConfig, split: BatchSplit | None = None) -> LayerObjective | OutputObjective:
    cls = LayerObjective if cfg.objective == "layer" else OutputObjective
    return cls(model, modules, pool, cfg, split)
