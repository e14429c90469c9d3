import json

from gradedit.cli import main


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
