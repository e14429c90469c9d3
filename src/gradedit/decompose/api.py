"""``decompose()``: learn sparse rank-1 components of chosen linear layers of any torch module."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import dist
from .._files import lock_folder
from ..errors import DecompositionError
from ..models import LanguageModel
from ..models.dispatch import refuse_dispatched
from .artifact import META_FILE, Decomposition
from .config import DecomposeConfig, Objective
from .data import build_pool
from .layers import LayerInfo, find_linear_modules, model_fingerprint, resolve_components
from .objectives import frozen, make_objective
from .parallel import BatchSplit
from .stats import component_stats, layer_reconstruction, output_reconstruction, summarise
from .train import (
    CHECKPOINT_FILE,
    StepCallback,
    by_name,
    load_checkpoint,
    new_state,
    read_checkpoint_meta,
    train,
)

logger = logging.getLogger(__name__)

__all__ = ["decompose"]


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("gradedit")
    except Exception:  # noqa: BLE001 - metadata is optional (e.g. running from a source tree)
        return "unknown"


def decompose(model: nn.Module | LanguageModel, modules: str | Sequence[str], n_components: int | Mapping[str, int],
              inputs: Tensor | Iterable[Tensor] | Sequence[str], *, objective: Objective | None = None,
              steps: int | None = None, batch_size: int | None = None, seed: int | None = None,
              out: str | os.PathLike[str] | None = None, resume: bool = True, config: DecomposeConfig | None = None,
              on_step: StepCallback | None = None, **options: Any) -> Decomposition:
    """Decompose the matching linear layers of ``model`` into ``C`` rank-1 components each (SPD-style).

    Args:
        model: any ``torch.nn.Module`` (called as ``model(batch)``), or a gradedit ``LanguageModel``
            (called with ``input_ids``; texts are tokenised and packed into ``seq_len`` blocks).
        modules: module names or fnmatch patterns of ``nn.Linear`` / HF ``Conv1D`` layers.
        n_components: ``C`` for every module, or ``{pattern: C}`` (first matching pattern wins).
        inputs: a tensor ``[N, ...]`` of model inputs, an iterable of such tensors, or texts (LMs).
        objective, steps, batch_size, seed, **options: override fields of ``config`` (see
            :class:`DecomposeConfig`); an unknown option is an error.
        out: folder for checkpoints and the result. With ``resume``, a finished result there (same
            model, data and options) is loaded instead of retrained and a checkpoint is continued
            (bit-identical to an uninterrupted run on the same machine and thread count).
        on_step: called as ``on_step(step, loss_terms)`` after every optimiser step.

    Under ``torchrun`` / ``accelerate launch`` every rank calls this with the same arguments; each
    rank computes its slice of every global batch of ``batch_size`` rows and the gradients are
    averaged (:mod:`gradedit.decompose.parallel`), so the result equals one process up to float
    rounding. Rank 0 alone locks ``out`` and writes checkpoints and the result; every rank returns
    the same :class:`Decomposition`.

    Returns:
        A :class:`Decomposition` (also saved to ``out`` when given).

    Raises:
        DecompositionError: bad modules / ``n_components`` / inputs / options, ``out`` holds a
            decomposition made with other options, data or weights (and ``resume`` is True), or a
            NaN/Inf loss or gradient stopped training (the last checkpoint in ``out`` is kept).
        FolderLocked: another process is decomposing into ``out`` (it is locked for the whole run).
    """
    overrides = {k: v for k, v in dict(objective=objective, steps=steps, batch_size=batch_size, seed=seed).items()
                 if v is not None}
    cfg = (config or DecomposeConfig()).replace(**overrides, **options)
    lm = model if isinstance(model, LanguageModel) else None
    net = lm.model if lm is not None else model
    if not isinstance(net, nn.Module):
        raise DecompositionError(f"model must be a torch.nn.Module or a gradedit LanguageModel, got {type(model).__name__}")
    refuse_dispatched(net, "decompose (training a decomposition of the layers' weights)")
    mods = find_linear_modules(net, modules)
    cs = resolve_components(list(mods), n_components)
    infos = {n: LayerInfo.of(n, m, cs[n]) for n, m in mods.items()}
    pool = build_pool(inputs, tokenizer=lm.tokenizer if lm is not None else None, seq_len=cfg.seq_len)
    fps = model_fingerprint(mods)
    run_meta = {"training_hash": cfg.training_hash(), "data": pool.fingerprint(), "fingerprints": fps,
                "n_components": cs}
    split = BatchSplit.current()
    if split.world > cfg.batch_size:
        raise DecompositionError(f"batch_size={cfg.batch_size} is smaller than the {split.world} processes; give "
                                 f"every process at least one row (batch_size >= {split.world})")
    out_path = Path(out) if out is not None else None
    ckpt = out_path / CHECKPOINT_FILE if out_path is not None else None
    with contextlib.ExitStack() as stack:
        finished: list[Decomposition] = []

        def prepare() -> str:
            """Rank 0: lock ``out`` for the run and say whether it holds a finished result ("done"), a
            checkpoint to continue ("resume") or nothing to use ("fresh")."""
            if out_path is None:
                return "fresh"
            stack.enter_context(lock_folder(out_path))  # one process per out folder
            if (out_path / META_FILE).is_file() and resume:
                done = Decomposition.load(out_path)
                same = (done.meta.get("training_hash"), done.meta.get("data"), done.fingerprints) == \
                    (run_meta["training_hash"], run_meta["data"], fps) and {n: i.C for n, i in done.infos.items()} == cs
                if not same:
                    raise DecompositionError(f"{out_path} holds a decomposition made with other options, data or "
                                             f"weights; pass another out folder or resume=False to overwrite it")
                finished.append(done)
                return "done"
            if ckpt is not None and ckpt.is_file():
                if not resume:
                    ckpt.unlink()
                    return "fresh"
                old = read_checkpoint_meta(ckpt)
                if {k: old.get(k) for k in run_meta} != run_meta:
                    raise DecompositionError(f"{ckpt} is a checkpoint of a run with other options, data or weights; "
                                             f"pass another out folder or resume=False to start over")
                return "resume"
            return "fresh"

        decision = dist.main_decides(prepare)  # rank 0 decides, every rank follows (one process: just prepare())
        if decision == "done":
            logger.info("loaded the finished decomposition in %s", out_path)
            return finished[0] if finished else Decomposition.load(out_path)  # type: ignore[arg-type]

        state = new_state(infos, cfg)
        if decision == "resume" and ckpt is not None:
            load_checkpoint(ckpt, state)
            logger.info("resuming from %s at step %d", ckpt, state.step)
        logger.info("decomposing %d module(s) (%s) with objective=%s, %d+%d steps, batch %d, %d torch threads%s",
                    len(mods), ", ".join(f"{n}:{c}" for n, c in cs.items()), cfg.objective,
                    cfg.faithfulness_warmup_steps, cfg.steps, cfg.batch_size, torch.get_num_threads(),
                    f", {split.world} processes" if split.active else "")
        objective_ = make_objective(net, mods, pool, cfg, split)
        names = list(mods)
        state = train(net, names, objective_, state, cfg, checkpoint=ckpt if dist.is_main() else None,
                      meta=run_meta, on_step=on_step)
        dist.broadcast_tensors(state.layers.parameters())  # every rank returns rank 0's bits
        dec = _finish(net, mods, names, objective_, state, infos, cfg, run_meta)
        if out_path is not None and dist.is_main():
            dec.save(out_path)
            if ckpt is not None:
                ckpt.unlink(missing_ok=True)
        dist.barrier()  # the result is on disk before any rank returns
        return dec


@torch.no_grad()
def _finish(net: nn.Module, mods: Mapping[str, nn.Module], names: list[str], objective: Any, state: Any,
            infos: Mapping[str, LayerInfo], cfg: DecomposeConfig, run_meta: Mapping[str, Any]) -> Decomposition:
    """Residuals, statistics and reconstruction measurements of the trained components."""
    layers = by_name(state, names)
    residuals = {n: (objective.weights[n] - layers[n].weight()).detach().contiguous() for n in names}
    with frozen(net):
        if cfg.objective == "layer":
            xs = objective.layer_inputs(slice(0, cfg.stats_rows))
        else:
            xs = _collect_inputs(objective, cfg.stats_rows)
        stats = component_stats(layers, xs, cfg.fire_threshold, cfg.leaky_alpha)
        recon = layer_reconstruction(layers, xs, objective.weights, cfg.seed + 1, cfg.leaky_alpha)
        pool = objective.pool
        n_out = min(len(pool), 8 if pool.is_lm else 1024)
        kind = cfg.output_loss if cfg.output_loss != "auto" else ("kl" if pool.is_lm else "mse")
        out_rec = output_reconstruction(net, mods, layers, pool.data[:n_out], pool.is_lm, kind, cfg.seed + 2,
                                        cfg.leaky_alpha, chunk=1 if pool.is_lm else n_out)
    num = sum(float(r.double().pow(2).sum()) for r in residuals.values())
    den = sum(float(w.double().pow(2).sum()) for w in objective.weights.values())
    metrics = {
        "faithfulness_mse": num / sum(r.numel() for r in residuals.values()),
        "faithfulness_relative": num / max(den, 1e-300),
        "layers": recon, "output": out_rec, "summary": summarise(stats, recon),
        "mean_l0_per_token": sum(s["mean_l0"] for s in stats.values()),
        "alive": {n: s["alive"] for n, s in stats.items()},
    }
    meta = {**run_meta, "seconds": round(state.seconds, 2), "steps_done": state.step, "history": state.history,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "gradedit": _library_version(), "pool_rows": len(objective.pool),
            "world_size": objective.split.world}
    logger.info("decomposition done in %.0f s: faithfulness %.3g (relative), mean L0 %.2f, alive %s",
                state.seconds, metrics["faithfulness_relative"], metrics["mean_l0_per_token"], metrics["alive"])
    for layer in layers.values():
        layer.requires_grad_(False)
    return Decomposition(infos, layers, residuals, cfg, dict(run_meta["fingerprints"]), stats, metrics, meta)


def _collect_inputs(objective: Any, rows: int) -> dict[str, Tensor]:
    """Module inputs ``[rows, d_in]`` from clean forwards over the start of the pool (output objective)."""
    parts: dict[str, list[Tensor]] = {}
    got, step = 0, max(1, min(64, len(objective.pool)))
    for start in range(0, len(objective.pool), step):
        xs, _ = objective.clean(objective.pool.data[start: start + step])
        for n, x in xs.items():
            parts.setdefault(n, []).append(x.reshape(-1, x.shape[-1]))
        got += parts[next(iter(parts))][-1].shape[0]
        if got >= rows:
            break
    return {n: torch.cat(p, 0)[:rows] for n, p in parts.items()}
