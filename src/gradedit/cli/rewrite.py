"""``gradedit rewrite RUN``: save the base model rewritten to strengthen or weaken a class."""

from __future__ import annotations

import argparse
import logging

from .checks import check_run_class, neutral_texts, new_folder, run_dir, run_neutral
from .launch import add_device, single_process_only

logger = logging.getLogger(__name__)


def _cmd_rewrite(args: argparse.Namespace) -> int:
    single_process_only("rewrite", "it writes one model folder; run `gradedit evaluate decoder` under the launcher "
                        "first if the sweep is the heavy part")
    run = run_dir(args.run_dir)
    check_run_class(run, args.target_class)
    out = new_folder(args.out)
    try:  # neutral text is needed only if the decoder has not been evaluated for this class yet
        override, missing = run_neutral(run, args.neutral), None
    except ValueError as err:
        override, missing = None, err
    if missing is not None and not (run / "decoder_results.json").is_file():
        raise missing
    from .._files import lock_folder
    from ..gradiend.train import Trainer

    # the run folder is written (decoder results, plots): not while gradedit train holds it
    with lock_folder(run):
        trainer = Trainer.load(run)
        if override is not None:
            trainer.neutral = neutral_texts(override[1])
        increase = not args.weaken
        try:
            trainer.rewrite_base_model(target_class=args.target_class, increase_target_probabilities=increase,
                                       output_dir=out)
        except (KeyError, FileNotFoundError):
            if missing is not None:
                raise missing from None
            logger.info("no decoder results for this class and direction yet: evaluating the decoder first")
            dec = trainer.evaluate_decoder(target_class=args.target_class, increase_target_probabilities=increase)
            trainer.rewrite_base_model(dec, target_class=args.target_class, increase_target_probabilities=increase,
                                       output_dir=out)
        print(f"rewritten model saved to {out} (see rewrite_info.json)")
        print(f"measure its blast radius: gradedit blast {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``rewrite``."""
    rw = sub.add_parser("rewrite", help="save the base model rewritten to strengthen or weaken a class")
    rw.add_argument("run_dir", metavar="RUN", help="a folder written by gradedit train")
    rw.add_argument("--target-class", required=True)
    rw.add_argument("--weaken", action="store_true")
    rw.add_argument("--out", required=True, help="new folder for the HF model + tokenizer + rewrite_info.json")
    rw.add_argument("--neutral", metavar="FILE|LANG",
                    help="neutral text for the decoder evaluation a rewrite may need, instead of the run's neutral.json")
    add_device(rw)
    rw.set_defaults(func=_cmd_rewrite)
