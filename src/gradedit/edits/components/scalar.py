"""Scalar tuning: scale a few rank-1 components, fitted on a handful of target tokens.

``tune_scalar`` picks components (by activation selectivity, or as given), then fits one scale per
component, ``W' = W + (s_c − 1) σ_c U_c V_cᵀ``, by minimising::

    ∓ CE(target tokens)  +  kl_weight · mean KL(p_base ‖ p_edit) on other tokens
                         +  leak_weight · Σ_sets relu(ΔCE_set − max_leak)²     (when max_leak is set)

(``−CE`` when removing, ``+CE`` when strengthening). The target tokens are the first
``max_target_tokens`` scored tokens of ``target_texts`` in order; the texts are cut after the last of
them, so no other target token is ever seen by the fit (they are listed in the edit's metadata).
With ``components="auto"`` the components are first ranked on target text too; that text is
counted as well: ``selection_tokens`` caps it (``None`` = all of it), and
``metadata["target_tokens_used"]`` gives the target tokens read per purpose (``selection``, ``fit``)
and their distinct ``total``.
One component: the bounded scale is found by a grid over ``s_range`` (which includes ``s = 1``, so
the result is never worse than no edit) refined by golden-section search. Several components: a
coarse grid (``scan_grid`` points) for each component alone (the others at 1), so every scale is
tried across the whole range, then Adam steps on the vector of scales from the best of those points (projected into
``s_range``), keeping the best point seen. ``s_init`` replaces the grid by a given start.

A fit that finds nothing better than no edit (no scale moved from 1, or the objective did not
improve) is not returned silently: ``metadata["status"]`` is ``"no-op"`` (else ``"fitted"``),
``metadata["status_reason"]`` says why, and a warning is logged.
While fitting, the edit acts through forward hooks (``Δy = Σ_c (s_c − 1) σ_c (V_c·x) U_c``), which
equals the weight edit up to rounding; the returned object is a real :class:`WeightEdit`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from ...models import LanguageModel
from ..fitting import Positions, TokenLedger, base_logprobs, batches, frozen_params, kl_rows, logprobs_at
from ..hooks import add_to_outputs
from ..terms import EditError
from ..weight_edit import WeightEdit
from .activations import other_sets, selectivity
from .svd import Component, ComponentSet, ModulePatterns, linear_modules, svd_components

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODULES", "default_modules", "tune_scalar"]

DEFAULT_MODULES: tuple[str, ...] = ("*.mlp.gate_proj", "*.mlp.up_proj")
"""MLP input projections, where FINDINGS located language-selective components (Llama/Gemma names)."""
_FALLBACKS: tuple[tuple[str, ...], ...] = (("*.mlp.c_fc",), ("*.intermediate.dense",))
MOVE_TOL = 1e-3
"""A scale within this of 1 has not moved (the component changes by < 0.1 %)."""
IMPROVE_TOL = 1e-6
"""An objective that fell by no more than this (nats) has not improved."""


def default_modules(lm: LanguageModel) -> tuple[str, ...]:
    """The MLP input projections of ``lm``: gate/up (Llama, Gemma), ``c_fc`` (GPT-2), BERT's intermediate."""
    for pats in (DEFAULT_MODULES, *_FALLBACKS):
        try:
            linear_modules(lm, pats)
        except EditError:
            continue
        return pats
    raise EditError(f"{type(lm.model).__name__} has none of the default MLP projections "
                    f"{DEFAULT_MODULES + tuple(p for f in _FALLBACKS for p in f)}; pass modules=[...]")


class _Objective:
    """The fitting loss for a vector of scales ``s [K]`` (see the module docstring)."""

    def __init__(self, lm: LanguageModel, cs: ComponentSet, target: Positions, others: dict[str, Positions],
                 *, remove: bool, kl_weight: float, max_leak: float | None, leak_weight: float,
                 batch_size: int) -> None:
        self.lm, self.sign = lm, -1.0 if remove else 1.0
        self.kl_weight, self.max_leak, self.leak_weight = kl_weight, max_leak, leak_weight
        self.mods = linear_modules(lm, cs.modules)
        dev, dtype = lm.device, next(lm.model.parameters()).dtype
        self.groups = {m: (torch.tensor(pos, device=dev), V.to(dev, dtype), (U * S[:, None]).to(dev, dtype))
                       for m, (pos, V, U, S) in cs.groups().items()}
        self.target = batches(lm, target, batch_size)
        self.n_target = target.n
        self.others = {k: batches(lm, p, batch_size) for k, p in others.items()}
        self.n_other = {k: p.n for k, p in others.items()}
        self.base = {k: base_logprobs(lm, bs) for k, bs in self.others.items()}
        self.base_ce = {k: float(-sum(lp.gather(-1, b.targets[:, None]).sum() for lp, b in zip(lps, self.others[k])))
                        / self.n_other[k] for k, lps in self.base.items()}
        self.calls = 0
        self.coef: torch.Tensor | None = None

    def _delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        pos, V, W = self.groups[name]
        assert self.coef is not None
        return ((x @ V.T) * self.coef[pos].to(x.dtype)) @ W

    def __call__(self, s: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Loss (a scalar tensor; differentiable in ``s`` under grad mode) and its parts as floats."""
        self.calls += 1
        self.coef = s - 1.0
        parts: dict[str, Any] = {}
        with add_to_outputs(self.mods, self._delta):
            zero = torch.zeros((), dtype=torch.float32, device=self.lm.device)  # logprobs_at is fp32
            ce_t = sum((-logprobs_at(self.lm, b).gather(-1, b.targets[:, None]).sum() for b in self.target), zero)
            ce_t = ce_t / self.n_target
            kl_sum: torch.Tensor | float = 0.0
            dces: dict[str, torch.Tensor | float] = {}
            for k, bs in self.others.items():
                ce_k: torch.Tensor | float = 0.0
                for b, lp_base in zip(bs, self.base[k]):
                    lp = logprobs_at(self.lm, b)
                    kl_sum = kl_sum + kl_rows(lp_base, lp).sum()
                    ce_k = ce_k - lp.gather(-1, b.targets[:, None]).sum()
                dces[k] = ce_k / self.n_other[k] - self.base_ce[k]
        loss = self.sign * ce_t
        n_other = sum(self.n_other.values())
        if n_other:
            kl = kl_sum / n_other
            loss = loss + self.kl_weight * kl
            parts["other_kl"] = _f(kl)
            parts["other_ce_delta"] = {k: _f(v) for k, v in dces.items()}
            if self.max_leak is not None:
                pen = sum(torch.relu(torch.as_tensor(v) - self.max_leak) ** 2 for v in dces.values())
                loss = loss + self.leak_weight * pen
        parts["target_ce"] = _f(ce_t)
        parts["objective"] = _f(loss)
        self.coef = None
        return loss, parts


def _f(x: torch.Tensor | float) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _golden(f: Callable[[float], float], a: float, b: float, iters: int) -> tuple[float, float]:
    """Minimise ``f`` on ``[a, b]`` by golden-section search; returns (best x, best f)."""
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    best = min((fc, c), (fd, d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
            best = min(best, (fc, c))
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
            best = min(best, (fd, d))
    return best[1], best[0]


def _fit_one(obj: _Objective, lo: float, hi: float, grid: int, iters: int) -> tuple[list[float], list[dict]]:
    history: list[dict[str, Any]] = []

    def f(x: float) -> float:
        with torch.no_grad():
            _, parts = obj(torch.tensor([x], dtype=torch.float64))
        history.append({"s": [x], **parts})
        return parts["objective"]

    xs = _grid(lo, hi, grid)
    fs = [f(x) for x in xs]
    i = min(range(len(xs)), key=lambda j: fs[j])
    if iters > 0:
        f(_golden(f, xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)], iters)[0])
    best = min(history, key=lambda h: h["objective"])
    return best["s"], history


def _grid(lo: float, hi: float, n: int) -> list[float]:
    """``n`` evenly spaced points of ``[lo, hi]``, plus ``1.0`` (no edit) when it is inside."""
    return sorted(set([lo + (hi - lo) * i / (n - 1) for i in range(n)] + ([1.0] if lo <= 1.0 <= hi else [])))


def _scan_start(obj: _Objective, k: int, lo: float, hi: float, grid: int,
                history: list[dict[str, Any]]) -> list[float]:
    """A start for Adam that has seen the whole range: each component's scale on the grid with the
    others at 1, then the per-component best values together; the best point evaluated."""
    ones = [1.0] * k

    def f(x: list[float]) -> float:
        with torch.no_grad():
            _, parts = obj(torch.tensor(x, dtype=torch.float64))
        history.append({"s": list(x), **parts})
        return float(parts["objective"])

    points: list[tuple[float, list[float]]] = []
    for c in range(k):
        for x in _grid(lo, hi, grid):
            s = [*ones[:c], x, *ones[c + 1:]]
            points.append((f(s), s))
    best_each = [min((p for p in points if all(v == 1.0 for j, v in enumerate(p[1]) if j != c)),
                     key=lambda p: p[0])[1][c] for c in range(k)]
    if sum(v != 1.0 for v in best_each) > 1:
        points.append((f(best_each), best_each))
    return min(points, key=lambda p: p[0])[1]


def _fit_many(obj: _Objective, init: list[float] | None, lo: float, hi: float, steps: int,
              lr: float, grid: int, k: int) -> tuple[list[float], list[dict]]:
    history: list[dict[str, Any]] = []
    start = _scan_start(obj, k, lo, hi, grid, history) if init is None else init
    s = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([s], lr=lr)
    for step in range(steps + 1):
        opt.zero_grad()
        loss, parts = obj(s)
        history.append({"s": s.detach().tolist(), **parts})
        logger.debug("scalar step %d: s=%s %s", step, [round(x, 3) for x in s.tolist()], parts)
        if step == steps:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            s.clamp_(lo, hi)
    best = min(history, key=lambda h: h["objective"])
    return best["s"], history


def _no_op_reason(s: Sequence[float], base: float, best: float, n_tokens: int,
                  s_range: tuple[float, float]) -> str | None:
    """Why the fitted scales ``s`` are no edit (``None`` when they are one): no scale moved from 1 by
    more than ``MOVE_TOL``, or the objective fell by no more than ``IMPROVE_TOL`` nats."""
    if all(abs(float(x) - 1.0) <= MOVE_TOL for x in s):
        return (f"no scale moved from 1 (s = {[round(float(x), 4) for x in s]}): on these {n_tokens} target tokens "
                f"no scale in s_range={list(s_range)} beats leaving the components alone")
    if base - best <= IMPROVE_TOL:
        return f"the objective did not improve ({base:.6g} -> {best:.6g}) although s = {[round(float(x), 4) for x in s]}"
    return None


def tune_scalar(lm: LanguageModel, target_texts: Sequence[str],
                other_texts: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
                components: Literal["auto"] | ComponentSet | Sequence[Component] = "auto",
                max_target_tokens: int = 16, remove: bool = True, *,
                modules: ModulePatterns | None = None, n_components: int = 1, kl_weight: float = 1.0,
                s_range: tuple[float, float] = (-8.0, 8.0), selection_texts: Sequence[str] | None = None,
                top: int | None = None, selection_score: str = "d", max_other_tokens: int = 256, max_leak: float | None = None,
                leak_weight: float = 100.0, grid: int = 17, golden_iters: int = 12, steps: int = 40,
                lr: float = 0.2, s_init: Sequence[float] | None = None, batch_size: int = 16,
                selection_tokens: int | None = None, scan_grid: int = 9) -> WeightEdit:
    """Fit component scales that raise (``remove=True``) or lower the target tokens' CE.

    Args:
        target_texts: texts of the feature; only their first ``max_target_tokens`` scored tokens fit s.
        other_texts: texts to keep unchanged (KL and leakage); a mapping gives per-set leakage
            (e.g. per language). Needed for ``components="auto"``.
        components: ``"auto"`` (the ``n_components`` most selective SVD components of ``modules``,
            chosen on ``selection_texts`` or else ``target_texts`` vs ``other_texts``), or the
            components to scale.
        selection_tokens: ``"auto"`` ranks components on only the first that many target tokens of
            the selection text (``None``: all of it; the metadata states the count either way).
        modules: module patterns for ``"auto"`` (default: :func:`default_modules`); ``top`` keeps
            the largest-σ components per module only; ``selection_score`` is the selectivity score
            (see :mod:`gradedit.edits.components.activations`).
        kl_weight / max_leak / leak_weight: the regularisers (module docstring); ``max_leak`` in
            nats of CE increase per other set.
        s_range: bounds for every scale. grid / golden_iters: one-component search; steps / lr: Adam
            (several components), started from the best point of a ``scan_grid``-point scan of each
            component over ``s_range`` (``scan_grid`` forward passes per component, no gradients), or
            from ``s_init`` when given.
        max_other_tokens: other tokens used for KL/leakage, split evenly across the other sets.

    Returns:
        The edit, with ``metadata`` holding the components, scales, the exact target tokens of the
        fit, ``target_tokens_used`` (target tokens read per purpose and in ``total``; components
        passed in were chosen outside and are not counted), the losses before/after, the
        fitting history and ``status``: ``"fitted"``, or ``"no-op"`` (with ``status_reason``, and a
        warning logged) when no scale moved from 1 or the objective did not improve.
    """
    if isinstance(target_texts, str) or not list(target_texts):
        raise EditError("target_texts must be a non-empty list of strings")
    if isinstance(max_target_tokens, bool) or not isinstance(max_target_tokens, int) or max_target_tokens < 1:
        raise EditError(f"max_target_tokens must be a positive int, got {max_target_tokens!r}")
    lo, hi = (float(x) for x in s_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise EditError(f"s_range must be (low, high) with low < high, got {s_range}")
    if selection_tokens is not None and (isinstance(selection_tokens, bool) or not isinstance(selection_tokens, int)
                                         or selection_tokens < 1):
        raise EditError(f"selection_tokens must be None (all selection text) or a positive int, got {selection_tokens!r}")
    if grid < 3 or scan_grid < 3:
        raise EditError(f"grid and scan_grid must be >= 3, got {grid}, {scan_grid}")
    sets = other_sets(other_texts) if other_texts is not None else {}
    selection = None
    ledger = TokenLedger()
    if isinstance(components, str):
        if components != "auto":
            raise EditError(f"components must be 'auto', a ComponentSet or a list of Components, got {components!r}")
        if not sets:
            raise EditError("components='auto' picks components by selectivity against other_texts; "
                            "pass other_texts (or the components to scale)")
        pool = svd_components(lm, modules if modules is not None else default_modules(lm), top=top)
        sel_texts = list(selection_texts or target_texts)
        sel = selectivity(lm, pool, sel_texts, sets, score=selection_score, batch_size=batch_size,
                          max_target_tokens=selection_tokens)
        for text, n in zip(sel_texts, sel.target_counts):
            ledger.add("selection", text, n)
        cs = sel.top(n_components)
        selection = {"texts": "selection_texts" if selection_texts else "target_texts",
                     "max_tokens": selection_tokens, "n_tokens": sel.n_tokens["target"],
                     "n_texts": sum(n > 0 for n in sel.target_counts),
                     "other_tokens": {k: v for k, v in sel.n_tokens.items() if k != "target"},
                     "pool": len(pool), "score": selection_score, "ranking": sel.rows(max(5, n_components))}
    else:
        cs = components if isinstance(components, ComponentSet) else ComponentSet(list(components))
        if len(cs) == 0:
            raise EditError("components is empty")
    init = None if s_init is None else [float(x) for x in s_init]
    if init is not None and (len(init) != len(cs) or not all(lo <= x <= hi for x in init)):
        raise EditError(f"s_init must give one scale per component ({len(cs)}) inside s_range, got {s_init}")
    target = Positions.from_texts(lm, list(target_texts), max_target_tokens)
    if target.n == 0:
        raise EditError("no target token could be scored: every target text is shorter than two tokens")
    ledger.add_positions(lm, "fit", list(target_texts), target)
    per_set = max(1, max_other_tokens // max(1, len(sets)))
    others = {k: Positions.from_texts(lm, v, per_set) for k, v in sets.items()}
    with frozen_params(lm.model):
        obj = _Objective(lm, cs, target, others, remove=remove, kl_weight=kl_weight, max_leak=max_leak,
                         leak_weight=leak_weight, batch_size=batch_size)
        with torch.no_grad():
            _, base_parts = obj(torch.ones(len(cs), dtype=torch.float64))
        if len(cs) == 1:
            s, history = _fit_one(obj, lo, hi, grid, golden_iters)
            how = "grid+golden"
        else:
            s, history = _fit_many(obj, init, lo, hi, steps, lr, scan_grid, len(cs))
            how = "adam" if init is not None else "grid+adam"
    best = min(history, key=lambda h: h["objective"])
    reason = _no_op_reason(s, base_parts["objective"], best["objective"], target.n, (lo, hi))
    edit = cs.edit(list(range(len(cs))), s)
    meta = {
        "method": "component_scalar", "base_model": lm.name, "remove": remove,
        "components": edit.metadata["components"], "s": [float(x) for x in s],
        "target_tokens": target.records(lm), "n_target_tokens": target.n, "max_target_tokens": max_target_tokens,
        "target_tokens_used": ledger.counts(),
        "other_tokens": {k: p.n for k, p in others.items()}, "selection": selection,
        "losses": {"base": base_parts, "fitted": {k: v for k, v in best.items() if k != "s"}},
        "fit": {"method": how, "evaluations": obj.calls, "history": history},
        "kl_weight": kl_weight, "max_leak": max_leak, "leak_weight": leak_weight, "s_range": [lo, hi],
        "status": "no-op" if reason else "fitted", **({"status_reason": reason} if reason else {}),
    }
    if reason:
        logger.warning("tune_scalar returns a no-op edit: %s; try more target tokens, other components "
                       "(n_components, components=), a wider s_range or a smaller kl_weight / max_leak", reason)
    logger.info("tune_scalar: %s s=%s target CE %.3f -> %.3f on %d tokens (%d evaluations); target tokens read %s",
                [c.label for c in cs], [round(float(x), 3) for x in s], base_parts["target_ce"],
                best["target_ce"], target.n, obj.calls, meta["target_tokens_used"])
    return WeightEdit(edit.terms, meta)
