"""The training loop: faithfulness warm-up, then the main phase; atomic, bit-exact checkpoints."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .. import dist
from .._files import save_safetensors_atomic
from .._progress import progress
from ..errors import DecompositionError
from .config import DecomposeConfig
from .layers import ComponentLayer, LayerInfo
from .objectives import LayerObjective, OutputObjective, frozen

logger = logging.getLogger(__name__)

__all__ = ["TrainState", "train", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "checkpoint.safetensors"
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainState:
    """Everything that determines the rest of a run: parameters, optimiser moments, RNG, step."""

    layers: nn.ModuleDict
    opt_warm: torch.optim.Adam
    opt: torch.optim.Adam
    gen: torch.Generator
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def new_state(infos: Mapping[str, LayerInfo], cfg: DecomposeConfig) -> TrainState:
    """Fresh components (initialised from the seed) and optimisers."""
    gen = torch.Generator().manual_seed(cfg.seed)
    layers = nn.ModuleDict()
    for i, info in enumerate(infos.values()):
        layers[str(i)] = ComponentLayer(info, cfg.ci_hidden, gen)
    comps = [cast(ComponentLayer, m) for m in layers.values()]
    uv = [p for layer in comps for p in (layer.V, layer.U)]
    opt_warm = torch.optim.Adam(uv, lr=cfg.faithfulness_warmup_lr)
    ci = [p for layer in comps for p in (layer.w1, layer.b1, layer.w2, layer.b2)]
    opt = torch.optim.Adam([{"params": uv, "lr": cfg.lr}, {"params": ci, "lr": cfg.ci_lr or cfg.lr}])
    return TrainState(layers, opt_warm, opt, gen)


def by_name(state: TrainState, names: list[str]) -> dict[str, ComponentLayer]:
    return {n: state.layers[str(i)] for i, n in enumerate(names)}  # type: ignore[misc]


# ---------------------------------------------------------------------------------------- checkpoints
def _opt_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {f"{prefix}/{i}/{k}": v.detach().clone().reshape(v.shape or (1,))
               for i, st in sd["state"].items() for k, v in st.items() if isinstance(v, Tensor)}
    shapes = {f"{prefix}/{i}/{k}": list(v.shape) for i, st in sd["state"].items() for k, v in st.items()
              if isinstance(v, Tensor)}
    return tensors, {"param_groups": sd["param_groups"], "shapes": shapes}


def _opt_load(prefix: str, opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, shape in meta["shapes"].items():
        _, i, k = key.split("/")
        state.setdefault(int(i), {})[k] = tensors[key].reshape(shape)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, state: TrainState, meta: Mapping[str, Any]) -> None:
    """One safetensors file (tensors + JSON metadata), written to a temp file and renamed into place."""
    tensors = {f"layers/{k}": v.detach().clone().contiguous() for k, v in state.layers.state_dict().items()}
    t1, m1 = _opt_tensors("opt_warm", state.opt_warm)
    t2, m2 = _opt_tensors("opt", state.opt)
    tensors.update(t1)
    tensors.update(t2)
    tensors["rng"] = state.gen.get_state().clone()
    info = {**meta, "step": state.step, "history": state.history, "seconds": state.seconds,
            "opt_warm": m1, "opt": m2}
    save_safetensors_atomic(tensors, path, metadata={"gradedit": json.dumps(info)})


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (raises DecompositionError when the file is unreadable)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["gradedit"])
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise DecompositionError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it or pass "
                                 f"resume=False") from None
    if not isinstance(meta, dict):
        raise DecompositionError(f"checkpoint {path} is unreadable (no metadata); delete it or pass resume=False")
    return meta


def load_checkpoint(path: Path, state: TrainState) -> dict[str, Any]:
    """Restore ``state`` in place from ``path``; returns the checkpoint's metadata."""
    try:
        tensors = load_file(str(path))
        meta = read_checkpoint_meta(path)
    except Exception as err:  # noqa: BLE001 - any read failure means a corrupt file
        raise DecompositionError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it or pass resume=False") from err
    state.layers.load_state_dict({k[len("layers/"):]: v for k, v in tensors.items() if k.startswith("layers/")})
    _opt_load("opt_warm", state.opt_warm, tensors, meta["opt_warm"])
    _opt_load("opt", state.opt, tensors, meta["opt"])
    state.gen.set_state(tensors["rng"])
    state.step = int(meta["step"])
    state.history = list(meta["history"])
    state.seconds = float(meta["seconds"])
    return meta


# ---------------------------------------------------------------------------------------- loop
def train(model: nn.Module, names: list[str], objective: LayerObjective | OutputObjective, state: TrainState,
          cfg: DecomposeConfig, *, checkpoint: Path | None, meta: Mapping[str, Any],
          on_step: StepCallback | None = None) -> TrainState:
    """Run (or continue) training from ``state.step`` to ``faithfulness_warmup_steps + steps``."""
    layers = by_name(state, names)
    warm = int(cfg.faithfulness_warmup_steps or 0)
    total = warm + cfg.steps
    if state.step == 0:
        objective.setup(layers, state.gen)
    bar = progress(total=total, initial=state.step, desc="decompose", leave=False)
    t0 = time.perf_counter() - state.seconds
    running: dict[str, float] = {}
    saved = state.step if checkpoint is not None and checkpoint.is_file() else None

    def diverged(t: int, what: str) -> DecompositionError:
        kept = (f"the checkpoint of step {saved} is kept in {checkpoint}" if saved is not None
                else "no checkpoint was written yet")
        return DecompositionError(f"decomposition stopped at step {t + 1}: {what}; {kept}; lower lr (now {cfg.lr:g}) "
                                  f"or importance_coeff, or set grad_clip")

    try:
        with frozen(model):
            while state.step < total:
                t = state.step
                if t < warm:
                    loss = objective.faithfulness(layers)
                    terms = {"faith": loss, "loss": loss}
                    opt = state.opt_warm
                    for g in opt.param_groups:
                        g["lr"] = cfg.faithfulness_warmup_lr
                else:
                    s = t - warm
                    loss, terms = objective.step(layers, state.gen, s)
                    opt = state.opt
                    scale = cfg.lr_at(s) / cfg.lr
                    opt.param_groups[0]["lr"] = cfg.lr * scale
                    opt.param_groups[1]["lr"] = (cfg.ci_lr or cfg.lr) * scale
                if not torch.isfinite(loss):
                    raise diverged(t, f"the loss is {float(loss)}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for grp in opt.param_groups for p in grp["params"] if p.grad is not None]
                dist.average_gradients(params)  # data parallel: the global batch's gradient (no-op in one process)
                if not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
                    raise diverged(t, "a gradient is not finite (NaN/Inf)")
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], cfg.grad_clip)
                opt.step()
                state.step = t + 1
                vals = {k: float(v.detach()) for k, v in terms.items()}
                for k, v in vals.items():
                    running[k] = running.get(k, 0.0) + v
                running["_n"] = running.get("_n", 0.0) + 1
                if state.step % cfg.log_every == 0 or state.step == total:
                    n = running.pop("_n")
                    avg = {k: v / n for k, v in running.items()}
                    avg["step"] = float(state.step)
                    state.history.append(avg)
                    running = {}
                    bar.set_postfix({k: f"{v:.3g}" for k, v in avg.items() if k != "step"}, refresh=False)
                    logger.debug("step %d %s", state.step, avg)
                bar.update(1)
                state.seconds = time.perf_counter() - t0
                if checkpoint is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 \
                        and state.step < total:
                    save_checkpoint(checkpoint, state, meta)
                    saved = state.step
                if on_step is not None:
                    on_step(state.step, vals)
    finally:
        bar.close()
    state.seconds = time.perf_counter() - t0
    return state
