"""Selected decoder edits as files, and ONE held-out scorer for every side's edit (``bench_decoder.py``).

A side writes each edit it selected as the entries it changed in the base model: per changed tensor
the flat indices and the rewritten values (``save_edit``; safetensors ``<name>/index`` int64 and
``<name>/value``, plus a JSON sidecar with the feature factor, learning rate and counts). The entries
come from comparing the side's own rewritten weights with the base weights (``changed_entries``), so
the file says what that side's rewrite does, whatever its internals.

The driver then scores every edit the same way (``HeldoutScorer``, project venv): it writes the
entries into one base model in place (``edit_applied``, restored bit-exactly), and measures on rows
and sentences no selection saw:

- per class C, P(C) = Σ P(t) over C's tokens (every factual word of C in the data) at the
  prediction point of each prompt (``gradedit.metrics.next_token_logprobs``): strengthen C = mean
  P(C) on the OTHER class's rows, weaken C (key ``C_weaken``) = 1 − mean P(C) on C's own rows
  (``class_metrics``);
- perplexity, cross-entropy and top-1 LMS on held-out neutral sentences (``gradedit.metrics.lm_scores``).

The edit-file helpers need only torch + safetensors (both venvs import them); the scorer imports
gradedit when it is built.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

Entries = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (flat indices int64 [k], new values [k])


def changed_entries(base: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor],
                    index: Mapping[str, torch.Tensor | None] | None = None) -> Entries:
    """Entries of ``new`` that differ from ``base`` (same names and shapes), per tensor: flat indices and new values.

    ``index[name]`` maps positions of a gathered ``base[name]``/``new[name]`` (1-D) to flat indices of
    the full tensor (``None``: the tensors are whole). Tensors without a change are left out.
    """
    out: Entries = {}
    for name, b in base.items():
        n = new[name]
        if tuple(b.shape) != tuple(n.shape):
            raise ValueError(f"{name}: shape {tuple(n.shape)} differs from the base's {tuple(b.shape)}")
        b_flat, n_flat = b.detach().reshape(-1), n.detach().reshape(-1)
        pos = (b_flat != n_flat).nonzero().reshape(-1)
        if not len(pos):
            continue
        where = index.get(name) if index is not None else None
        flat = pos if where is None else where.reshape(-1).to(torch.int64)[pos]
        out[name] = (flat.to(torch.int64).contiguous(), n_flat[pos].clone().contiguous())
    return out


def save_edit(path: str | Path, entries: Entries, info: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``entries`` to ``path`` (safetensors) and ``info`` + counts to ``path`` with ``.json``; returns the JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (idx, val) in entries.items():
        tensors[f"{name}/index"], tensors[f"{name}/value"] = idx, val
    meta = {**info, "file": path.name, "tensors_changed": len(entries),
            "entries_changed": int(sum(len(i) for i, _ in entries.values()))}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path.with_suffix(".json"))
    return meta


def load_edit(path: str | Path) -> Entries:
    """The entries ``save_edit`` wrote to ``path``."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    names = sorted({k.rsplit("/", 1)[0] for k in t})
    missing = [n for n in names if f"{n}/index" not in t or f"{n}/value" not in t]
    if missing:
        raise ValueError(f"{path}: index or values missing for {missing[:3]}; write it again with save_edit")
    return {n: (t[f"{n}/index"], t[f"{n}/value"]) for n in names}


@contextlib.contextmanager
def edit_applied(model: torch.nn.Module, entries: Entries) -> Iterator[None]:
    """Write ``entries`` into ``model``'s parameters in place for the block; restore the old values exactly."""
    named = dict(model.named_parameters())
    unknown = [n for n in entries if n not in named]
    if unknown:
        raise ValueError(f"the model has no parameters {unknown[:3]}; was the edit made on another base model?")
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, (idx, val) in entries.items():
                flat = named[name].data.view(-1)
                if len(idx) and int(idx.max()) >= flat.numel():
                    raise ValueError(f"{name}: index {int(idx.max())} outside its {flat.numel()} entries")
                saved.append((flat, idx, flat[idx].clone()))
                flat[idx] = val.to(flat.dtype)
        yield
    finally:
        with torch.no_grad():
            for flat, idx, old in reversed(saved):
                flat[idx] = old


def class_metrics(probs: torch.Tensor, row_class: Sequence[str], cols: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Selection metrics from candidate probabilities ``probs [rows, candidates]``.

    ``cols[C]`` are the candidate columns of class C's tokens; for two classes A, B:
    ``A`` = mean P(A) on B's rows, ``A_weaken`` = 1 − mean P(A) on A's rows (and the same for B).
    """
    classes = list(cols)
    if len(classes) != 2:
        raise ValueError(f"two classes needed, got {classes}")
    rc = list(row_class)
    out: dict[str, float] = {}
    for c in classes:
        other = classes[1 - classes.index(c)]
        p_c = probs[:, list(cols[c])].double().sum(-1)
        own = [i for i, r in enumerate(rc) if r == c]
        oth = [i for i, r in enumerate(rc) if r == other]
        if not own or not oth:
            raise ValueError(f"rows of both classes needed ({c}: {len(own)}, {other}: {len(oth)})")
        out[c] = float(p_c[oth].mean())
        out[f"{c}_weaken"] = 1.0 - float(p_c[own].mean())
    return out


class HeldoutScorer:
    """Scores the model as it is: class metrics on ``prompts`` and LM scores on ``neutral``.

    ``prompts`` are causal-LM prompts (text before the placeholder), ``row_class`` their factual class,
    ``tokens[C]`` the words whose summed probability is P(C).
    """

    def __init__(self, lm: Any, prompts: Sequence[str], row_class: Sequence[str], tokens: Mapping[str, Sequence[str]],
                 neutral: Sequence[str], batch_size: int = 16) -> None:
        if len(prompts) != len(row_class):
            raise ValueError(f"{len(prompts)} prompts but {len(row_class)} row classes")
        if not neutral:
            raise ValueError("held-out neutral sentences needed for the perplexity")
        self.lm, self.prompts, self.row_class, self.neutral = lm, list(prompts), list(row_class), list(neutral)
        self.tokens = {c: list(w) for c, w in tokens.items()}
        ids = {c: lm.token_ids(w) for c, w in self.tokens.items()}
        self.ids = sorted({i for v in ids.values() for i in v})
        self.cols = {c: [self.ids.index(i) for i in v] for c, v in ids.items()}
        self.batch_size = batch_size

    def score(self) -> dict[str, Any]:
        from gradedit import metrics

        probs = metrics.next_token_logprobs(self.lm, self.prompts, self.ids, batch_size=self.batch_size).exp()
        lm_sc = metrics.lm_scores(self.lm, self.neutral, batch_size=self.batch_size)
        return {"metrics": class_metrics(probs, self.row_class, self.cols), **lm_sc}

    def score_edit(self, entries: Entries) -> dict[str, Any]:
        with edit_applied(self.lm.model, entries):
            return self.score()


def heldout_row(base: Mapping[str, Any], edited: Mapping[str, Any], key: str) -> dict[str, float]:
    """An edit's held-out figures for ``key`` relative to the base model's. ``p_ratio`` is the target
    probability's ratio: P(C) on the other class's rows for strengthen C (= the metric's ratio), P(C) on
    C's own rows for ``C_weaken`` (the metric is 1 − that P, whose ratio stays near 1 when P is small)."""
    b, e = base["metrics"][key], edited["metrics"][key]
    pb, pe = (1.0 - b, 1.0 - e) if key.endswith("_weaken") else (b, e)
    return {"metric": e, "base_metric": b, "metric_ratio": e / b if b else math.nan,
            "p_ratio": pe / pb if pb else math.nan,
            "perplexity": edited["perplexity"], "perplexity_ratio": edited["perplexity"] / base["perplexity"],
            "lms": edited["lms"], "lms_ratio": edited["lms"] / base["lms"] if base["lms"] else math.nan}
