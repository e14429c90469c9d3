"""GRADIEND end to end on smollm2-135m with the built-in en-pronouns feature.

    python examples/pronouns_smollm2.py runs/pronouns --source diff --steps 60

Trains (pre-pruned to 1%), evaluates the encoder and the decoder (strengthen both classes, weaken
masc), then checks the selected rewrites on held-out masc prompts and held-out neutral text, and
writes RUN_DIR/summary.json. The numbers in docs/results.md come from this script.
"""

import argparse
import json
import logging

import gradedit as ge
from gradedit import metrics
from gradedit.data import features


def probe(lm, prompts, held_out):
    """Mean P(' he') and P(' she') after masc prompts, and perplexity of held-out neutral text."""
    p = metrics.next_token_logprobs(lm, prompts, [lm.token_id(" he"), lm.token_id(" she")]).exp()
    return {"P_he_on_masc": float(p[:, 0].mean()), "P_she_on_masc": float(p[:, 1].mean()),
            "ppl_neutral_heldout": metrics.perplexity(lm, held_out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--source", default="diff", choices=["factual", "alternative", "diff"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--selector", default="lms", help="lms | perplexity | product")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    lm = ge.load_model("smollm2-135m")
    data = features.build("en-pronouns", lm)
    neutral = features.neutral("en")
    config = ge.TrainConfig(experiment_dir=args.run_dir, source=args.source, target="diff", max_steps=args.steps,
                            eval_steps=20, pre_prune_topk=0.01, pre_prune_samples=16, train_batch_size=4,
                            learning_rate=args.lr, eval_max_size=64)
    trainer = ge.Trainer(lm, data, ["masc", "fem"], neutral=neutral, config=config)
    trainer.train()
    trainer.plot_training_convergence()
    enc = trainer.evaluate_encoder(split="test", plot=True)
    dec = trainer.evaluate_decoder(selector=args.selector, plot=True)  # uses neutral[:64]
    weak = trainer.evaluate_decoder(target_class="masc", increase_target_probabilities=False,
                                    selector=args.selector, plot=True)

    test = data.split("test")
    masc_prompts = [p for p, c in zip(test.prompts("clm"), test.to_frame()["factual_class"]) if c == "masc"]
    held_out = neutral[64:164]  # not used for selection
    summary = {"train": trainer.seed_results[0].to_dict(),
               "encoder": {"r": enc.correlation, "accuracy": enc.accuracy, "accuracy_binary": enc.accuracy_binary,
                           "mean_by_class": enc.mean_by_class},
               "selected": {k: vars(v) for k, v in [*dec.items(), *weak.items()]},
               "check_base": probe(lm, masc_prompts, held_out)}
    model = trainer.get_model()
    for key, sel in [("fem", dec["fem"]), ("masc", dec["masc"]), ("masc_weaken", weak["masc_weaken"])]:
        with model.applied(sel.learning_rate, sel.feature_factor):
            summary[f"check_{key}"] = probe(lm, masc_prompts, held_out)
    with open(f"{args.run_dir}/summary.json", "w") as fh:
        json.dump(summary, fh, indent=2, default=str)
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
