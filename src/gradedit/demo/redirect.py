"""The write-vector redirect study (issue 14.5b, after spd PR #462's emoticon → 'o' experiment).

Find a rank-1 component of a residual-stream-writing layer that fires selectively where a context
class occurs (default: semicolons in English Bible passages), and make the model predict a chosen
target token (default ``" o"``) right after it, three ways:

- ``analytic-<family>``: the component's write vector becomes ``s · α · û(target)`` (``α`` swept in
  multiples of ``α₁``, the strength that raises log P(target) by 1 nat on the selection text; ``s``
  orients the sign, see :mod:`gradedit.demo.redirect_select`);
- ``trained-<family>``: the write vector trained on ``n`` examples (CE on the target at the fire
  positions + ``λ`` · KL elsewhere, :func:`gradedit.demo.redirect_fit.fit_write_vector`);
- ``lora``: a rank-r LoRA on the same modules, same examples and loss (``n × λ``).

``<family>`` is ``decomposed`` (the components of a :class:`~gradedit.decompose.Decomposition`, e.g. the
``smollm2-135m-down`` preset) or ``svd`` (SVD components of the same layers); each family contributes
its own most selective component. Every point is measured on held-out text that nothing else reads
(:mod:`gradedit.demo.redirect_eval`): P(target) at fire positions, KL at the surrounding positions,
KL on unrelated text. Text sets and fire positions: :mod:`gradedit.demo.redirect_data`.

Class-text tokens are counted per point and purpose (``selection``, ``calibration``, ``fit``,
``total``; :mod:`gradedit.demo.redirect_build`), from each method's own bookkeeping and, independently,
by a hook on the input embedding (``tokens_hook``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..edits import ComponentSet
from ..errors import DecompositionError, EditError
from ..models import LanguageModel, load_model
from .common import DemoResult, stage
from .redirect_build import Point, build_points, prepare_families
from .redirect_data import fit_examples, passages, split_texts
from .redirect_select import SCORES
from .strength import TokenReads

logger = logging.getLogger(__name__)

__all__ = ["Point", "RedirectConfig", "component_families", "heatmap_choice", "run"]


@dataclass
class RedirectConfig:
    """Settings of the redirect study (defaults: smollm2-135m, estimated 35-40 minutes on 2 CPU cores).

    Text: ``source`` (``"bible"`` / ``"tiny"`` / a file, one passage per line), ``lang``, passages of
    ``window`` sentences from ``sentences[text_start:text_stop]`` — by default after the sentences the
    decomposition presets read (100–399) and before the last 32 (the German study's held-out text).
    ``context`` is a regex of the class, ``target`` one token. Set sizes are passages.
    ``alphas``: multiples of ``α₁``, the analytic strength that raises log P(target) by ``unit_gain``
    nats at the selection text's fire positions. ``min_score``: a family whose best component scores
    less reports that and contributes no points. ``train_lr`` is relative (Adam lr = ``train_lr · α₁ /
    √d``). ``lora_modules``: default the modules of the chosen components.
    """

    model: str = "smollm2-135m"
    out_dir: str = "runs/demo-redirect"
    decomposition: str | None = "runs/decomp-smollm2-down"
    modules: tuple[str, ...] | None = None
    context: str = ";"
    target: str = " o"
    source: str = "bible"
    lang: str = "en"
    window: int = 2
    text_start: int = 400
    text_stop: int | None = -32
    eval_texts: int = 64
    selection_texts: int = 48
    fit_texts: int = 16
    unrelated_eval: int = 32
    unrelated_selection: int = 24
    unrelated_fit: int = 12
    score: str = "d"
    min_score: float = 1.0
    unit_gain: float = 1.0
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    fit_sizes: tuple[int, ...] = (1, 4, 8, 16)
    kl_weights: tuple[float, ...] = (0.1, 1.0, 10.0)
    train_steps: int = 20
    train_lr: float = 0.2
    max_kl_tokens: int = 128
    lora: bool = True
    lora_rank: int = 1
    lora_steps: int = 25
    lora_lr: float = 5e-3
    lora_modules: tuple[str, ...] | None = None
    heatmap_texts: int = 3
    heatmap_kl_budget: float = 0.05
    seed: int = 0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        for name in ("eval_texts", "selection_texts", "fit_texts", "unrelated_eval", "unrelated_selection", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.fit_sizes or min(self.fit_sizes) < 1 or not self.kl_weights or min(self.kl_weights) < 0:
            raise ValueError(f"fit_sizes must be positive ints and kl_weights >= 0, got {self.fit_sizes}, {self.kl_weights}")
        if not self.alphas or min(self.alphas) <= 0:
            raise ValueError(f"alphas must be positive multiples of the unit strength, got {self.alphas}")
        if self.decomposition is None and not self.modules:
            raise ValueError("without a decomposition give modules, e.g. ('model.layers.19.mlp.down_proj',)")


def component_families(lm: LanguageModel, cfg: RedirectConfig) -> tuple[dict[str, ComponentSet], list[str]]:
    """``{"decomposed": ..., "svd": ...}`` over the same modules (no ``decomposed`` without a decomposition)."""
    from ..edits import svd_components
    from ..edits.components import linear_modules

    fams: dict[str, ComponentSet] = {}
    if cfg.decomposition is not None:
        from ..decompose import Decomposition
        from ..edits.components.decomposed import decomposed_components

        try:
            dec = Decomposition.load(cfg.decomposition, lm.model)
        except DecompositionError as err:
            raise DecompositionError(f"{err}; make one with `gradedit decompose --preset smollm2-135m-down --out "
                                     f"{cfg.decomposition}` or set decomposition=None (SVD components only)") from err
        fams["decomposed"] = decomposed_components(dec, list(cfg.modules) if cfg.modules else None)
        modules = fams["decomposed"].modules or dec.modules
    else:
        modules = list(linear_modules(lm, list(cfg.modules or ())))
    fams["svd"] = svd_components(lm, modules)
    return fams, modules


def heatmap_choice(points: list[Point], budget: float) -> dict[str, int]:
    """Per family, the index of its point with the highest held-out P(target) among those with
    surrounding KL ≤ ``budget`` (else its point with the lowest surrounding KL)."""
    out = {}
    for fam in dict.fromkeys(p.family for p in points):
        idx = [i for i, p in enumerate(points) if p.family == fam]
        ok = [i for i in idx if points[i].measured["surrounding_kl"] <= budget]
        out[fam] = (max(ok, key=lambda i: points[i].measured["p_target"]) if ok
                    else min(idx, key=lambda i: points[i].measured["surrounding_kl"]))
    return out


def run(cfg: RedirectConfig | None = None, lm: LanguageModel | None = None) -> DemoResult:
    """Run the study (module docstring); writes ``points.json``, ``summary.json``, ``heatmaps.json``,
    ``pareto.png`` and ``report.html`` into ``cfg.out_dir``. ``lm``: an already loaded model (default:
    ``load_model(cfg.model)``); its weights end unchanged."""
    from .redirect_eval import measure_edits, token_records
    from .redirect_report import write_outputs

    cfg = cfg or RedirectConfig()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    lm = lm if lm is not None else load_model(cfg.model)
    tid = lm.token_id(cfg.target)
    with stage("texts", timings):
        pool = passages(cfg.source, lang=cfg.lang, window=cfg.window, start=cfg.text_start, stop=cfg.text_stop)
        texts = split_texts(lm, pool, cfg.context, n_eval=cfg.eval_texts, n_selection=cfg.selection_texts,
                            n_fit=cfg.fit_texts, n_unrelated=(cfg.unrelated_eval, cfg.unrelated_selection,
                                                              cfg.unrelated_fit), seed=cfg.seed)
        examples = fit_examples(lm, texts.fit, texts.fires_of(texts.fit), cfg.target, max(cfg.fit_sizes))
    fams, modules = component_families(lm, cfg)
    others = texts.unrelated_selection + texts.unrelated_fit
    reads = TokenReads(lm, texts.selection + texts.fit + [e.text for e in examples], exclude=others)
    # a row that is also a prefix of a text the edits may read (e.g. "And he said") is not claimed as held out
    held = TokenReads(lm, texts.evaluation + texts.unrelated_eval,
                      exclude=texts.selection + texts.fit + [e.text for e in examples] + others)
    with held.record("build"):
        with stage("component selection and strength unit", timings):
            families, failed = prepare_families(lm, cfg, texts, fams, reads)
        if not families:
            raise EditError("no component family has a selective component: " + " | ".join(failed.values()))
        lora_modules = list(cfg.lora_modules or dict.fromkeys(f.choice.component.module_name
                                                             for f in families.values()))
        with stage("edits (analytic, trained, LoRA)", timings):
            points = build_points(lm, cfg, texts, examples, families, reads, lora_modules)
    leaked = held.counts().get("total", 0)
    if leaked:
        logger.error("%d held-out tokens were read while the edits were built; the evaluation is not clean", leaked)
    with stage("held-out measurement", timings):
        base, measured = measure_edits(lm, [p.edit for p in points], texts.evaluation,
                                       texts.fires_of(texts.evaluation), texts.unrelated_eval, tid,
                                       batch_size=cfg.batch_size)
        for p, m in zip(points, measured):
            p.measured = m.to_dict()
    with stage("heatmaps", timings):
        chosen = heatmap_choice(points, cfg.heatmap_kl_budget)
        k = min(cfg.heatmap_texts, len(texts.evaluation))
        heat = {points[i].label: {"point": i, "records": token_records(
            lm, points[i].edit, texts.evaluation[:k], texts.fires_of(texts.evaluation)[:k], tid)}
            for i in chosen.values()}
    timings["total"] = round(time.perf_counter() - t_all, 1)
    info = {"model": lm.name, "target": cfg.target, "target_id": tid, "context": cfg.context, "modules": modules,
            "base": base.to_dict(), "texts": texts.sizes(lm), "n_examples": len(examples),
            "choices": {f: {**v.choice.to_dict(), "unit": asdict(v.unit)} for f, v in families.items()},
            "failed_families": failed, "lora_modules": lora_modules,
            "held_out_tokens_read_while_building": leaked, "timings_s": timings, "config": asdict(cfg)}
    report, summary, headline = write_outputs(out, info, points, heat, lm=lm)
    return DemoResult(out_dir=out, report=report, headline=headline, summary=summary)
