"""``gradedit demo [pronouns|german] [--smoke]``: the main job and the studies."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.smoke:
        from ..demo.smoke import run_smoke

        for line in run_smoke(args.model or "smollm2-135m"):
            print(line)
        return 0
    if args.which == "german":
        from ..demo.german import GermanDemoConfig
        from ..demo.german import run as run_german

        gcfg = GermanDemoConfig(out_dir=args.out or "runs/demo-german", **({"model": args.model} if args.model else {}))
        result = run_german(gcfg)
    else:
        from ..demo.pronouns import PronounDemoConfig
        from ..demo.pronouns import run as run_pronouns

        pcfg = PronounDemoConfig(out_dir=args.out or "runs/demo", **({"model": args.model} if args.model else {}),
                                 **({"steps": args.steps} if args.steps else {}))
        result = run_pronouns(pcfg)
    for line in result.headline:
        print(line)
    print(f"report: {result.report.resolve()}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    demo = sub.add_parser("demo", help="the main job: GRADIEND he/she on smollm2-135m (or the German-removal study)")
    demo.add_argument("which", nargs="?", default="pronouns", choices=["pronouns", "german"],
                      help="pronouns (default; smollm2-135m) or german (remove German from gemma3-270m)")
    demo.add_argument("--model", default=None, help="zoo name or HF folder (default: the demo's own model)")
    demo.add_argument("--out", default=None, help="output folder (default runs/demo or runs/demo-german)")
    demo.add_argument("--steps", type=int, default=None, help="GRADIEND training steps (pronouns demo)")
    demo.add_argument("--smoke", action="store_true", help="only load the model, generate and score (seconds)")
    demo.set_defaults(func=_cmd_demo)
