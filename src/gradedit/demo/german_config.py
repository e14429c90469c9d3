"""The German-removal study's configuration, its disjoint text sets, and which methods a run builds.

Method names (``GermanDemoConfig.methods`` and ``gradedit demo german --methods``):

- ``gradiend``: the GRADIEND ``language`` feature;
- ``component-sel{N|all}``: SVD components chosen on the first N German selection tokens (or all);
- ``decomposed-sel{N|all}``: a decomposition's components chosen the same way, one row per number
  of components ``k = 1 .. decomposed_max_components`` (``decomposed-sel{N}-k{k}``: that row only);
- ``lora-r{R}-{n}tok``: rank-R LoRA trained on n German tokens.

Without ``methods`` a run builds every method the size fields describe (the default study).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..data import corpora

LANGS = ("de", "fr", "es", "it", "en")

_PATTERNS = {
    "gradiend": re.compile(r"gradiend"),
    "component": re.compile(r"component-sel(\d+|all)"),
    "decomposed": re.compile(r"decomposed-sel(\d+|all)(?:-k(\d+))?"),
    "lora": re.compile(r"lora-r(\d+)-(\d+)tok"),
}
METHOD_FORMS = "gradiend, component-sel{N|all}, decomposed-sel{N|all}[-k{K}], lora-r{R}-{N}tok"


def budget_name(budget: int | None) -> str:
    """``16`` → ``"16"``, ``None`` (all selection text) → ``"all"``."""
    return "all" if budget is None else str(budget)


@dataclass
class GermanDemoConfig:
    """Sizes of the German-removal study (defaults: about 30–40 minutes on 2 CPU cores).

    Fields beyond the sizes: ``decomposition`` a folder written by ``gradedit decompose`` for the
    ``decomposed-sel*`` methods (``None``: those methods are reported as not run);
    ``decomposed_selection_tokens`` / ``decomposed_max_components`` their selection budgets and
    largest number of components; ``target_de_ce`` the German CE increase on calibration text every
    method is scaled to (``None``: the ``component-selall`` edit's own effect); ``methods`` a subset of
    method names to build (module docstring; ``None``: all); ``goal_de_ce`` / ``goal_max_other`` the
    goal each method is judged against on held-out text (German CE up by at least ``goal_de_ce``
    nats, every other language's CE change within ``±goal_max_other``).
    """

    model: str = "gemma3-270m"
    out_dir: str = "runs/demo-german"
    eval_texts: int = 32
    calibration_texts: int = 24
    selection_texts: int = 64
    fit_tokens: int = 16
    n_components: int = 2
    component_steps: int = 16
    component_other_tokens: int = 256
    component_selection_tokens: tuple[int | None, ...] = (16, 64, 256, None)
    component_max_leak: float | None = 0.1
    component_score: str = "impact"
    decomposition: str | None = None
    decomposed_selection_tokens: tuple[int | None, ...] = (16,)
    decomposed_max_components: int = 3
    lora_ranks: tuple[int, ...] = (1, 4)
    lora_tokens: tuple[int, ...] = (16, 256)
    lora_steps: int = 24
    lora_lr: tuple[float, ...] = (2e-3, 1e-3)
    lora_kl_weight: float = 1.0
    gradiend: bool = True
    gradiend_steps: int = 40
    target_de_ce: float | None = 1.0
    methods: tuple[str, ...] | None = None
    goal_de_ce: float = 2.0
    goal_max_other: float = 0.1
    pareto_alphas: tuple[float, ...] = (1.5,)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fit_tokens < 1 or self.eval_texts < 1 or self.calibration_texts < 1:
            raise ValueError("fit_tokens, eval_texts and calibration_texts must be positive")
        for name in ("component_selection_tokens", "decomposed_selection_tokens"):
            value = getattr(self, name)
            if not value or any(n is not None and (not isinstance(n, int) or n < 1) for n in value):
                raise ValueError(f"{name} must list positive ints or None (all selection text), got {value!r}")
        if self.decomposed_max_components < 1:
            raise ValueError(f"decomposed_max_components must be >= 1, got {self.decomposed_max_components}")
        if self.target_de_ce is not None and not self.target_de_ce > 0:
            raise ValueError(f"target_de_ce must be a positive CE increase in nats (or None), got {self.target_de_ce}")
        if not (self.goal_de_ce > 0 and self.goal_max_other >= 0):
            raise ValueError("goal_de_ce must be positive and goal_max_other non-negative")
        if self.methods is not None:
            self.methods = tuple(self.methods)
            if not self.methods:
                raise ValueError(f"methods is empty; give names like {METHOD_FORMS} (or None for all)")
            bad = [m for m in self.methods if not any(p.fullmatch(m) for p in _PATTERNS.values())]
            if bad:
                raise ValueError(f"unknown method name(s) {bad}; names look like {METHOD_FORMS}")
            self.plan()  # budgets and k are valid

    def plan(self) -> MethodPlan:
        """Which methods to build: from ``methods`` when given, else from the size fields."""
        if self.methods is None:
            every = tuple(range(1, self.decomposed_max_components + 1))
            return MethodPlan(component=tuple(dict.fromkeys(self.component_selection_tokens)),
                              decomposed=tuple((b, every) for b in dict.fromkeys(self.decomposed_selection_tokens)),
                              lora=tuple((r, n) for r in self.lora_ranks for n in self.lora_tokens),
                              gradiend=self.gradiend)
        component: dict[int | None, None] = {}
        decomposed: dict[int | None, list[int]] = {}
        lora: dict[tuple[int, int], None] = {}
        gradiend = False
        ks: list[int]
        for name in self.methods:
            if _PATTERNS["gradiend"].fullmatch(name):
                gradiend = True
            elif m := _PATTERNS["component"].fullmatch(name):
                component[_budget(m.group(1))] = None
            elif m := _PATTERNS["decomposed"].fullmatch(name):
                ks = [int(m.group(2))] if m.group(2) else list(range(1, self.decomposed_max_components + 1))
                if 0 in ks:
                    raise ValueError(f"{name}: k counts components and starts at 1")
                have = decomposed.setdefault(_budget(m.group(1)), [])
                have += [k for k in ks if k not in have]
            elif m := _PATTERNS["lora"].fullmatch(name):
                lora[(int(m.group(1)), int(m.group(2)))] = None
        return MethodPlan(component=tuple(component), decomposed=tuple((b, tuple(sorted(ks)))
                                                                       for b, ks in decomposed.items()),
                          lora=tuple(lora), gradiend=gradiend)

    def lora_lr_for(self, rank: int) -> float:
        """The learning rate of rank ``rank``: ``lora_lr`` by the rank's place in ``lora_ranks`` (last if absent)."""
        i = self.lora_ranks.index(rank) if rank in self.lora_ranks else len(self.lora_ranks) - 1
        return self.lora_lr[min(i, len(self.lora_lr) - 1)]


def _budget(text: str) -> int | None:
    if text == "all":
        return None
    if int(text) < 1:
        raise ValueError(f"a selection budget is a positive number of tokens or 'all', got {text}")
    return int(text)


@dataclass(frozen=True)
class MethodPlan:
    """The methods of one run: selection budgets of ``component-sel*``; ``(budget, ks)`` of
    ``decomposed-sel*``; ``(rank, tokens)`` of ``lora-*``; whether GRADIEND runs."""

    component: tuple[int | None, ...] = ()
    decomposed: tuple[tuple[int | None, tuple[int, ...]], ...] = ()
    lora: tuple[tuple[int, int], ...] = ()
    gradiend: bool = False

    def names(self) -> list[str]:
        """Every method row this plan builds, in the study's order (decomposed, SVD, LoRA, GRADIEND)."""
        return ([f"decomposed-sel{budget_name(b)}-k{k}" for b, ks in self.decomposed for k in ks]
                + [f"component-sel{budget_name(b)}" for b in self.component]
                + [f"lora-r{r}-{n}tok" for r, n in self.lora] + (["gradiend"] if self.gradiend else []))


@dataclass
class Texts:
    """The disjoint text sets of the study, per language."""

    selection: dict[str, list[str]]
    calibration: list[str]
    evaluation: dict[str, list[str]]
    fit: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: GermanDemoConfig) -> Texts:
        sel, ev = {}, {}
        calib: list[str] = []
        for lang in LANGS:
            sents = corpora.sentences(lang)
            need = cfg.selection_texts + cfg.calibration_texts + cfg.eval_texts
            if len(sents) < need:
                raise ValueError(f"only {len(sents)} {lang} sentences, the study needs {need}")
            sel[lang] = sents[:cfg.selection_texts]
            ev[lang] = sents[-cfg.eval_texts:]
            if lang == "de":
                calib = sents[cfg.selection_texts:cfg.selection_texts + cfg.calibration_texts]
        return cls(selection=sel, calibration=calib, evaluation=ev,
                   fit={lang: s[: max(8, cfg.selection_texts // 4)] for lang, s in sel.items() if lang != "de"})
