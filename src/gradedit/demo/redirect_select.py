"""Which component to redirect, which way it points, and the analytic rewrite of its write vector.

**Selectivity at fire positions.** A weight edit of component ``c`` changes the layer's output by
``a_c(x) · Δw`` at *every* position (``a_c = V_c·x``, the component's activation), so a component
suits the redirect when ``|a_c|`` is large at fire positions and small everywhere else. Its score is
Cohen's d of ``|a_c|`` at the fire positions of the selection text against the *strongest* other
set — the non-fire ("surrounding") positions of the same texts, or unrelated text — as in
:func:`gradedit.edits.components.selectivity` (``score="d"``), but per position instead of per text.
``score="impact"`` multiplies d by ``sigma_c · |mean gap|`` (selective *and* large). Decomposed
components are scored by the same activation ``V_c·x`` as SVD ones (not by their causal importance):
a permanent weight edit acts wherever the activation is non-zero, important or not.

**Sign.** ``σ U Vᵀ = σ (−U)(−V)ᵀ``: the orientation of a component is arbitrary, and flipping it flips
its activation. The rewrite must make the component *raise* the target at fire positions, i.e. write
``+α·û`` (``û`` = the target's unembedding direction, see
:func:`gradedit.edits.components.write_vector.unembedding_direction`) whenever ``a_c > 0`` in the
orientation where fire activations are positive. So the new write vector is ``s · α · û`` with
``s = sign(mean a_c over fire positions)``; in the other orientation both ``s`` and ``V`` flip and
the weight change ``(s·α·û − σU) Vᵀ`` is the same. ``sign_agreement`` reports the share of fire
positions whose activation has sign ``s`` (1.0: the component points one way at every fire position).

**Strength unit.** How large ``α`` must be depends on the component (its activations), the layer
(what happens downstream) and the final norm, so the sweep is not in absolute units: :func:`unit_alpha`
finds ``α₁``, the ``α`` at which the rewrite raises the mean ``log P(target)`` at the *selection*
text's fire positions by 1 nat (bracketing by doubling, then bisection on ``log α``), and the study
sweeps multiples of it. That reads the selection text again (purpose ``calibration``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..edits import Component, ComponentSet, WeightEdit, component_activations, replace_write_vector
from ..edits.components.write_vector import unembedding_direction
from ..errors import EditError
from ..models import LanguageModel
from .redirect_eval import fire_logp

logger = logging.getLogger(__name__)

__all__ = ["Choice", "SCORES", "Unit", "choose_component", "fire_selectivity", "orientation", "redirect_write",
           "unit_alpha"]

SCORES = ("d", "impact")
EPS = 1e-8


@dataclass
class FireStats:
    """Per component (``[C]`` each): mean / variance of ``|a|`` at fire positions and in each other set,
    signed mean and share of positive activations at fire positions, and the position counts."""

    fire_mean: torch.Tensor
    fire_var: torch.Tensor
    signed_mean: torch.Tensor
    positive_share: torch.Tensor
    other_mean: dict[str, torch.Tensor]
    other_var: dict[str, torch.Tensor]
    counts: dict[str, int]


def _moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = rows.double().abs()
    mean = a.mean(0)
    return mean, (a.pow(2).mean(0) - mean.pow(2)).clamp_min(0.0)


def fire_selectivity(lm: LanguageModel, components: ComponentSet, texts: Sequence[str],
                     fires: Sequence[Sequence[int]], unrelated: Sequence[str], *,
                     batch_size: int | None = None) -> FireStats:
    """Activation statistics of every component at the fire positions of ``texts``, at their other
    (non-special) positions and on ``unrelated`` texts (one forward per batch, no gradients)."""
    if len(texts) != len(fires):
        raise EditError(f"{len(texts)} texts but {len(fires)} fire-position lists; give one list per text")
    acts = component_activations(lm, components, list(texts), per_token=True, batch_size=batch_size)
    assert acts.per_token is not None and acts.positions is not None
    fire_rows, quiet_rows = [], []
    for rows, pos, f in zip(acts.per_token, acts.positions, fires):
        mask = torch.isin(pos, torch.tensor(list(f), dtype=torch.long))
        fire_rows.append(rows[mask])
        quiet_rows.append(rows[~mask])
    fire, quiet = torch.cat(fire_rows), torch.cat(quiet_rows)
    if fire.shape[0] == 0 or quiet.shape[0] == 0:
        raise EditError(f"the selection text has {fire.shape[0]} fire and {quiet.shape[0]} other positions; "
                        "both are needed to score components")
    fm, fv = _moments(fire)
    sm, sv = _moments(quiet)
    um, uv, n_u = component_activations(lm, components, list(unrelated), batch_size=batch_size).pooled()
    return FireStats(fm, fv, fire.double().mean(0), (fire > 0).double().mean(0),
                     {"surrounding": sm, "unrelated": um}, {"surrounding": sv, "unrelated": uv},
                     {"fire": int(fire.shape[0]), "surrounding": int(quiet.shape[0]), "unrelated": int(n_u)})


def scores(stats: FireStats, components: ComponentSet, kind: str = "d") -> tuple[torch.Tensor, list[str]]:
    """Score ``[C]`` per component against its strongest other set, and the name of that set."""
    if kind not in SCORES:
        raise EditError(f"score must be one of {SCORES}, got {kind!r}")
    names = list(stats.other_mean)
    means = torch.stack([stats.other_mean[k] for k in names])
    best = means.argmax(0)
    cols = torch.arange(means.shape[1])
    m_o, v_o = means[best, cols], torch.stack([stats.other_var[k] for k in names])[best, cols]
    gap = stats.fire_mean - m_o
    d = gap / torch.sqrt((stats.fire_var + v_o) / 2 + EPS)
    if kind == "impact":
        d = d * torch.tensor([c.sigma for c in components], dtype=d.dtype) * gap.abs()
    return d, [names[i] for i in best.tolist()]


def orientation(signed_mean: float) -> float:
    """The sign ``s`` that makes the component's mean fire activation positive (``+1`` at exactly 0)."""
    return -1.0 if signed_mean < 0 else 1.0


@dataclass
class Choice:
    """The component chosen in one family, with why.

    Attributes:
        family: ``"decomposed"`` or ``"svd"``.
        component: the chosen component.
        score, kind: its selectivity score and which score it is.
        sign: orientation ``s`` (see the module docstring); ``sign_agreement`` the share of fire
            positions whose activation has that sign.
        fire_mean: mean ``|a|`` at fire positions; ``other_mean`` per other set; ``strongest_other``.
        counts: positions scored per set; ``n_candidates``: components scored.
        ranking: the best few components as JSON rows (the chosen one first).
    """

    family: str
    component: Component
    score: float
    kind: str
    sign: float
    sign_agreement: float
    fire_mean: float
    other_mean: dict[str, float]
    strongest_other: str
    counts: dict[str, int]
    n_candidates: int
    ranking: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "component": self.component.to_dict(), "label": self.component.label,
                "score": self.score, "kind": self.kind, "sign": self.sign, "sign_agreement": self.sign_agreement,
                "fire_mean_abs": self.fire_mean, "other_mean_abs": self.other_mean,
                "strongest_other": self.strongest_other, "positions": self.counts,
                "n_candidates": self.n_candidates, "ranking": self.ranking}


def choose_component(lm: LanguageModel, components: ComponentSet, family: str, texts: Sequence[str],
                     fires: Sequence[Sequence[int]], unrelated: Sequence[str], *, kind: str = "d",
                     min_score: float = 1.0, top: int = 5, batch_size: int | None = None) -> Choice:
    """The component with the highest score, oriented (see the module docstring).

    Raises:
        EditError: no component scores at least ``min_score`` — the message gives the best score, so a
            study never goes on with a component that does not single out the context.
    """
    if len(components) == 0:
        raise EditError(f"no {family} components to choose from")
    stats = fire_selectivity(lm, components, texts, fires, unrelated, batch_size=batch_size)
    score, strongest = scores(stats, components, kind)
    order = torch.argsort(torch.nan_to_num(score, nan=-math.inf), descending=True, stable=True)
    i = int(order[0])
    best = float(score[i])
    if not best >= min_score:
        c = components[i]
        raise EditError(f"no {family} component fires selectively at the fire positions: the best, {c.label}, "
                        f"scores {kind} = {best:.3f} < min_score {min_score:g} (mean |a| at fire positions "
                        f"{float(stats.fire_mean[i]):.3g} vs {float(stats.other_mean[strongest[i]][i]):.3g} on "
                        f"{strongest[i]} text); try other layers, another decomposition or a lower min_score")
    ranking = []
    for j in order[:top].tolist():
        c = components[j]
        ranking.append({"label": c.label, **c.to_dict(), "score": float(score[j]),
                        "fire_mean_abs": float(stats.fire_mean[j]), "fire_signed_mean": float(stats.signed_mean[j]),
                        **{f"{k}_mean_abs": float(v[j]) for k, v in stats.other_mean.items()}})
    s = orientation(float(stats.signed_mean[i]))
    pos = float(stats.positive_share[i])
    choice = Choice(family, components[i], best, kind, s, pos if s > 0 else 1.0 - pos, float(stats.fire_mean[i]),
                    {k: float(v[i]) for k, v in stats.other_mean.items()}, strongest[i], stats.counts,
                    len(components), ranking)
    logger.info("%s: chose %s (%s = %.3f, sign %+.0f, agreement %.2f)", family, choice.component.label, kind, best,
                s, choice.sign_agreement)
    return choice


def redirect_write(lm: LanguageModel, component: Component, target: str | int, alpha: float,
                   sign: float) -> WeightEdit:
    """The edit that makes ``component`` write ``sign · alpha · û(target)``: ``W' = W + (sign·α·û − σU) Vᵀ``.

    Raises:
        EditError: the component's module does not write into the residual stream.
    """
    head = lm.model.get_output_embeddings()
    hidden = int(head.weight.shape[1]) if head is not None else -1
    if component.U.numel() != hidden:
        raise EditError(f"{component.module_name} writes {component.U.numel()}-dim vectors, not into the {hidden}-dim "
                        "residual stream; redirect a component of an output projection (down_proj, o_proj, c_proj)")
    if sign not in (1.0, -1.0):
        raise EditError(f"sign must be +1 or -1, got {sign}")
    u = unembedding_direction(lm, target).to(component.U.device, component.U.dtype)
    edit = replace_write_vector(component, float(sign) * float(alpha) * u)
    edit.metadata.update({"method": "redirect_write", "target": target, "alpha": float(alpha), "sign": float(sign)})
    return edit


@dataclass
class Unit:
    """``alpha``: the calibrated ``α₁``; ``gain``: its mean ``Δ log P(target)`` (nats) at the calibration
    fire positions; ``reached``: within 10% of the asked gain; ``probes``: every ``(α, gain)`` tried."""

    alpha: float
    gain: float
    reached: bool
    probes: list[tuple[float, float]] = field(default_factory=list)


def unit_alpha(lm: LanguageModel, choice: Choice, target_id: int, texts: Sequence[str], fires: Sequence[Sequence[int]],
               *, gain: float = 1.0, max_probes: int = 24, iters: int = 6, batch_size: int | None = None) -> Unit:
    """``α₁`` of the analytic rewrite of ``choice`` (see the module docstring), starting at ``σ``.

    When the gain is never bracketed, the probe with the largest gain is returned (``reached`` False)."""
    if gain <= 0:
        raise EditError(f"gain must be positive nats, got {gain}")
    base = fire_logp(lm, texts, fires, target_id, batch_size=batch_size)
    c, probes = choice.component, []

    def f(a: float) -> float:
        with redirect_write(lm, c, target_id, a, choice.sign).applied(lm.model):
            g = float((fire_logp(lm, texts, fires, target_id, batch_size=batch_size) - base).mean())
        probes.append((a, g))
        return g

    a = max(c.sigma, 1e-6)
    g = f(a)
    factor = 0.5 if g >= gain else 2.0
    lo = hi = None
    for _ in range(max_probes):
        lo, hi = (lo, a) if g >= gain else (a, hi)
        if lo is not None and hi is not None:
            break
        a *= factor
        g = f(a)
    if lo is None or hi is None:
        best = max(probes, key=lambda p: p[1])
        logger.warning("%s: a gain of %.2f nats was not reached in %d probes; unit alpha = %.4g (gain %.3f)",
                       c.label, gain, len(probes), best[0], best[1])
        return Unit(best[0], best[1], False, probes)
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if f(mid) < gain:
            lo = mid
        else:
            hi = mid
    best = min(probes, key=lambda p: abs(p[1] - gain))
    logger.info("%s: unit alpha %.4g (= %.3g sigma) raises log P(target) by %.3f nats on the selection text",
                c.label, best[0], best[0] / c.sigma, best[1])
    return Unit(best[0], best[1], abs(best[1] - gain) <= 0.1 * gain, probes)
