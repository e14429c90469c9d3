"""The ``gradedit`` command line (argparse). Each sub-command is a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def _cmd_models_list(args: argparse.Namespace) -> int:
    from .models import zoo

    rows = [("name", "kind", "status", "description")]
    for e in zoo.entries():
        if not e.needs_prepare:
            status = "built on load"
        elif e.is_prepared():
            status = "prepared"
        else:
            status = f"not prepared (~{e.approx_minutes:g} min)"
        rows.append((e.name, e.kind, status, e.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print(f"\ncache: {zoo.model_dir('x').parent}   prepare with: gradedit models prepare NAME")
    return 0


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    from .models import zoo

    for name in args.names:
        path = zoo.prepare(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def _cmd_models_info(args: argparse.Namespace) -> int:
    from .models import zoo

    e = zoo.entry(args.name)
    info: dict[str, object] = {"name": e.name, "kind": e.kind, "description": e.description, "source": e.source,
                               "install": e.install, "prepared": e.is_prepared()}
    if e.path is not None:
        info["path"] = str(e.path)
        src = e.path / zoo.SOURCE_FILE
        if src.is_file():
            info["provenance"] = json.loads(src.read_text())
    if e.is_prepared() and args.load:
        from .models import load_model

        lm = load_model(e.name)
        info.update({"architecture": type(lm.model).__name__, "parameters": sum(p.numel() for p in lm.model.parameters()),
                     "vocab_size": lm.vocab_size, "pad_token": lm.tokenizer.pad_token})
    print(json.dumps(info, indent=2))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from .envinfo import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.file:
        texts += [ln.strip() for ln in Path(args.file).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not texts:
        raise SystemExit("error: give --text TEXT (repeatable) or --file FILE (one text per line)")
    return texts


def _cmd_score(args: argparse.Namespace) -> int:
    from . import metrics
    from .models import load_model

    lm = load_model(args.model)
    texts = _read_texts(args)
    ce = metrics.cross_entropy(lm, texts)
    out = {"model": args.model, "texts": len(texts), "cross_entropy": ce, "perplexity": float(2.718281828459045**ce),
           "lms": metrics.lms(lm, texts)}
    print(json.dumps(out, indent=2))
    return 0


def _load_data(spec: str, lm: object) -> object:
    """A PairDataset from a file/folder, or from a built-in feature name."""
    from .data.schema import PairDataset

    if Path(spec).exists():
        return PairDataset.load(spec)
    from .data import features

    if features.exists(spec):
        return features.build(spec, lm)  # type: ignore[arg-type]
    raise FileNotFoundError(f"{spec!r} is neither a data file/folder nor a built-in feature ({', '.join(features.names())})")


def _cmd_train(args: argparse.Namespace) -> int:
    from .models import load_model
    from .train import TrainConfig, Trainer

    values: dict[str, object] = json.loads(Path(args.config).read_text()) if args.config else {}
    flags = {"max_steps": args.max_steps, "eval_steps": args.eval_steps, "source": args.source,
             "target": args.target, "learning_rate": args.lr, "pre_prune_topk": args.pre_prune,
             "max_seeds": args.seeds, "train_batch_size": args.batch_size}
    values.update({k: v for k, v in flags.items() if v is not None})
    values["experiment_dir"] = args.out
    config = TrainConfig.from_dict(values)
    lm = load_model(args.model)
    data = _load_data(args.data, lm)
    trainer = Trainer(lm, data, args.classes, config=config)  # type: ignore[arg-type]
    fm = trainer.train()
    res = max(trainer.seed_results, key=lambda r: abs(r.correlation))
    try:
        trainer.plot_training_convergence()
    except ImportError as err:
        logger.warning("no convergence plot: %s", err)
    print(f"feature model: {Path(args.out) / 'model'} (input dim {fm.input_dim:,})")
    print(f"validation r = {res.correlation:+.3f}, class means {res.class_means}, converged: {res.converged}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .train import Trainer

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


def _cmd_rewrite(args: argparse.Namespace) -> int:
    from .train import Trainer

    trainer = Trainer.load(args.run_dir)
    increase = not args.weaken
    try:
        trainer.rewrite_base_model(target_class=args.target_class, increase_target_probabilities=increase,
                                   output_dir=args.out)
    except (KeyError, FileNotFoundError):
        logger.info("no decoder results for this class and direction yet: evaluating the decoder first")
        dec = trainer.evaluate_decoder(target_class=args.target_class, increase_target_probabilities=increase)
        trainer.rewrite_base_model(dec, target_class=args.target_class, increase_target_probabilities=increase,
                                   output_dir=args.out)
    print(f"rewritten model saved to {args.out} (see rewrite_info.json)")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from .data import features
    from .models import load_model

    lm = load_model(args.model) if args.model else None
    ds = features.build(args.name, lm, seed=args.seed)
    if args.out:
        ds.save(args.out)
        print(f"saved {len(ds)} rows to {args.out}")
    print(features.describe(ds))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.smoke:
        from .demo_smoke import run_smoke

        for line in run_smoke(args.model or "smollm2-135m"):
            print(line)
        return 0
    if args.which == "german":
        from .demo.german import GermanDemoConfig
        from .demo.german import run as run_german

        gcfg = GermanDemoConfig(out_dir=args.out or "runs/demo-german", **({"model": args.model} if args.model else {}))
        result = run_german(gcfg)
    else:
        from .demo.pronouns import PronounDemoConfig
        from .demo.pronouns import run as run_pronouns

        pcfg = PronounDemoConfig(out_dir=args.out or "runs/demo", **({"model": args.model} if args.model else {}),
                                 **({"steps": args.steps} if args.steps else {}))
        result = run_pronouns(pcfg)
    for line in result.headline:
        print(line)
    print(f"report: {result.report.resolve()}")
    return 0


def _topk(value: str) -> float | int:
    number = float(value)
    return int(number) if number >= 1 and number.is_integer() and "." not in value else number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradedit", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list, prepare or describe zoo models")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="every zoo model and whether it is prepared").set_defaults(func=_cmd_models_list)
    prep = msub.add_parser("prepare", help="build a zoo model's HF folder in the cache (once)")
    prep.add_argument("names", nargs="+", metavar="NAME")
    prep.add_argument("--force", action="store_true", help="rebuild even if prepared")
    prep.set_defaults(func=_cmd_models_prepare)
    info = msub.add_parser("info", help="describe one zoo model")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--load", action="store_true", help="also load it and report parameters and vocabulary")
    info.set_defaults(func=_cmd_models_info)

    env = sub.add_parser("env", help="versions, threads, cache dir and prepared models")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=_cmd_env)

    score = sub.add_parser("score", help="cross-entropy, perplexity and LMS of a model on texts")
    score.add_argument("--model", required=True, help="zoo name, local HF folder or hub id")
    score.add_argument("--text", action="append", help="a text (repeatable)")
    score.add_argument("--file", help="a file with one text per line")
    score.set_defaults(func=_cmd_score)

    train = sub.add_parser("train", help="train a GRADIEND feature model")
    train.add_argument("--model", required=True, help="zoo name, local HF folder or hub id")
    train.add_argument("--data", required=True, help="PairDataset file/folder, or a built-in feature name")
    train.add_argument("--classes", nargs=2, required=True, metavar=("A", "B"), help="target classes (A encodes +)")
    train.add_argument("--out", required=True, help="experiment directory")
    train.add_argument("--config", help="JSON file with TrainConfig fields (flags override it)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--eval-steps", type=int)
    train.add_argument("--source", choices=["factual", "alternative", "diff"])
    train.add_argument("--target", choices=["factual", "alternative", "diff"])
    train.add_argument("--lr", type=float, help="learning rate of the encoder-decoder")
    train.add_argument("--batch-size", type=int, help="gradient examples per step")
    train.add_argument("--pre-prune", type=_topk, help="keep the top entries before training: a count or a fraction")
    train.add_argument("--seeds", type=int, help="max seeds to try")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="evaluate a trained run's encoder or decoder")
    ev.add_argument("what", choices=["encoder", "decoder"])
    ev.add_argument("run_dir")
    ev.add_argument("--target-class", help="decoder: only this class (default: both)")
    ev.add_argument("--weaken", action="store_true", help="decoder: evaluate weakening instead of strengthening")
    ev.add_argument("--split", default=None,
                    help="data split to score (encoder default: test; decoder default: val, so test stays held out)")
    ev.add_argument("--plot", action="store_true", help="also write the figure into the run directory")
    ev.set_defaults(func=_cmd_evaluate)

    rw = sub.add_parser("rewrite", help="save the base model rewritten to strengthen or weaken a class")
    rw.add_argument("run_dir")
    rw.add_argument("--target-class", required=True)
    rw.add_argument("--weaken", action="store_true")
    rw.add_argument("--out", required=True, help="new folder for the HF model + tokenizer + rewrite_info.json")
    rw.set_defaults(func=_cmd_rewrite)

    data = sub.add_parser("data", help="build feature datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    build = dsub.add_parser("build", help="build a built-in feature's PairDataset and print counts")
    build.add_argument("name")
    build.add_argument("--model", help="validate target words as single tokens of this model")
    build.add_argument("--out", help="save to this .csv/.parquet/.jsonl")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_cmd_data_build)

    from . import cli_blast, cli_edit

    cli_edit.register(sub)
    cli_blast.register(sub)

    demo = sub.add_parser("demo", help="the main job: GRADIEND he/she on smollm2-135m (or the German-removal study)")
    demo.add_argument("which", nargs="?", default="pronouns", choices=["pronouns", "german"],
                      help="pronouns (default; smollm2-135m) or german (remove German from gemma3-270m)")
    demo.add_argument("--model", default=None, help="zoo name or HF folder (default: the demo's own model)")
    demo.add_argument("--out", default=None, help="output folder (default runs/demo or runs/demo-german)")
    demo.add_argument("--steps", type=int, default=None, help="GRADIEND training steps (pronouns demo)")
    demo.add_argument("--smoke", action="store_true", help="only load the model, generate and score (seconds)")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as err:
        from .models.zoo import ModelPackageMissing

        if args.verbose and not isinstance(err, ModelPackageMissing):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"gradedit: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
