"""``FeatureAdamW``: torch's fused AdamW with its moments stored in fp32 or bf16, steppable one tensor at a time.

Why not ``torch.optim.AdamW(fused=True)``: (1) its moments must have the weights' dtype (fp32 here:
6n numbers of 4 bytes for the 3n encoder-decoder weights); (2) optimizer-in-backward steps each
weight the moment its gradient is ready, which needs a per-tensor step that does not count as an
optimiser step (see :meth:`FeatureAdamW.step_param`).

The arithmetic is torch's: fp32 moments go through ``torch.optim.adamw.adamw(fused=True)`` on whole
tensors, exactly what ``AdamW(fused=True).step()`` calls, so updates and state are bit-identical to it.
bf16 moments are updated by the same fused kernel on fp32 copies of ``chunk`` entries at a time and
rounded back (to nearest, or stochastically), so the only difference is that rounding; the extra
memory is a few chunk-sized fp32 buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.adamw import adamw as adamw_functional

from ...errors import ArtifactError

logger = logging.getLogger(__name__)

__all__ = ["FeatureAdamW", "ParamStep", "stochastic_round_"]

#: entries updated per fused-kernel call when the moments are bf16 (4 MB fp32 buffers each)
CHUNK = 1 << 20


def stochastic_round_(dst: torch.Tensor, src: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``dst`` (bf16) <- ``src`` (fp32, same shape) rounded stochastically: up with probability equal to
    the dropped fraction of the low 16 bits, so ``E[dst] == src`` (unbiased, unlike round-to-nearest,
    whose bias accumulates in a slowly moving average). Returns ``dst``."""
    bits = src.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, generator=generator, device=src.device)
    # floats are sign-magnitude: adding to the low bits of the int32 pattern moves the magnitude up, for
    # either sign; masking the low 16 bits off leaves a value bf16 holds exactly
    rounded = (bits + noise).bitwise_and_(-65536).view(torch.float32)
    return dst.copy_(rounded)


class FeatureAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) over fp32 weights with moments in ``state_dtype``.

    Args:
        params: the weights (fp32).
        lr, weight_decay, betas, eps: as ``torch.optim.AdamW`` (same defaults for betas and eps).
        state_dtype: ``torch.float32`` (bit-identical to ``AdamW(fused=True)``) or ``torch.bfloat16``.
        stochastic_rounding: bf16 moments only: round stochastically instead of to nearest; the random
            bits come from ``(seed, step, weight index)``, so a resumed run draws the same ones.
        seed: see ``stochastic_rounding``.

    ``state_dict()`` has ``AdamW``'s layout (``state[i]`` = ``step``, ``exp_avg``, ``exp_avg_sq``) with the
    moments in ``state_dtype``.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 state_dtype: torch.dtype = torch.float32, stochastic_rounding: bool = False, seed: int = 0) -> None:
        if state_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"state_dtype must be torch.float32 or torch.bfloat16, got {state_dtype}")
        if stochastic_rounding and state_dtype != torch.bfloat16:
            raise ValueError("stochastic_rounding needs state_dtype=torch.bfloat16")
        # the same group keys as torch.optim.AdamW(fused=True), so the two state_dicts have one layout
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": False,
                    "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                    "fused": True, "decoupled_weight_decay": True}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype != torch.float32:
                    raise ValueError(f"FeatureAdamW updates fp32 weights (master weights), got {p.dtype}")
        self.state_dtype, self.stochastic_rounding, self.seed = state_dtype, stochastic_rounding, int(seed)
        self._group_of = {p: group for group in self.param_groups for p in group["params"]}
        self._index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Update every weight that holds a gradient (the optimizer-step hooks run once, as for any optimiser)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update(group, [p for p in group["params"] if p.grad is not None])
        return loss

    @torch.no_grad()
    def step_param(self, p: torch.Tensor) -> None:
        """Update the one weight ``p`` from its gradient now (for optimizer-in-backward). Not an optimiser
        step: no optimizer-step hook runs (call :meth:`step` once after backward for those)."""
        if p.grad is None:
            raise RuntimeError("step_param needs the weight's gradient; it has none")
        self._update(self._group_of[p], [p])

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:  # lazily, like torch's AdamW (fused: an fp32 step counter on the weight's device)
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype, memory_format=torch.preserve_format)
        return state

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {"amsgrad": False, "beta1": beta1, "beta2": beta2, "lr": group["lr"],
                "weight_decay": group["weight_decay"], "eps": group["eps"], "maximize": False}

    def _update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        if not params:
            return
        if self.state_dtype == torch.float32:  # exactly AdamW(fused=True).step() on these weights
            states = [self._state(p) for p in params]
            adamw_functional(params, [p.grad for p in params], [s["exp_avg"] for s in states],  # type: ignore[misc]
                             [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states], foreach=False,
                             capturable=False, differentiable=False, fused=True, grad_scale=None, found_inf=None,
                             has_complex=False, **self._hyper(group))
            return
        for p in params:
            ps, g = self.begin(p), p.grad.reshape(-1)  # type: ignore[union-attr]
            for lo in range(0, g.numel(), CHUNK):
                ps.update(lo, min(lo + CHUNK, g.numel()), g[lo:lo + CHUNK])
            ps.finish()

    def begin(self, p: torch.Tensor) -> ParamStep:
        """A step of the one weight ``p`` made slice by slice (:meth:`ParamStep.update`, then
        :meth:`ParamStep.finish`): for gradients computed a chunk at a time, never whole. Like
        :meth:`step_param`, not an optimiser step for the optimizer-step hooks."""
        state = self._state(p)
        gen = None
        if self.stochastic_rounding:  # random bits from (seed, step, weight index): a resumed run draws the same
            step = int(state["step"].item()) + 1
            gen = torch.Generator(device=p.device).manual_seed((self.seed * 1_000_003 + step) * 1_009 + self._index[p])
        return ParamStep(p, state, self._hyper(self._group_of[p]), self.state_dtype, gen)


    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (or a ``torch.optim.AdamW`` state of the same weights): moments are
        cast to ``state_dtype`` one tensor at a time (no second copy of the whole state); tensors
        already in ``state_dtype`` are taken over, not copied (as ``torch.optim.Optimizer`` does).

        Raises:
            ArtifactError: the state is not an AdamW state of these weights (count or shapes differ).
        """
        fix = "delete the checkpoint to train this seed from the start"
        groups, saved_groups = self.param_groups, state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if (not isinstance(saved_groups, list) or len(saved_groups) != len(groups)
                or any(len(g["params"]) != len(s.get("params", ())) for g, s in zip(groups, saved_groups))):
            raise ArtifactError(f"the optimiser state does not belong to these weights (other group/weight count); {fix}")
        params = [p for g in groups for p in g["params"]]
        ids = [i for s in saved_groups for i in s["params"]]
        for group, saved in zip(groups, saved_groups):
            for key in ("lr", "betas", "eps", "weight_decay"):
                if key in saved:
                    group[key] = tuple(saved[key]) if key == "betas" else saved[key]
        self.state.clear()
        saved_state = state_dict.get("state") or {}
        for i, p in zip(ids, params):
            s = saved_state.get(i)
            if s is None:
                continue
            if not {"step", "exp_avg", "exp_avg_sq"} <= set(s) or s["exp_avg"].shape != p.shape \
                    or s["exp_avg_sq"].shape != p.shape:
                raise ArtifactError(f"the optimiser state of weight {i} is not an AdamW state of shape "
                                    f"{tuple(p.shape)}; {fix}")
            self.state[p] = {"step": torch.as_tensor(s["step"], dtype=torch.float32).to(p.device).reshape(()),
                             "exp_avg": s["exp_avg"].to(device=p.device, dtype=self.state_dtype),
                             "exp_avg_sq": s["exp_avg_sq"].to(device=p.device, dtype=self.state_dtype)}


class ParamStep:
    """One AdamW step of one weight, applied to flat slices ``[lo, hi)`` in any order (each entry once).

    Each slice goes through the same fused kernel with the same step count, so the result equals the
    whole-tensor step entry for entry; bf16 moments are widened to fp32 for the slice and rounded back.
    """

    def __init__(self, p: torch.Tensor, state: dict[str, torch.Tensor], hyper: dict[str, Any],
                 state_dtype: torch.dtype, generator: torch.Generator | None) -> None:
        self.state, self.hyper, self.low = state, hyper, state_dtype != torch.float32
        self.w = p.detach().view(-1)
        self.m, self.v = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1)
        self.before = state["step"].clone()
        self.gen = generator  # None: round to nearest
        self.done = False

    def update(self, lo: int, hi: int, grad: torch.Tensor) -> None:
        """Step entries ``[lo, hi)`` of the flattened weight with their gradient ``grad`` ``[hi - lo]``."""
        if self.done:
            raise RuntimeError("this ParamStep is finished; begin() a new one")
        w, m, v = self.w[lo:hi], self.m[lo:hi], self.v[lo:hi]
        low = self.low
        m32, v32 = (m.float(), v.float()) if low else (m, v)
        adamw_functional([w], [grad.reshape(-1)], [m32], [v32], [], [self.before.clone()], foreach=False,
                         capturable=False, differentiable=False, fused=True, grad_scale=None, found_inf=None,
                         has_complex=False, **self.hyper)
        if not low:
            return
        if self.gen is None:
            m.copy_(m32)
            v.copy_(v32)
        else:
            stochastic_round_(m, m32, self.gen)
            stochastic_round_(v, v32, self.gen)

    def finish(self) -> None:
        """Count the step (call once, after every slice was updated)."""
        if not self.done:
            self.state["step"].add_(1)
            self.done = True
