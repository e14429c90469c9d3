"""``gradedit evaluate encoder|decoder RUN``: evaluate a trained run.

Under ``torchrun`` / ``accelerate launch`` every rank evaluates its share of the rows (see
:mod:`gradedit.gradiend.evaluate`); rank 0 alone locks RUN, writes into it and prints. The other
ranks point their trainer at a scratch folder (removed afterwards), so none of their copies of the
library's writes reaches RUN.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from .checks import check_run_class, neutral_texts, run_dir, run_neutral
from .launch import add_device
from .precision import add_precision

DECODER_LEGEND = ("value: strengthen C = mean P(C's token) on the other class's prompts; weaken C (C_weaken) = "
                  "1 - mean P(C's token) on C's own prompts. lr, ff: learning rate and feature factor of the chosen "
                  "rewrite. LMS: language-modelling score = top-1 accuracy (share of tokens the model predicts "
                  "as its most likely next token) on the run's neutral text")
ENCODER_LEGEND = ("r = Pearson correlation of the encoded value with the +1/-1 class labels (|r| near 1: the "
                  "feature is separated); accuracy = share of rows whose encoding has the label's sign")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    run = run_dir(args.run_dir)
    check_run_class(run, args.target_class)
    override = run_neutral(run, args.neutral) if args.what == "decoder" or args.neutral else None
    from .. import dist
    from .._files import lock_folder
    from ..gradiend.evaluate.selectors import resolve_selector
    from ..gradiend.train import Trainer

    if args.selector is not None:
        resolve_selector(args.selector)  # a typo fails before the model loads

    dist.init()  # under a launcher: every rank evaluates its rows, rank 0 owns RUN
    main = dist.is_main()
    # the run folder is written (decoder results, plots): not while gradedit train holds it
    with lock_folder(run) if main else contextlib.nullcontext(), \
            contextlib.nullcontext(None) if main else tempfile.TemporaryDirectory(prefix="gradedit-rank") as scratch:
        trainer = Trainer.load(run)
        if scratch is not None:
            trainer.experiment_dir = Path(scratch)
        if override is not None:
            trainer.neutral = neutral_texts(override[1])
            if main:
                print(f"neutral text: {len(trainer.neutral)} texts from {override[0]} (instead of the run's "
                      "neutral.json)")
        if args.what == "decoder":
            dec = trainer.evaluate_decoder(target_class=args.target_class, increase_target_probabilities=not args.weaken,
                                           plot=args.plot and main, split=args.split or "val", selector=args.selector,
                                           search=args.search)
            if not main:
                return 0
            constraint = (dec.info.get("constraint") or {}).get("label") or dec.info.get("selector")
            print(f"selected on the {dec.info.get('split')!r} split under {constraint}"
                  + (f" ({dist.world_size()} processes)" if dist.is_distributed() else ""))
            for key, sel in dec.items():
                if not sel.admissible:
                    print(f"{key:<14} {sel.reason}")
                    continue
                print(f"{key:<14} value {sel.base_value:.4g} -> {sel.value:.4g} (x{sel.ratio:.2f})  "
                      f"lr {sel.learning_rate:.3g}  ff {sel.feature_factor:+g}  LMS {sel.base_lms:.4f} -> {sel.lms:.4f}")
            print(DECODER_LEGEND)
            print(f"next: gradedit rewrite {run} --target-class {trainer.classes[1]} --out NEW_DIR")
        else:
            enc = trainer.evaluate_encoder(split=args.split or "test", plot=args.plot and main)
            if not main:
                return 0
            print(f"r = {enc.correlation:+.3f} (with neutral {enc.correlation_with_neutral:+.3f}), "
                  f"accuracy {enc.accuracy:.3f} (binary {enc.accuracy_binary:.3f})"
                  + (f" ({dist.world_size()} processes)" if dist.is_distributed() else ""))
            print(enc.to_frame().to_string())
            print(ENCODER_LEGEND)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    ev = sub.add_parser("evaluate", help="evaluate a trained run's encoder or decoder")
    ev.add_argument("what", choices=["encoder", "decoder"])
    ev.add_argument("run_dir", metavar="RUN", help="a folder written by gradedit train")
    ev.add_argument("--target-class", help="decoder: only this class (default: both)")
    ev.add_argument("--weaken", action="store_true", help="decoder: evaluate weakening instead of strengthening")
    ev.add_argument("--split", default=None,
                    help="data split to score (encoder default: test; decoder default: val, so test stays held out)")
    ev.add_argument("--selector", default=None,
                    help="decoder: the rule choosing each class's rewrite (default perplexity:0.015 = the strongest "
                         "point within +1.5 %% neutral perplexity; also lms:RATIO, perplexity:MAX, product)")
    ev.add_argument("--search", choices=["grid", "fast"], default=None,
                    help="decoder: 'grid' scores every feature factor x learning rate; 'fast' predicts where the "
                         "selector's bound is reached from lr-derivatives and checks it with a few real passes "
                         "(perplexity/LMS selectors only); default: the library's")
    ev.add_argument("--plot", action="store_true", help="also write the figure into the run directory")
    ev.add_argument("--neutral", metavar="FILE|LANG",
                    help="neutral text instead of the run's neutral.json (a file with one text per line, or a language)")
    add_device(ev)
    add_precision(ev)
    ev.set_defaults(func=_cmd_evaluate)
