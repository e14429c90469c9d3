"""``gradedit decompose``: an SPD-style parameter decomposition of chosen linear layers, saved as a
folder (checkpoints, resumable) — from a preset or from ``--model --modules -C``."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from .interrupt import run_interruptible
from .launch import add_device


def _cmd_decompose(args: argparse.Namespace) -> int:
    from .. import dist
    from .._files import lock_folder
    from ..decompose.presets import run_cli_args

    out = Path(args.out)

    def work() -> int:
        # under torchrun / accelerate launch every rank runs this; rank 0 owns --out (locks and writes)
        dist.init()
        # --out is ours before the model loads; decompose()'s own lock inside passes through (share_nested)
        with lock_folder(out, share_nested=True) if dist.is_main() else contextlib.nullcontext():
            dec = run_cli_args(args)
        if dist.is_main():
            stats = dec.faithfulness()
            print(f"decomposition saved to {args.out}: {len(dec.modules)} modules, "
                  f"faithfulness error {stats:.3g} (mean squared residual per weight)"
                  + (f", {dist.world_size()} processes" if dist.is_distributed() else ""))
        return 0

    return run_interruptible(args, out, "decomposition", work)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``decompose`` (arguments declared here so ``--help`` does not import torch)."""
    p = sub.add_parser("decompose", help="learn sparse rank-1 components (SPD-style) of chosen linear layers")
    p.add_argument("--preset", help="a ready-made recipe: gemma3-270m (MLP gate/up of layers 0, 14-17) or tiny")
    p.add_argument("--model", help="zoo name or model folder (not with --preset)")
    p.add_argument("--modules", nargs="+", help="module names or fnmatch patterns of linear layers")
    p.add_argument("-C", "--n-components", type=int, help="components per module")
    p.add_argument("--texts", help="UTF-8 text file, one text per line (default: mixed Bible text of 5 languages)")
    p.add_argument("--out", required=True, help="output folder (checkpoints and the result)")
    p.add_argument("--objective", choices=("layer", "output"),
                   help="layer: each layer's output by MSE (cheap); output: the model's output by KL (SPD's)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="any DecomposeConfig field, e.g. --set importance_coeff=1e-3 lr=0.003")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")
    add_device(p)
    p.set_defaults(func=_cmd_decompose)
