"""``gradedit blast DIR``: blast radius of a rewritten model folder (``gradedit rewrite``) or a saved
edit (``gradedit edit``, ``WeightEdit.save``) on held-out Bible text.

A rewrite is measured as the edit it is: its weights minus the base model's (named in
``rewrite_info.json``). Wired into :mod:`gradedit.cli.app` with ``register(sub)``; ``run(args)`` does the work.

Under ``torchrun`` / ``accelerate launch`` each rank scores its block of every language's texts
(:func:`gradedit.blast.blast_radius`) and rank 0 alone prints and writes the report.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .checks import check_langs, edit_source
from .launch import add_device
from .precision import add_precision

logger = logging.getLogger(__name__)

DEFAULT_LANGS = "en,de,fr,es,it"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``blast`` sub-command to ``sub`` (the main parser's sub-parsers); returns it."""
    p = sub.add_parser("blast", help="blast radius of a rewritten model or a saved edit: CE change and KL per "
                                     "language, vs a random edit")
    p.add_argument("edit_dir", metavar="DIR", help="a rewritten model folder (gradedit rewrite: rewrite_info.json) or "
                                                   "an edit folder (gradedit edit / WeightEdit.save: edit.json)")
    p.add_argument("--model", default=None, help="the base model (zoo name, local HF folder or hub id); default: the "
                                                 "one DIR records")
    p.add_argument("--langs", default=DEFAULT_LANGS, help=f"comma-separated Bible languages (default {DEFAULT_LANGS})")
    p.add_argument("--target", default=None, help="the language the edit is meant to change (one of --langs)")
    p.add_argument("--n-texts", type=int, default=64, help="sentences per language, the LAST n (held out; default 64)")
    p.add_argument("--out", default=None, help="output folder (default: EDIT_DIR/blast)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control edit")
    p.add_argument("--no-control", action="store_true", help="skip the random control edit")
    p.add_argument("--save-tokens", action="store_true",
                   help="keep per-token values (top-k lists) in report.json; several MB for 5 x 64 texts")
    add_device(p)
    add_precision(p)
    p.set_defaults(func=run)
    return p


def _langs(spec: str) -> list[str]:
    langs = [x.strip() for x in spec.split(",") if x.strip()]
    if not langs:
        raise ValueError(f"--langs {spec!r} names no language; e.g. --langs en,de")
    return list(dict.fromkeys(langs))


def build_corpora(langs: list[str], n_texts: int) -> dict[str, list[str]]:
    """The last ``n_texts`` Bible sentences of each language (held-out-ish: training data is usually
    drawn from the start of the list)."""
    from ..data.corpora import sentences

    if n_texts < 1:
        raise ValueError(f"--n-texts must be >= 1, got {n_texts}")
    out = {}
    for lang in langs:
        sents = sentences(lang)
        if not sents:
            raise ValueError(f"no {lang} sentences available; drop {lang} from --langs")
        out[lang] = sents[-n_texts:]
    return out


def _most_affected(tokens: list[dict[str, Any]]) -> int:
    """Index of the text with the largest mean per-token KL."""
    means = [sum(t["kl"]) / len(t["kl"]) if t["kl"] else 0.0 for t in tokens]
    return max(range(len(means)), key=means.__getitem__) if means else 0


LEGEND = ("ce_base / ce_edit: mean cross-entropy per token (nats) before / after the edit; ce_delta = after - before; "
          "kl: mean per-token KL(p_base || p_edit); control_*: the same for a random edit of the same structure and norm")


def run(args: argparse.Namespace) -> int:
    """Load the model and the edit, measure, print the per-language frame, write report.json + report.html."""
    kind, edit_dir, recorded = edit_source(args.edit_dir)
    langs = _langs(args.langs)
    check_langs(langs, "--langs")
    if args.target is not None and args.target not in langs:
        raise ValueError(f"--target {args.target!r} is not one of --langs {langs}")
    if args.n_texts < 1:
        raise ValueError(f"--n-texts must be >= 1, got {args.n_texts}")
    model = args.model or recorded
    if not model:
        raise ValueError(f"{edit_dir} records no base model; give --model")
    if args.model and recorded and args.model != recorded:
        logger.warning("--model %s differs from the base model %s records (%s); measuring against %s",
                       args.model, edit_dir, recorded, args.model)
    import html

    from .. import dist
    from ..blast import blast_radius
    from ..edits import WeightEdit
    from ..gradiend.rewrite_io import rewrite_edit
    from ..models import load_model
    from ..viz.html import token_heatmap_html, write_html_report

    dist.init()  # under a launcher: every rank scores its share, rank 0 reports
    lm = load_model(model)
    edit = rewrite_edit(edit_dir, lm) if kind == "rewrite" else WeightEdit.load(edit_dir)
    corpora = build_corpora(langs, args.n_texts)
    report = blast_radius(lm, edit, corpora, target=args.target, control=not args.no_control, seed=args.seed)
    if not dist.is_main():
        return 0
    out = Path(args.out) if args.out else edit_dir / "blast"
    out.mkdir(parents=True, exist_ok=True)
    frame = report.to_frame()
    what = "rewritten model" if kind == "rewrite" else "edit"
    print(f"{what} {edit_dir} vs {lm.name}: {edit!r}"
          + (f" ({dist.world_size()} processes)" if dist.is_distributed() else ""))
    print(report.summary())
    print(frame.to_string(float_format=lambda v: f"{v:.4g}"))
    print(LEGEND)
    report.save(out / "report.json", tokens=args.save_tokens)
    sections: list[tuple[str, object]] = [
        ("Summary", f"<pre>{html.escape(report.summary())}</pre>"),
        ("Per language (nats; control = random edit of the same structure and norm)", frame),
        ("Columns", f"<p>{html.escape(LEGEND)}</p>"),
    ]
    for lang in langs:
        idx = _most_affected(report.tokens[lang]) if report.tokens else 0
        sections.append((f"{lang}: text with the largest mean KL (hover a token)",
                         token_heatmap_html(report, lang, text_index=idx)))
    page = write_html_report(out / "report.html", f"gradedit blast: {edit_dir.name} on {lm.name}", sections)
    print(f"report: {out / 'report.json'}, {page}")
    return 0
