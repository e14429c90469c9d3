"""``gradedit components label|show``: statistics and automatic labels of a decomposition's components.

``label DIR --model M`` runs the model over text sets (default: held-out Bible sentences of five
languages) and writes ``DIR/components.json``; ``show DIR`` prints a table from that file (no model
needed) and can write a searchable HTML page. Arguments are declared here without importing torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

LEGEND = """\
columns: freq = share of tokens where the component fires (importance g > {thr:g}); imp = mean importance g
  over all tokens; best = the text set with the highest mean g relative to the other sets (ratio; "only" =
  never important elsewhere); label = [best set ratio] | reads: tokens where it is most important |
  writes: tokens its write vector promotes (+) / suppresses (-) through the unembedding, on the side it
  writes where it fires (writes≈: gate/up components through down_proj, a linear approximation)"""


def _decomposition_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder; give a folder written by gradedit decompose")
    if not (path / "decomposition.json").is_file():
        raise FileNotFoundError(f"{path} holds no decomposition.json; give a folder written by gradedit decompose "
                                f"(a finished run)")
    return path


def _read_text_sets(file: str) -> dict[str, list[str]]:
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"--texts-json {path}: no such file (give a JSON object name -> list of texts)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--texts-json {path} is not valid UTF-8 JSON ({err})") from None
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, list) and v and all(isinstance(t, str) and t.strip() for t in v) for v in obj.values()):
        raise ValueError(f"--texts-json {path} must hold a JSON object name -> non-empty list of texts, "
                         f'e.g. {{"de": ["Der Mann ..."], "en": ["The man ..."]}}')
    return obj


def _cmd_label(args: argparse.Namespace) -> int:
    folder = _decomposition_dir(args.dir)
    sets = _read_text_sets(args.texts_json) if args.texts_json else None
    if args.top_k < 1 or args.n_texts < 1:
        raise ValueError("--top-k and --n-texts must be >= 1")
    from ..decompose import Decomposition
    from ..decompose.labels import label_components
    from ..models import load_model

    lm = load_model(args.model)
    dec = Decomposition.load(folder, lm)
    labels = label_components(lm, dec, sets, top_k=args.top_k, n_default=args.n_texts)
    path = labels.save(folder)
    alive = sum(bool(r["alive"]) for r in labels.components)
    sets_info = ", ".join(f"{s} ({v['tokens']} tokens)" for s, v in labels.data["texts"]["sets"].items())
    print(f"wrote {path}: {len(labels)} components, {alive} alive on {sets_info}")
    print(f"see them with: gradedit components show {folder} --top 20")
    return 0


def _ratio(rec: dict[str, Any], name: str) -> str:
    sel = rec["selectivity"][name]
    return ("only" if sel["mean_importance"] > 0 else "-") if sel["ratio"] is None else f"{sel['ratio']:.2f}×"


def format_table(rows: list[dict[str, Any]], sel_set: str | None = None) -> str:
    """The ``show`` table: one line per component, columns padded (the label last, unpadded); with
    ``sel_set`` a column with each component's ratio on that set."""
    head = ["module", "c", "freq", "imp", "best"] + ([f"{sel_set} ×"] if sel_set else []) + ["label"]
    cells = [head]
    for r in rows:
        best = "-" if r.get("best_set") is None else f"{r['best_set']} {_ratio(r, r['best_set'])}"
        cells.append([r["module"], str(r["index"]), f"{r['firing_frequency']:.3f}", f"{r['mean_importance']:.3f}",
                      best] + ([_ratio(r, sel_set)] if sel_set else []) + [r["label"]])
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    right = {1, 2, 3, 5} if sel_set else {1, 2, 3}
    lines = []
    for c in cells:
        parts = [c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(parts + [c[-1]]).rstrip())
    return "\n".join(lines)


def _cmd_show(args: argparse.Namespace) -> int:
    if not Path(args.dir).exists():
        raise FileNotFoundError(f"{args.dir}: no such folder; give a decomposition folder with components.json")
    from ..decompose.labels_io import ComponentLabels

    labels = ComponentLabels.load(args.dir)
    labels.check_sort(args.sort)
    if args.top < 0:
        raise ValueError("--top must be >= 0")
    rows = labels.select(module=args.module, search=args.search, sort=args.sort, alive_only=not args.all)
    d = labels.data
    sets = ", ".join(f"{s} ({v['tokens']} tokens)" for s, v in d["texts"]["sets"].items())
    print(f"{d['model']}: {len(labels)} components of {len(d['modules'])} modules, measured on {sets}")
    print(LEGEND.format(thr=d["settings"]["threshold"]))
    print(f"{len(rows)} components match; showing {min(args.top, len(rows))}, sorted by {args.sort}\n")
    if rows and args.top:
        sel_set = args.sort.split(":", 1)[1] if args.sort.startswith("selectivity:") else None
        print(format_table(rows[: args.top], sel_set))
    if args.html:
        from ..viz.components_page import write_components_page

        out = write_components_page(args.html, labels, module=args.module, search=args.search, sort=args.sort,
                                    alive_only=not args.all)
        print(f"\nHTML page: {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``components label|show`` (arguments declared here so ``--help`` does not import torch)."""
    p = sub.add_parser("components", help="statistics, labels and a searchable page of decomposed components")
    csub = p.add_subparsers(dest="components_cmd", required=True)
    lab = csub.add_parser("label", help="compute component statistics and labels; writes DIR/components.json")
    lab.add_argument("dir", metavar="DIR", help="decomposition folder (from gradedit decompose)")
    lab.add_argument("--model", required=True, help="the model it was made on: zoo name or model folder")
    lab.add_argument("--texts-json", metavar="FILE",
                     help='JSON object name -> list of texts, e.g. {"de": [...], "en": [...]} (default: Bible '
                          "sentences [400:400+N] of de/en/fr/es/it, text the presets and studies do not use)")
    lab.add_argument("--n-texts", type=int, default=128, metavar="N", help="sentences per language for the default "
                     "text sets (default 128)")
    lab.add_argument("--top-k", type=int, default=10, metavar="N", help="top contexts kept per component (default 10)")
    lab.set_defaults(func=_cmd_label)
    show = csub.add_parser("show", help="print a table of components from DIR/components.json (and an HTML page)")
    show.add_argument("dir", metavar="DIR", help="decomposition folder with components.json")
    show.add_argument("--top", type=int, default=20, metavar="N", help="rows to print (default 20)")
    show.add_argument("--module", metavar="PATTERN", help="only modules matching this fnmatch pattern or substring")
    show.add_argument("--sort", default="freq", metavar="KEY",
                      help="freq (firing frequency, default), importance (mean importance) or selectivity:SET "
                           "(mean importance on SET over the other sets)")
    show.add_argument("--search", metavar="TEXT", help="only components whose label, module or tokens contain TEXT")
    show.add_argument("--all", action="store_true", help="include dead components (never fire on the texts)")
    show.add_argument("--html", metavar="OUT.html", help="also write a self-contained searchable HTML page")
    show.set_defaults(func=_cmd_show)
