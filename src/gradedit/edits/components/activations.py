"""Component activations ``a_c(x) = V_c·x`` on text, and attribution by activation selectivity.

``x`` is the input of the component's linear module at one token position; it is read with a forward
pre-hook, one forward per batch without gradients, and the forward stops once every hooked module has
run (the output head is never computed). Padding is excluded, and so are special tokens (BOS, CLS, …)
unless ``include_special=True``: a BOS position carries the same huge activations in every language
and would only dilute the statistics.

Selectivity scores of component ``c``, all against the *strongest* competitor, so a component scores
high only if it fires on the target more than on every other set::

    m_t, v_t   = mean and variance of |a_c| over all target tokens
    o*         = the other set with the largest mean |a_c|
    "d"     (default, Cohen's d)   (m_t − m_o*) / sqrt((v_t + v_o*) / 2 + eps)
    "z"     (z against o*)        (m_t − m_o*) / sqrt(v_o* + eps)
    "ratio" (log fold change)     log((m_t + eps) / (m_o* + eps))
    "impact"                      d · sigma_c · |m_t − m_o*|      (negative when d is)

``"d"`` rewards components that fire *consistently* on the target; ``"z"`` rewards components that
are quiet on the other sets even if they fire on only part of the target tokens. These three are
scale-free, so a component that writes very little can rank high. ``"impact"`` multiplies ``d`` by
how much more the component *writes* on target tokens than on o* (``sigma · |a|`` is the size of its
contribution to the module output, i.e. what scaling it changes): selective *and* large. On
gemma3-270m's gate/up projections ``"d"`` prefers late layers (14-17) whose scaling moves German CE
little, ``"impact"`` finds the layer-0 German component first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..._progress import progress
from ...models import LanguageModel
from ..hooks import StopForward, read_inputs
from ..terms import EditError
from .svd import Component, ComponentSet, linear_modules

logger = logging.getLogger(__name__)

__all__ = ["ComponentActivations", "Selectivity", "component_activations", "selectivity", "top_selective"]

DEFAULT_BATCH = 16
EPS = 1e-8
SCORES = ("d", "z", "ratio", "impact")


@dataclass
class ComponentActivations:
    """Activations of ``C`` components on ``n`` texts (statistics over each text's counted tokens).

    Attributes:
        components: the components (column order).
        n_tokens: counted tokens per text ``[n]``.
        sum: signed sum of activations ``[n, C]`` (float64).
        sum_abs: sum of ``|a|`` ``[n, C]`` (float64).
        sum_sq: sum of ``a²`` ``[n, C]`` (float64).
        per_token: with ``per_token=True``, per text ``[n_i, C]`` float32, else ``None``.
        positions: with ``per_token=True``, per text the token index of each row ``[n_i]``.
    """

    components: ComponentSet
    n_tokens: torch.Tensor
    sum: torch.Tensor
    sum_abs: torch.Tensor
    sum_sq: torch.Tensor
    per_token: list[torch.Tensor] | None = None
    positions: list[torch.Tensor] | None = None

    @property
    def mean_abs(self) -> torch.Tensor:
        """Mean ``|a|`` per text ``[n, C]`` (``nan`` for a text with no counted token)."""
        return self.sum_abs / self.n_tokens[:, None].double()

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Over all counted tokens of all texts: mean ``|a|`` ``[C]``, variance of ``|a|`` ``[C]``, count."""
        n = int(self.n_tokens.sum())
        if n == 0:
            raise EditError("no token was counted: are the texts empty or only special tokens?")
        mean = self.sum_abs.sum(0) / n
        var = (self.sum_sq.sum(0) / n - mean**2).clamp_min(0.0)
        return mean, var, n


def _as_set(components: ComponentSet | Sequence[Component]) -> ComponentSet:
    cs = components if isinstance(components, ComponentSet) else ComponentSet(list(components))
    if len(cs) == 0:
        raise EditError("no components given")
    return cs


def component_activations(lm: LanguageModel, components: ComponentSet | Sequence[Component],
                          texts: Sequence[str], *, batch_size: int | None = None, per_token: bool = False,
                          include_special: bool = False, max_tokens: int | None = None) -> ComponentActivations:
    """Activations ``V_c·x`` of every component at every counted token of every text (no gradients).

    ``max_tokens``: read only the first that many counted tokens, in text order; the text where the
    budget ends is cut after its last counted token and later texts are not fed at all (their
    ``n_tokens`` is 0), so the model never sees more of the texts than is counted.
    """
    cs = _as_set(components)
    if isinstance(texts, str) or not list(texts):
        raise EditError("texts must be a non-empty list of strings")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise EditError(f"max_tokens must be None or a positive int, got {max_tokens!r}")
    texts = list(texts)
    mods = linear_modules(lm, cs.modules)
    groups = cs.groups()
    dev, dtype = lm.device, next(lm.model.parameters()).dtype
    reads = {m: (pos, V.to(dev, dtype)) for m, (pos, V, _, _) in groups.items()}
    C, n = len(cs), len(texts)
    sums = torch.zeros(n, C, dtype=torch.float64)
    sum_abs, sum_sq = torch.zeros_like(sums), torch.zeros_like(sums)
    counts = torch.zeros(n, dtype=torch.long)
    rows: list[torch.Tensor] = [torch.zeros(0, C)] * n
    where: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)] * n
    buf: dict[str, torch.Tensor] = {}

    def grab(name: str, x: torch.Tensor) -> None:
        buf[name] = (x.detach() @ reads[name][1].T).float()  # [B, T, k]

    ids, special = _budgeted_ids(lm, texts, include_special, max_tokens)
    order = sorted((i for i in range(n) if ids[i]), key=lambda i: len(ids[i]))
    step = batch_size or DEFAULT_BATCH
    batches = [order[s : s + step] for s in range(0, len(order), step)]
    with read_inputs(mods, grab, stop_when_done=True), torch.no_grad():
        for group in progress(batches, desc="activations", disable=len(batches) < 2, leave=False):
            enc = _pad(lm, [ids[i] for i in group], [special[i] for i in group])
            buf.clear()
            try:
                lm.forward_logits(enc["input_ids"], enc["attention_mask"])
            except StopForward:
                pass
            missing = [m for m in mods if m not in buf]
            if missing:
                raise EditError(f"modules {missing[:3]} did not run in the forward pass; are they part of "
                                "the model's language-modelling path?")
            acts = torch.zeros(*enc["input_ids"].shape, C)
            for m, (pos, _) in reads.items():
                acts[..., pos] = buf[m].cpu()
            keep = enc["attention_mask"].bool()
            if not include_special:
                keep &= ~enc["special_tokens_mask"].bool()
            keep = keep.cpu()
            for b, ti in enumerate(group):
                a = acts[b][keep[b]].double()  # [n_i, C]
                counts[ti] = a.shape[0]
                sums[ti], sum_abs[ti], sum_sq[ti] = a.sum(0), a.abs().sum(0), (a * a).sum(0)
                if per_token:
                    rows[ti] = a.float()
                    where[ti] = keep[b].nonzero().squeeze(-1)
    logger.debug("activations of %d components on %d texts (%d tokens)", C, n, int(counts.sum()))
    return ComponentActivations(cs, counts, sums, sum_abs, sum_sq,
                                rows if per_token else None, where if per_token else None)


def _budgeted_ids(lm: LanguageModel, texts: Sequence[str], include_special: bool,
                  max_tokens: int | None) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and special-token masks per text, cut to the first ``max_tokens`` counted tokens."""
    ids, special, left = [], [], max_tokens
    for text in texts:
        enc = lm.tokenizer(text, return_special_tokens_mask=True)
        row, sp = list(enc["input_ids"]), list(enc["special_tokens_mask"])
        if left is not None:
            counted = [p for p, s in enumerate(sp) if include_special or not s][:max(left, 0)]
            left -= len(counted)
            cut = counted[-1] + 1 if counted else 0
            row, sp = row[:cut], sp[:cut]
        ids.append(row)
        special.append(sp)
    return ids, special


def _pad(lm: LanguageModel, rows: list[list[int]], special: list[list[int]]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``special_tokens_mask`` [B, T] on the model's device."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(lm.tokenizer.pad_token_id), dtype=torch.long)
    att, sp = torch.zeros_like(ids), torch.ones_like(ids)
    for b, (r, s) in enumerate(zip(rows, special)):
        ids[b, : len(r)], att[b, : len(r)], sp[b, : len(r)] = torch.tensor(r), 1, torch.tensor(s)
    return {"input_ids": ids.to(lm.device), "attention_mask": att.to(lm.device),
            "special_tokens_mask": sp.to(lm.device)}


@dataclass
class Selectivity:
    """Activation selectivity of each component for a target set against other sets.

    Attributes:
        components: the scored components.
        score: ``[C]`` (see the module docstring); higher = more target-selective.
        kind: which score (one of ``SCORES``).
        target_mean: mean ``|a|`` on target tokens ``[C]``; ``target_std`` its std ``[C]``.
        other_mean / other_std: per other set, ``[C]`` each.
        strongest_other: per component, the other set with the largest mean ``|a|``.
        n_tokens: counted tokens per set (``"target"`` and each other set).
        target_counts: counted tokens per target text (0 for texts beyond ``max_target_tokens``).
    """

    components: ComponentSet
    score: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor
    other_mean: dict[str, torch.Tensor]
    other_std: dict[str, torch.Tensor]
    strongest_other: list[str]
    n_tokens: dict[str, int]
    kind: str = "d"
    target_counts: list[int] = field(default_factory=list)

    def order(self) -> torch.Tensor:
        """Component positions by decreasing score ``[C]``."""
        return torch.argsort(self.score, descending=True, stable=True)

    def top(self, k: int = 1) -> ComponentSet:
        """The ``k`` most selective components."""
        if k < 1:
            raise EditError(f"k must be >= 1, got {k}")
        return self.components[self.order()[:k]]

    def rows(self, k: int | None = None) -> list[dict[str, Any]]:
        """Ranking as JSON-serialisable dicts (best first; ``k`` rows or all)."""
        out = []
        for rank, i in enumerate(self.order()[: k if k is not None else len(self.components)].tolist()):
            c = self.components[i]
            row: dict[str, Any] = {"rank": rank, "position": i, **c.to_dict(), "score": float(self.score[i]),
                                   "target_mean": float(self.target_mean[i]),
                                   "strongest_other": self.strongest_other[i]}
            row.update({f"mean_{name}": float(m[i]) for name, m in self.other_mean.items()})
            out.append(row)
        return out

    def to_frame(self, k: int | None = None) -> Any:
        """:meth:`rows` as a pandas DataFrame (needs pandas: ``pip install 'gradedit[data]'``)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("Selectivity.to_frame needs pandas: pip install 'gradedit[data]' "
                              "(or use .rows())") from err
        return pd.DataFrame(self.rows(k))


def other_sets(other_texts: Mapping[str, Sequence[str]] | Sequence[str]) -> dict[str, list[str]]:
    """``other_texts`` as named sets (a plain list becomes ``{"other": [...]}``); EditError if any set is empty."""
    if isinstance(other_texts, Mapping):
        sets = {str(k): list(v) for k, v in other_texts.items()}
    elif isinstance(other_texts, str):
        raise EditError("other_texts must be a list of texts or a mapping name -> texts, not one string")
    else:
        sets = {"other": list(other_texts)}
    empty = [k for k, v in sets.items() if not v]
    if not sets or empty:
        raise EditError(f"every other-text set needs at least one text (empty: {empty or 'all'})")
    return sets


def selectivity(lm: LanguageModel, components: ComponentSet | Sequence[Component], target_texts: Sequence[str],
                other_texts: Mapping[str, Sequence[str]] | Sequence[str], *, score: str = "d",
                batch_size: int | None = None, include_special: bool = False,
                max_target_tokens: int | None = None) -> Selectivity:
    """Score every component by how much more it fires on the target than on any other set.

    ``score`` is ``"d"``, ``"z"``, ``"ratio"`` or ``"impact"`` (module docstring). ``max_target_tokens``:
    rank on only the first that many target tokens (the rest of the target texts is never fed).
    """
    if score not in SCORES:
        raise EditError(f"score must be one of {SCORES}, got {score!r}")
    cs = _as_set(components)
    sets = other_sets(other_texts)
    kw: dict[str, Any] = {"batch_size": batch_size, "include_special": include_special}
    target_acts = component_activations(lm, cs, target_texts, max_tokens=max_target_tokens, **kw)
    mt, vt, nt = target_acts.pooled()
    om, ov, counts = {}, {}, {"target": nt}
    for name, texts in sets.items():
        om[name], ov[name], counts[name] = component_activations(lm, cs, texts, **kw).pooled()
    names = list(sets)
    means = torch.stack([om[k] for k in names])  # [S, C]
    best = means.argmax(0)  # [C]
    cols = torch.arange(len(cs))
    m_o, v_o = means[best, cols], torch.stack([ov[k] for k in names])[best, cols]
    if score == "d":
        values = (mt - m_o) / torch.sqrt((vt + v_o) / 2 + EPS)
    elif score == "z":
        values = (mt - m_o) / torch.sqrt(v_o + EPS)
    elif score == "ratio":
        values = torch.log((mt + EPS) / (m_o + EPS))
    else:
        sigma = torch.tensor([c.sigma for c in cs], dtype=mt.dtype)
        values = (mt - m_o) / torch.sqrt((vt + v_o) / 2 + EPS) * sigma * (mt - m_o).abs()
    sel = Selectivity(cs, values.float(), mt.float(), vt.sqrt().float(), {k: v.float() for k, v in om.items()},
                      {k: v.sqrt().float() for k, v in ov.items()}, [names[i] for i in best.tolist()], counts, score,
                      [int(x) for x in target_acts.n_tokens.tolist()])
    top = sel.rows(3)
    logger.info("selectivity (%s) over %d components (%d target tokens); best: %s", score, len(cs), nt,
                ", ".join(f"{r['module']}#{r['index']} ({r['score']:.2f})" for r in top))
    return sel


def top_selective(lm: LanguageModel, components: ComponentSet | Sequence[Component], target_texts: Sequence[str],
                  other_texts: Mapping[str, Sequence[str]] | Sequence[str], k: int = 1,
                  **kwargs: Any) -> ComponentSet:
    """The ``k`` components with the highest :func:`selectivity` score."""
    return selectivity(lm, components, target_texts, other_texts, **kwargs).top(k)
