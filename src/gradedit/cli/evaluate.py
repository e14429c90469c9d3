"""``gradedit evaluate encoder|decoder RUN``: evaluate a trained run."""

from __future__ import annotations

import argparse


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..gradiend.train import Trainer

    trainer = Trainer.load(args.run_dir)
    if args.what == "decoder":
        dec = trainer.evaluate_decoder(target_class=args.target_class, increase_target_probabilities=not args.weaken,
                                       plot=args.plot, split=args.split or "val")
        print(f"selected on the {dec.info.get('split')!r} split under {dec.info['constraint']['label']}")
        for key, sel in dec.items():
            if not sel.admissible:
                print(f"{key:<14} {sel.reason}")
                continue
            print(f"{key:<14} value {sel.base_value:.4g} -> {sel.value:.4g} (x{sel.ratio:.2f})  "
                  f"lr {sel.learning_rate:.3g}  ff {sel.feature_factor:+g}  LMS {sel.base_lms:.4f} -> {sel.lms:.4f}")
    else:
        enc = trainer.evaluate_encoder(split=args.split or "test", plot=args.plot)
        print(f"r = {enc.correlation:+.3f} (with neutral {enc.correlation_with_neutral:+.3f}), "
              f"accuracy {enc.accuracy:.3f} (binary {enc.accuracy_binary:.3f})")
        print(enc.to_frame().to_string())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    ev = sub.add_parser("evaluate", help="evaluate a trained run's encoder or decoder")
    ev.add_argument("what", choices=["encoder", "decoder"])
    ev.add_argument("run_dir")
    ev.add_argument("--target-class", help="decoder: only this class (default: both)")
    ev.add_argument("--weaken", action="store_true", help="decoder: evaluate weakening instead of strengthening")
    ev.add_argument("--split", default=None,
                    help="data split to score (encoder default: test; decoder default: val, so test stays held out)")
    ev.add_argument("--plot", action="store_true", help="also write the figure into the run directory")
    ev.set_defaults(func=_cmd_evaluate)
