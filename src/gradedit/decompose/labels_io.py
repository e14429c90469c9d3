"""``components.json``: component statistics and labels of a decomposition, saved beside it.

:class:`ComponentLabels` holds what :func:`gradedit.decompose.labels.label_components` computed
(one record per component: statistics, top contexts, output-token lens, selectivity per text set,
a short label) and lets ``gradedit components show`` filter, sort and search it without a model.
The file is versioned (:data:`FORMAT`), written atomically, validated on load, and tied to the
decomposition it describes (``decomposition_id``, a hash of its ``decomposition.json`` content).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._files import write_text_atomic
from ..errors import DecompositionError

__all__ = ["ComponentLabels", "FORMAT", "LABELS_FILE", "SORT_KEYS", "decomposition_id", "label_text", "search_text",
           "show_token"]

FORMAT = "gradedit-component-labels/1"
LABELS_FILE = "components.json"
SORT_KEYS = ("freq", "importance", "selectivity:SET")
_TOP_KEYS = ("format", "model", "decomposition_id", "texts", "settings", "lens", "modules", "components")
_COMPONENT_KEYS = ("module", "index", "alive", "firing_frequency", "mean_importance", "selectivity", "contexts",
                   "lens", "label")
_FIX = "run `gradedit components label DIR --model M` to (re)compute it"


def decomposition_id(meta: Mapping[str, Any]) -> str:
    """sha256 (16 hex) of a decomposition's ``decomposition.json`` content (``Decomposition.to_json()``),
    canonically serialised: the same for the object in memory and the file it was saved to."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def show_token(tok: str) -> str:
    """A token for one-line display: quoted, with newlines and tabs escaped (``' der'``)."""
    return "'" + tok.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + "'"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "only"
    return f"{ratio:.1f}×" if ratio < 100 else f"{ratio:.0f}×"


def label_text(rec: Mapping[str, Any], *, min_ratio: float = 1.5, n_tokens: int = 3) -> str:
    """A short automatic label from a component record, e.g. ``de 4.1× | reads ' der' ' die' | writes +' und'``.

    Parts (each left out when empty): the text set it prefers (mean importance ≥ ``min_ratio`` × the
    other sets', ``only`` when it never fires on the others); ``reads``: the most common tokens among
    its top contexts; ``writes``: the top tokens of the output-token lens on the side it writes on
    its top contexts (``+`` promoted, ``−`` suppressed; ``writes≈`` for gate/up components read
    through ``down_proj``, a linear approximation).
    """
    if not rec["alive"]:
        return "dead (never fires on these texts)"
    parts: list[str] = []
    best = rec.get("best_set")
    if best is not None:
        ratio = rec["selectivity"][best]["ratio"]
        if ratio is None or ratio >= min_ratio:
            parts.append(f"{best} {_fmt_ratio(ratio)}")
    counts: dict[str, int] = {}
    for ctx in rec["contexts"]:
        counts[ctx["token"]] = counts.get(ctx["token"], 0) + 1
    reads = sorted(counts, key=lambda t: -counts[t])[:n_tokens]  # stable: ties keep context order
    if reads:
        parts.append("reads " + " ".join(show_token(t) for t in reads))
    lens = rec.get("lens")
    if lens:
        head = "writes≈" if lens["kind"] == "via_down" else "writes"
        plus = " ".join(show_token(t) for t, _ in lens["promotes"][:n_tokens])
        minus = " ".join(show_token(t) for t, _ in lens["suppresses"][:max(1, n_tokens - 2)])
        parts.append(f"{head} +{plus} −{minus}")
    return " | ".join(parts)


def search_text(rec: Mapping[str, Any]) -> str:
    """What a search matches (lower-cased): the label, the module, the marked tokens of the top
    contexts and the lens tokens. The HTML page's search box uses the same text."""
    toks = [c["token"] for c in rec["contexts"]]
    lens = rec.get("lens") or {}
    toks += [t for t, _ in lens.get("promotes", [])] + [t for t, _ in lens.get("suppresses", [])]
    return "\n".join([rec["label"], rec["module"], *toks]).lower()


def _sort_value(rec: Mapping[str, Any], key: str) -> float:
    if key == "freq":
        return float(rec["firing_frequency"])
    if key == "importance":
        return float(rec["mean_importance"])
    sel = rec["selectivity"][key.split(":", 1)[1]]
    return math.inf if sel["ratio"] is None and sel["mean_importance"] > 0 else float(sel["ratio"] or 0.0)


class ComponentLabels:
    """Statistics and labels of every component of a decomposition (the content of ``components.json``).

    Attributes:
        data: the JSON object (see :data:`FORMAT`; documented in docs/decompose.md).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = dict(data)
        _validate(self.data, "components data")

    @property
    def components(self) -> list[dict[str, Any]]:
        """One record per component, module by module, by index."""
        return list(self.data["components"])

    @property
    def sets(self) -> list[str]:
        """Names of the text sets the statistics were measured on."""
        return list(self.data["texts"]["sets"])

    def __len__(self) -> int:
        return len(self.data["components"])

    def __repr__(self) -> str:
        alive = sum(bool(c["alive"]) for c in self.data["components"])
        return f"ComponentLabels({len(self)} components, {alive} alive, sets {self.sets})"

    def select(self, *, module: str | None = None, search: str | None = None, sort: str = "freq",
               alive_only: bool = True, top: int | None = None) -> list[dict[str, Any]]:
        """Records filtered and sorted (largest first).

        Args:
            module: fnmatch pattern or substring of the module name.
            search: case-insensitive substring of :func:`search_text` (label, module, tokens); leading
                and trailing spaces count (``" der"``); only spaces means no filter.
            sort: ``freq`` (firing frequency), ``importance`` (mean importance) or ``selectivity:SET``
                (mean importance on ``SET`` over the other sets').
            alive_only: leave out components that never fired on these texts.
            top: keep the first ``top`` records.

        Raises:
            DecompositionError: an unknown sort key or set.
        """
        self.check_sort(sort)
        recs: Iterable[dict[str, Any]] = self.data["components"]
        if alive_only:
            recs = [r for r in recs if r["alive"]]
        if module:
            recs = [r for r in recs if module in r["module"] or fnmatch.fnmatchcase(r["module"], module)]
        if search and search.strip():  # spaces kept: ' der' finds the token ' der', not 'oder'
            needle = search.lower()
            recs = [r for r in recs if needle in search_text(r)]
        out = sorted(recs, key=lambda r: -_sort_value(r, sort))  # stable: ties keep module/index order
        return out if top is None else out[: max(top, 0)]

    def check_sort(self, sort: str) -> None:
        """Raise :class:`DecompositionError` unless ``sort`` is one of :data:`SORT_KEYS` with a known set."""
        if sort in ("freq", "importance"):
            return
        kind, _, name = sort.partition(":")
        if kind != "selectivity" or not name:
            raise DecompositionError(f"unknown sort {sort!r}; use freq, importance or selectivity:SET "
                                     f"(sets: {', '.join(self.sets)})")
        if name not in self.sets:
            raise DecompositionError(f"no text set {name!r} for --sort selectivity:{name}; sets: {', '.join(self.sets)}")

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``components.json`` into ``folder`` (atomic, compact JSON); returns its path."""
        path = Path(folder) / LABELS_FILE
        write_text_atomic(path, json.dumps(self.data, ensure_ascii=False, separators=(",", ":"),
                                           allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, check_decomposition: bool = True) -> ComponentLabels:
        """Read ``components.json`` from a decomposition folder (or the file itself).

        With ``check_decomposition`` and a ``decomposition.json`` beside it, refuses labels made for
        another decomposition (e.g. one trained again into the same folder).

        Raises:
            FileNotFoundError: no ``components.json``.
            DecompositionError: unreadable, another format, incomplete, or stale.
        """
        path = Path(folder)
        file = path if path.is_file() else path / LABELS_FILE
        if not file.is_file():
            raise FileNotFoundError(f"no {LABELS_FILE} in {path}; {_FIX}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DecompositionError(f"{file} is corrupt ({err}); {_FIX}") from None
        _validate(data, str(file))
        meta = file.parent / "decomposition.json"
        if check_decomposition and meta.is_file():
            try:
                dec_id = decomposition_id(json.loads(meta.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DecompositionError(f"{meta} is corrupt ({err}); re-run decompose()") from None
            if dec_id != data["decomposition_id"]:
                raise DecompositionError(f"{file} was computed for another decomposition (id {data['decomposition_id']}, "
                                         f"the folder holds {dec_id}); {_FIX}")
        return cls(data)


def _validate(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise DecompositionError(f"{where} should hold a JSON object, got {type(data).__name__}; {_FIX}")
    if data.get("format") != FORMAT:
        raise DecompositionError(f"{where} has format {data.get('format')!r}, expected {FORMAT!r}; {_FIX}")
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        raise DecompositionError(f"{where} lacks {missing}; {_FIX}")
    comps = data["components"]
    sets = data["texts"].get("sets") if isinstance(data["texts"], dict) else None
    if not isinstance(comps, list) or not isinstance(sets, dict):
        raise DecompositionError(f"{where}: 'components' must be a list and 'texts.sets' an object; {_FIX}")
    for i, rec in enumerate(comps):
        bad = [k for k in _COMPONENT_KEYS if not isinstance(rec, dict) or k not in rec]
        if bad:
            raise DecompositionError(f"{where}: component record {i} lacks {bad}; {_FIX}")
        if set(rec["selectivity"]) != set(sets):
            raise DecompositionError(f"{where}: component record {i} has selectivity for {sorted(rec['selectivity'])}, "
                                     f"not the text sets {sorted(sets)}; {_FIX}")

