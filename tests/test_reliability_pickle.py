"""Nothing is loaded with pickle and no model code is run (issue 18.3): the GRADIEND resume state is
safetensors + JSON, old pickle checkpoints and planted pickle payloads are refused without being
unpickled, the German caches are JSON (a pickle there is rebuilt over, never read), ``load_model``
never trusts remote code, and a source scan keeps it that way."""

from __future__ import annotations

import json
import logging
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch

from gradedit._files import load_tree, save_tree_atomic
from gradedit.data.schema import PairDataset
from gradedit.errors import ArtifactError
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.loop import OLD_STATE_FILE, STATE_FILE
from gradedit.gradiend.train.trainer import Trainer
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

SRC = Path(__file__).resolve().parents[1] / "src" / "gradedit"

#: source patterns that would load (or write for loading) a pickle, or run a model's own code
FORBIDDEN = {
    "weights_only=False": r"weights_only\s*=\s*False",
    "torch.load without weights_only=True": r"torch\.load\((?![^)]*weights_only\s*=\s*True)",
    "import pickle": r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle|shelve|marshal)\b",
    "pickle.load": r"\bpickle\.loads?\(",
    "allow_pickle=True": r"allow_pickle\s*=\s*True",
    "torch.save (a pickle)": r"\btorch\.save\(",
    "trust_remote_code=True": r"trust_remote_code\s*=\s*True",
}


def scan(text: str) -> list[str]:
    """Names of the forbidden patterns found in ``text``."""
    return [name for name, pat in FORBIDDEN.items() if re.search(pat, text, flags=re.MULTILINE)]


def test_scanner_finds_each_planted_pattern() -> None:
    planted = {
        "weights_only=False": "x = torch.load(f, weights_only=False)",
        "torch.load without weights_only=True": "x = torch.load(f, map_location='cpu')",
        "import pickle": "    import pickle",
        "pickle.load": "obj = pickle.load(fh)",
        "allow_pickle=True": "a = np.load(f, allow_pickle=True)",
        "torch.save (a pickle)": "torch.save(state, path)",
        "trust_remote_code=True": "AutoModel.from_pretrained(p, trust_remote_code=True)",
    }
    for name, line in planted.items():
        assert name in scan(line), name
    assert scan("x = torch.load(f, map_location='cpu', weights_only=True)\nimport pickletools_not\n") == []


def test_source_loads_no_pickle_and_trusts_no_remote_code() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    hits = {str(f.relative_to(SRC)): found for f in files if (found := scan(f.read_text(encoding="utf-8")))}
    assert hits == {}


# -- the GRADIEND resume state ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pronouns() -> PairDataset:
    return PairDataset.from_records(pronoun_records(SUBJECTS[:6], VERBS[:3]), target_classes=["masc", "fem"])


def _cfg(run: Path, **kw: object) -> TrainConfig:
    base: dict = dict(experiment_dir=str(run), max_steps=10, eval_steps=5, pre_prune_topk=300, pre_prune_samples=8,
                      eval_max_size=8)
    base.update(kw)
    return TrainConfig(**base)


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pickle payload ran"))


def test_the_payload_runs_when_unpickled(tmp_path) -> None:
    """The oracle of the refusal tests: unpickling the payload does create the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.read_text() == "pickle payload ran"


def test_resume_state_is_safetensors_and_resumes_bit_identically(tiny_gpt2, pronouns, tmp_path) -> None:
    Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "cut")).train()
    last = tmp_path / "cut" / "seed_0" / "last"
    names = {p.name for p in last.iterdir()}
    assert STATE_FILE in names and OLD_STATE_FILE not in names
    assert all(n.endswith((".json", ".safetensors")) for n in names), names
    raw = (last / STATE_FILE).read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_len])
    assert "gradedit_tree" in header["__metadata__"]  # a safetensors header, not a pickle
    state = load_tree(last / STATE_FILE, "fix")
    assert state["step"] == 10 and state["seed"] == 0 and len(state["history"]) == 2
    assert set(state["optimizer"]["state"]) == {0, 1, 2, 3}  # int keys survive JSON
    assert all(isinstance(v, torch.Tensor) for st in state["optimizer"]["state"].values() for v in st.values())

    full = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "full", max_steps=20)).train()
    tr = Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "cut", max_steps=20))
    resumed = tr.train()
    assert [h["step"] for h in tr.seed_results[0].history] == [5, 10, 15, 20]
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def _trained_once(lm, data: PairDataset, run: Path) -> Path:
    Trainer(lm, data, ["masc", "fem"], config=_cfg(run, max_steps=5)).train()
    return run / "seed_0" / "last"


def test_planted_pickle_in_the_state_file_is_refused_unread(tiny_gpt2, pronouns, tmp_path) -> None:
    last = _trained_once(tiny_gpt2, pronouns, tmp_path / "run")
    marker = tmp_path / "ran"
    (last / STATE_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ArtifactError, match=r"not a readable gradedit state file .*; delete .*seed_0 to train") as err:
        Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "run")).train()
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_old_pickle_checkpoint_is_refused_unread(tiny_gpt2, pronouns, tmp_path) -> None:
    last = _trained_once(tiny_gpt2, pronouns, tmp_path / "run")
    marker = tmp_path / "ran"
    (last / STATE_FILE).unlink()
    (last / OLD_STATE_FILE).write_bytes(pickle.dumps({"step": 5, "x": _Payload(marker)}))
    with pytest.raises(ArtifactError, match=r"trainer_state.pt is a pickle checkpoint of an older gradedit, which is "
                                            r"never loaded .*; delete .*seed_0") as err:
        Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "run")).train()
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # without resume the seed folder is simply trained again
    Trainer(tiny_gpt2, pronouns, ["masc", "fem"], config=_cfg(tmp_path / "run", resume=False)).train()
    assert not (last / OLD_STATE_FILE).exists() and (last / STATE_FILE).is_file() and not marker.exists()


def test_state_tree_round_trip_and_refusals(tmp_path) -> None:
    tree = {"a": [1, 2.5, None, True, "s"], "t": (torch.arange(3), torch.tensor(2.0)), 3: {"$x": float("inf")},
            ("k", 1): torch.zeros(0, 2, dtype=torch.bfloat16)}
    save_tree_atomic(tmp_path / "s.safetensors", tree)
    back = load_tree(tmp_path / "s.safetensors", "fix")
    assert back.keys() == tree.keys() and back["a"] == tree["a"] and back[3] == {"$x": float("inf")}
    assert isinstance(back["t"], tuple) and torch.equal(back["t"][0], torch.arange(3))
    assert back["t"][1].shape == () and back[("k", 1)].dtype == torch.bfloat16 and back[("k", 1)].shape == (0, 2)
    with pytest.raises(TypeError, match="cannot save a object"):
        save_tree_atomic(tmp_path / "b.safetensors", {"x": object()})
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "s.safetensors").read_bytes()[:40])
    with pytest.raises(ArtifactError, match="cut.safetensors is not a readable gradedit state file.*; redo"):
        load_tree(tmp_path / "cut.safetensors", "redo")
    with pytest.raises(FileNotFoundError, match="missing; redo"):
        load_tree(tmp_path / "none.safetensors", "redo")


# -- German caches --------------------------------------------------------------------------------------


def test_german_caches_are_json_and_planted_pickles_are_rebuilt_over(tmp_path, monkeypatch, caplog) -> None:
    pytest.importorskip("german_nouns", reason="German morphology is optional: pip install --no-deps german-nouns==1.2.5")
    pytest.importorskip("HanTa", reason="German morphology is optional: pip install --no-deps hanta==1.2.1")
    from gradedit.data import german

    monkeypatch.setenv("GRADEDIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "morphology"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    version = __import__("importlib.metadata").metadata.version("german-nouns")
    payload = pickle.dumps(_Payload(marker))
    (folder / f"german-nouns-{version}-v1.pkl").write_bytes(payload)  # the old cache name: never opened
    lex_file = folder / f"german-nouns-{version}-v{german.LEXICON_FORMAT}.json"
    lex_file.write_bytes(payload)  # a pickle where the JSON should be: rebuilt, never unpickled
    with caplog.at_level(logging.WARNING, logger="gradedit.data.german"):
        built = german.load_lexicon.__wrapped__()
    assert "rebuilding the unreadable lexicon cache" in caplog.text
    assert json.loads(lex_file.read_text(encoding="utf-8"))["format"] == german.LEXICON_FORMAT
    again = german.load_lexicon.__wrapped__()
    assert again.forms == built.forms and again.cells("Häusern") == {"pl_dat"}

    sentences = ["Der Mann sieht den Hund.", "Die Frau gibt dem Kind das Buch."]
    tagger = german.GermanArticleTagger(lexicon=None)
    tagger._lexicon = again  # the default tagger (disk cache on) with the lexicon already loaded
    path = tagger._cache_path(sentences)
    assert path is not None and path.suffix == ".json"
    path.write_bytes(payload)
    fresh = tagger.analyze_many(sentences)
    assert fresh == [tagger._analyze(s) for s in sentences] and fresh[0][0].cell == "masc_nom"
    json.loads(path.read_text(encoding="utf-8"))  # rewritten as JSON
    monkeypatch.setattr(tagger, "_analyze", lambda s: pytest.fail("the JSON cache was not used"))
    assert tagger.analyze_many(sentences) == fresh
    assert not marker.exists()


# -- trust_remote_code -----------------------------------------------------------------------------------


def test_load_model_never_runs_model_code(tiny_gpt2, tmp_path) -> None:
    from gradedit.models import load_model

    folder = tmp_path / "m"
    tiny_gpt2.model.save_pretrained(folder)
    tiny_gpt2.tokenizer.save_pretrained(folder)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
                                    "from transformers import GPT2Config as EvilConfig, GPT2LMHeadModel as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil.EvilConfig", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    # a known architecture with code beside it: transformers' own class is used, the code is not run
    lm = load_model(folder)
    assert type(lm.model).__name__ == "GPT2LMHeadModel" and not marker.exists()
    # an architecture only the shipped code knows: refused in one line, the code is not run
    config["model_type"] = "evil-model"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="needs its own model code .* which gradedit never runs") as err:
        load_model(folder)
    assert "\n" not in str(err.value) and not marker.exists()
