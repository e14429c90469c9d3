import json

from gradedit.cli import main
from pronoun_rows import SUBJECTS, VERBS, pronoun_records


def test_models_list_shows_status(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADEDIT_CACHE", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ["smollm2-135m", "gemma3-270m", "minilm-mlm", "tiny-bert"]:
        assert name in out
    assert "not prepared" in out and "built on load" in out


def test_env_json(capsys):
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["packages"]["torch"].startswith("2.") and "cache_dir" in env and env["torch_threads"] >= 1


def test_score_on_tiny_model(capsys):
    assert main(["score", "--model", "tiny-gpt2", "--text", "He said that she would be late."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cross_entropy"] > 0 and 0 <= out["lms"] <= 1


def test_errors_are_one_line(capsys):
    assert main(["models", "info", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown zoo model" in err and "Traceback" not in err
    assert main(["score", "--model", "/no/such/dir", "--text", "x y"]) == 2
    assert "neither a zoo model" in capsys.readouterr().err


def test_train_command_on_tiny_model(tmp_path, capsys):
    from gradedit.data.schema import PairDataset

    recs = pronoun_records(SUBJECTS[:6], VERBS[:3], rest="left.")
    data = tmp_path / "pairs.csv"
    PairDataset.from_records(recs, target_classes=["masc", "fem"]).save(data)
    out = tmp_path / "run"
    code = main(["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem", "--out", str(out),
                 "--max-steps", "8", "--eval-steps", "4", "--pre-prune", "200"])
    assert code == 0
    text = capsys.readouterr().out
    assert "validation r =" in text and (out / "model" / "config.json").is_file()
    # --pre-prune 200 fixes the trained input space; the saved model is then post-pruned by the config's rule
    run = json.loads((out / "run.json").read_text())
    assert run["input_dim"] == 200
    k = json.loads((out / "train_config.json").read_text())["post_prune_topk"]
    expected = 200 if k is None else min(200, k) if isinstance(k, int) else max(1, round(k * 200))
    assert expected < 200  # the default prunes
    assert json.loads((out / "model" / "config.json").read_text())["input_dim"] == expected
    assert main(["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "nope",
                 "--out", str(out)]) == 2
    assert "['nope'] not in" in capsys.readouterr().err


def test_evaluate_and_rewrite_commands(tmp_path, capsys):
    from gradedit.data.schema import PairDataset

    recs = pronoun_records(SUBJECTS[:6], VERBS[:3], rest="left.")
    data = tmp_path / "pairs.csv"
    PairDataset.from_records(recs, target_classes=["masc", "fem"]).save(data)
    run = tmp_path / "run"
    assert main(["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem", "--out", str(run),
                 "--max-steps", "6", "--eval-steps", "3", "--pre-prune", "300"]) == 0
    # train recorded neutral English text (the data's classes are en-pronouns'); --neutral overrides it
    assert "features.neutral('en'" in json.loads((run / "neutral.json").read_text())["source"]
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("The city is quiet and the house is old.\nThe quick brown fox jumps over the dog.\n")
    assert main(["evaluate", "decoder", str(run), "--target-class", "fem", "--neutral", str(neutral)]) == 0
    out_text = capsys.readouterr().out
    assert "fem" in out_text and f"neutral text: 2 texts from {neutral}" in out_text
    # --search fast reaches the few-pass search (the results record which search chose each point)
    assert main(["evaluate", "decoder", str(run), "--target-class", "fem", "--search", "fast"]) == 0
    assert json.loads((run / "decoder_results.json").read_text())["info"]["search"] == "fast"
    assert main(["evaluate", "decoder", str(run), "--target-class", "fem", "--search", "grid"]) == 0
    assert json.loads((run / "decoder_results.json").read_text())["info"]["search"] == "grid"
    capsys.readouterr()
    out = tmp_path / "rewritten"
    assert main(["rewrite", str(run), "--target-class", "masc", "--weaken", "--out", str(out)]) == 0
    info = json.loads((out / "rewrite_info.json").read_text())
    assert info["direction"] == "weaken" and info["target_class"] == "masc"


def test_edit_then_blast_commands(tmp_path, capsys):
    from gradedit.edits import WeightEdit

    out = tmp_path / "lora"
    assert main(["edit", "lora", "--model", "tiny-llama", "--tokens", "8", "--n-texts", "4", "--steps", "2",
                 "--out", str(out)]) == 0
    edit = WeightEdit.load(out)
    assert edit.metadata["target_language"] == "de" and edit.metadata["remove"] is True and len(edit) > 0
    assert "gradedit blast" in capsys.readouterr().out
    # two components: on tiny-llama's random weights the one best component cannot be scaled usefully
    # (a no-op, exit 3; see test_cli_checks), two can
    assert main(["edit", "scalar", "--model", "tiny-llama", "--tokens", "8", "--n-texts", "4", "--components", "2",
                 "--out", str(tmp_path / "scalar")]) == 0
    meta = WeightEdit.load(tmp_path / "scalar").metadata
    assert meta["components"]
    # --tokens 8 is the whole budget: selection reads the same first 8 German tokens the fit does
    assert meta["target_tokens_used"] == {"selection": 8, "fit": 8, "total": 8}
    assert "de tokens read: selection 8, fit 8; 8 distinct in total" in capsys.readouterr().out
    assert main(["edit", "scalar", "--model", "tiny-llama", "--tokens", "8", "--n-texts", "4", "--components", "2",
                 "--selection-tokens", "all", "--out", str(tmp_path / "scalar-all")]) == 0
    used = WeightEdit.load(tmp_path / "scalar-all").metadata["target_tokens_used"]
    assert used["fit"] == 8 and used["selection"] == used["total"] > 8
    assert WeightEdit.load(out).metadata["target_tokens_used"] == {"fit": 8, "total": 8}
    assert main(["edit", "scalar", "--model", "tiny-llama", "--selection-tokens", "x", "--out", str(tmp_path / "y")]) == 2
    assert main(["blast", str(out), "--model", "tiny-llama", "--langs", "en,de", "--n-texts", "3", "--target", "de",
                 "--out", str(tmp_path / "blast")]) == 0
    assert (tmp_path / "blast" / "report.json").is_file()
    assert main(["edit", "lora", "--model", "tiny-llama", "--tokens", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--tokens" in capsys.readouterr().err


def test_help_names_every_exit_code(capsys):
    """``gradedit --help`` documents each exit code main() can return, signals included."""
    import signal

    from gradedit.cli import app

    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (app.EXIT_SIGINT, app.EXIT_SIGTERM) == (128 + signal.SIGINT, 128 + signal.SIGTERM)
    for code, meaning in [(app.EXIT_OK, "done"), (app.EXIT_INTERNAL, "internal error"),
                          (app.EXIT_USAGE, "usage or input error"), (app.EXIT_NO_EDIT, "no edit found"),
                          (app.EXIT_SIGINT, "interrupted by Ctrl-C (SIGINT)"), (app.EXIT_SIGTERM, "terminated (SIGTERM)")]:
        assert f"{code} {meaning}" in out, (code, meaning)
        assert f"{code} " in app.__doc__  # the module docstring lists it too
