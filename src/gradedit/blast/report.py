"""``TargetSpec`` (what an edit is meant to change) and ``BlastReport`` (what it changed)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import json_safe, write_text_atomic
from ..errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: key of the target texts in ``BlastReport.tokens`` when the target is a ``TargetSpec``
TARGET_KEY = "@target"


@dataclass(frozen=True)
class TargetSpec:
    """Target texts and target tokens: the positions an edit is meant to change.

    A position of ``texts`` is a target position when its scored (next, or masked) token is one of
    ``tokens``. Every other scored position of ``texts`` is "surrounding" context.

    Attributes:
        texts: texts that contain the target tokens, e.g. ``["He said that he was late."]``.
        tokens: target words (each exactly one token, e.g. ``" he"``) or token ids.
    """

    texts: Sequence[str]
    tokens: Sequence[str | int]

    def __post_init__(self) -> None:
        if isinstance(self.texts, str) or isinstance(self.tokens, str):
            raise TypeError("TargetSpec takes lists: TargetSpec(texts=[...], tokens=[' he', ...])")
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        if not self.texts:
            raise DataError("TargetSpec.texts is empty; give texts that contain the target tokens")
        if not self.tokens:
            raise DataError("TargetSpec.tokens is empty; give target words such as [' he'] or token ids")
        bad = [i for i, t in enumerate(self.texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"TargetSpec.texts[{bad[0]}] is not a str")
        if not any(t.strip() for t in self.texts):
            raise DataError(f"TargetSpec.texts holds only blank texts ({len(self.texts)}); give texts that contain "
                            "the target tokens")


def on_target_token_lines(on_target: dict[str, Any]) -> list[str]:
    """One line per target token (a ``TargetSpec`` report): at its own positions, P(itself) and
    P(each other target token) before -> after. Pooled numbers hide a he -> she edit; these do not."""
    lines = []
    for tok, d in (on_target.get("by_token") or {}).items():
        others = ", ".join(f"P({u!r}) {v['before']:.4f} -> {v['after']:.4f}" for u, v in d["p_other"].items())
        lines.append(f"  at {tok!r} positions (n={d['n_positions']}): P({tok!r}) {d['p_before']:.4f} -> "
                     f"{d['p_after']:.4f}" + (f"; {others}" if others else ""))
    return lines


@dataclass
class BlastReport:
    """What an edit changed, per corpus, next to a random edit of the same structure and norm.

    All cross-entropies and KLs are token-weighted means in nats over scored tokens.

    Attributes:
        model: the model's name.
        edit: ``repr`` of the edit; ``edit_norm`` its Frobenius norm.
        langs: corpus keys, in the order given.
        n_tokens: scored tokens per corpus.
        ce_base, ce_edit, ce_delta: cross-entropy before, after and after − before, per corpus.
        kl: mean per-token ``KL(p_base ‖ p_edit)`` per corpus.
        target: the target corpus key, ``"spec"`` for a ``TargetSpec``, or ``None``.
        on_target: ``{"metric", "before", "after", "delta", ...}``: the target corpus's CE
            (corpus key) or mean log P(target token) at target positions with mean P before/after
            (``p_before``/``p_after``), ``n_positions`` and ``by_token`` (per target token: its own
            P and the other target tokens' P at its positions; ``on_target_token_lines``) (``TargetSpec``).
        global_kl: token-weighted mean KL over the corpora other than the target (all corpora
            for a ``TargetSpec`` or no target); ``None`` when there are none.
        surrounding_kl: mean KL at the non-target positions of the ``TargetSpec`` texts.
        control_*: the same numbers for the random control edit (``None`` without control).
        tokens: per corpus (and ``"@target"``), per text a dict of per-token values: ``tokens``
            (every token string of the text), ``positions`` (index of each scored token), ``kl``,
            ``dlogprob`` (change of log P of the actual token), ``top_before``/``top_after`` (top-k
            ``[token, p]``) and ``shifts`` (the k largest ``[token, Δp]``), aligned with ``positions``.
    """

    model: str
    edit: str
    edit_norm: float
    langs: list[str]
    n_tokens: dict[str, int]
    ce_base: dict[str, float]
    ce_edit: dict[str, float]
    ce_delta: dict[str, float]
    kl: dict[str, float]
    target: str | None = None
    on_target: dict[str, Any] | None = None
    global_kl: float | None = None
    surrounding_kl: float | None = None
    control_ce_delta: dict[str, float] | None = None
    control_kl: dict[str, float] | None = None
    control_on_target: dict[str, Any] | None = None
    control_global_kl: float | None = None
    control_surrounding_kl: float | None = None
    seed: int = 0
    topk: int = 5
    tokens: dict[str, list[dict[str, Any]]] | None = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per corpus: ``ce_base, ce_edit, ce_delta, kl, control_ce_delta, control_kl, n_tokens``."""
        import pandas as pd

        nan = float("nan")
        rows = {lang: {"ce_base": self.ce_base[lang], "ce_edit": self.ce_edit[lang],
                       "ce_delta": self.ce_delta[lang], "kl": self.kl[lang],
                       "control_ce_delta": (self.control_ce_delta or {}).get(lang, nan),
                       "control_kl": (self.control_kl or {}).get(lang, nan),
                       "n_tokens": self.n_tokens[lang]} for lang in self.langs}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "lang"
        return frame

    def to_dict(self, *, tokens: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN becomes ``None``); ``tokens=False`` drops per-token values."""
        out = asdict(self)
        if not tokens:
            out["tokens"] = None
        return json_safe(out)

    def save(self, path: str | Path, *, tokens: bool = True) -> Path:
        """Write :meth:`to_dict` as compact JSON atomically; returns the path."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(tokens=tokens), separators=(",", ":"), ensure_ascii=False) + "\n")
        logger.info("blast report written to %s", path)
        return path

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> BlastReport:
        """Inverse of :meth:`to_dict` (``None`` numbers stay ``None``)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown BlastReport fields {unknown}; was this file written by another version?")
        return cls(**obj)

    @classmethod
    def load(cls, path: str | Path) -> BlastReport:
        """Read a file written by :meth:`save`."""
        from .._files import read_json_object

        return cls.from_dict(read_json_object(Path(path), "write it again with BlastReport.save"))

    def summary(self) -> str:
        """A few lines: on-target effect, off-target KL, and the per-corpus CE change vs the control."""
        lines = [f"blast radius of {self.edit} (norm {self.edit_norm:.4g}) on {self.model}"]
        if self.on_target is not None:
            ot = self.on_target
            line = f"on target ({ot['metric']}): {ot['before']:.4f} -> {ot['after']:.4f} (delta {ot['delta']:+.4f})"
            if self.control_on_target is not None:
                line += f"; control delta {self.control_on_target['delta']:+.4f}"
            lines.append(line)
            lines += on_target_token_lines(ot)
        for name, val, ctl in (("off-target KL", self.global_kl, self.control_global_kl),
                               ("surrounding KL", self.surrounding_kl, self.control_surrounding_kl)):
            if val is not None:
                lines.append(f"{name}: {val:.3g} nats" + (f" (control {ctl:.3g})" if ctl is not None else ""))
        for lang in self.langs:
            line = (f"  {lang}: CE {self.ce_base[lang]:.4f} -> {self.ce_edit[lang]:.4f} "
                    f"({self.ce_delta[lang]:+.4f}), KL {self.kl[lang]:.3g}")
            if self.control_ce_delta is not None and self.control_kl is not None:
                line += f" | control {self.control_ce_delta[lang]:+.4f}, KL {self.control_kl[lang]:.3g}"
            lines.append(line)
        return "\n".join(lines)
