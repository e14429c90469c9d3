"""Bad input gives one clear error (issue 18.1): one case per class of bad input, each asserting the
exception type and that the message names the problem and the fix; and the command line turns a
user error into one line with exit code 2 and a bug into one line with exit code 1 (no traceback
unless --debug)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import gradedit as ge
from gradedit.cli import main
from gradedit.data.schema import PairDataset
from gradedit.decompose import Decomposition, decompose
from gradedit.decompose.config import DecomposeConfig
from gradedit.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    DecompositionError,
    EditError,
    GradeditError,
    TokenError,
    UnsafeName,
)
from gradedit.gradiend.train import TrainConfig, Trainer
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

RECORDS = pronoun_records(SUBJECTS[:4], VERBS[:3])


def _rows(**change: Any) -> list[dict[str, Any]]:
    """The pronoun records with row 0 changed."""
    rows = [dict(r) for r in RECORDS]
    rows[0].update(change)
    return rows


@dataclass
class Ctx:
    tmp: Path
    lm: ge.LanguageModel
    other: ge.LanguageModel

    def model_folder(self, name: str, drop: Callable[[Path], bool] = lambda p: False) -> Path:
        """tiny-gpt2 saved with its tokenizer, minus the files ``drop`` picks."""
        folder = self.tmp / name
        self.lm.model.save_pretrained(folder)
        self.lm.tokenizer.save_pretrained(folder)
        for p in list(folder.iterdir()):
            if drop(p):
                p.unlink()
        return folder


def _is_tokenizer_file(p: Path) -> bool:
    return "token" in p.name or p.name in ("vocab.json", "merges.txt")


def _mismatched_tokenizer(c: Ctx) -> Any:
    folder = c.model_folder("mismatched", _is_tokenizer_file)
    c.other.tokenizer.save_pretrained(folder)  # tiny-llama's tokenizer beside tiny-gpt2's weights
    return ge.load_model(str(folder))


def _truncate(file: Path, keep: int = 120) -> None:
    file.write_bytes(file.read_bytes()[:keep])


def _edit(c: Ctx) -> tuple[ge.WeightEdit, Path]:
    name, p = next((n, p) for n, p in c.lm.model.named_parameters() if p.dim() == 2)
    edit = ge.WeightEdit.dense({name: torch.ones_like(p)}, metadata={"base_model": "tiny-gpt2"})
    return edit, edit.save(c.tmp / "edit")


def _decomposition(c: Ctx) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 6))
    decompose(net, "0", 3, torch.randn(64, 6), steps=2, batch_size=32, objective="layer", seed=0, out=c.tmp / "dec")
    return net, c.tmp / "dec"


def _corrupt_decomposition_json(c: Ctx) -> Any:
    _, folder = _decomposition(c)
    meta = json.loads((folder / "decomposition.json").read_text())
    del meta["config"]
    (folder / "decomposition.json").write_text(json.dumps(meta))
    return Decomposition.load(folder)


def _decomposition_of_other_model(c: Ctx) -> Any:
    _, folder = _decomposition(c)
    other = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 6))
    return Decomposition.load(folder, model=other)


def _truncated_checkpoint(c: Ctx) -> Any:
    data = PairDataset.from_records(RECORDS, ["masc", "fem"])
    cfg = TrainConfig(experiment_dir=str(c.tmp / "run"), max_steps=2, eval_steps=2, pre_prune_topk=50,
                      pre_prune_samples=4, eval_max_size=4)
    Trainer(c.lm, data, ["masc", "fem"], config=cfg).train()
    _truncate(c.tmp / "run" / "seed_0" / "last" / "trainer_state.safetensors")
    return Trainer(c.lm, data, ["masc", "fem"], config=cfg.replace(max_steps=4)).train()


def _file(c: Ctx, name: str, content: bytes) -> Path:
    path = c.tmp / name
    path.write_bytes(content)
    return path


# (id, action, exception type, regex the message must match: the problem ... the fix)
CASES: list[tuple[str, Callable[[Ctx], Any], type[BaseException], str]] = [
    # -- datasets
    ("no-mask", lambda c: PairDataset.from_records(_rows(text="no marker"), ["masc", "fem"]), DataError,
     r"^row 0: text has no \[MASK\] .*Fix: mark the target position with \[MASK\]"),
    ("two-masks", lambda c: PairDataset.from_records(_rows(text="[MASK] or [MASK]"), ["masc", "fem"]), DataError,
     r"^row 0: text has more than one \[MASK\].*Fix: keep exactly one \[MASK\] per row"),
    ("no-rows", lambda c: PairDataset.from_records([], ["masc", "fem"]), DataError,
     r"^from_records got no rows; give at least one dict"),
    ("single-class", lambda c: PairDataset.from_records([r for r in RECORDS if r["factual_class"] == "masc"],
                                                        ["masc", "fem"]), DataError,
     r"^target class 'fem' has no rows; .*Fix: add rows of class 'fem' or choose target_classes"),
    ("unknown-target-class", lambda c: PairDataset.from_records(RECORDS, ["masc", "neuter"]), DataError,
     r"target class 'neuter' has no rows; factual_class values present: \['fem', 'masc'\]"),
    ("label-outside", lambda c: PairDataset.from_records([dict(r, label=2) for r in RECORDS]), DataError,
     r"^row 0: label is not -1, 0 or 1 .*Fix: use \+1/-1"),
    ("unknown-split-value", lambda c: PairDataset.from_records(_rows(split="validation"), ["masc", "fem"]), DataError,
     r"^row 0: unknown split value .*'validation'.*Fix: use one of \['train', 'val', 'test'\]"),
    ("unknown-split-name", lambda c: PairDataset.from_records(RECORDS, ["masc", "fem"]).split("dev"), DataError,
     r"^unknown split 'dev'; use one of \['train', 'val', 'test'\]"),
    ("nan-text", lambda c: PairDataset.from_records(_rows(text=float("nan")), ["masc", "fem"]), DataError,
     r"^row 0: empty text .*Fix: fill in 'text' or drop the row"),
    ("empty-token", lambda c: PairDataset.from_records(_rows(factual=""), ["masc", "fem"]), DataError,
     r"^row 0: empty factual .*Fix: fill in 'factual'"),
    ("list-cell", lambda c: PairDataset.from_records(_rows(text=["The [MASK] x"]), ["masc", "fem"]), DataError,
     r"^row 0: text is a list, dict or bytes, not a string .*Fix: give 'text' as a string"),
    ("missing-column", lambda c: PairDataset.from_records([{k: v for k, v in r.items() if k != "factual"}
                                                            for r in RECORDS], ["masc", "fem"]), DataError,
     r"^missing required column\(s\) \['factual'\].*Fix: add or rename them"),
    ("truncated-csv", lambda c: PairDataset.load(_file(c, "t.csv", b'text,factual\n"The [MASK]\n')), DataError,
     r"t\.csv is not a readable csv file \(ParserError: .*\)\. Fix: check the file is complete"),
    ("binary-csv", lambda c: PairDataset.load(_file(c, "b.csv", b"\xff\xfe\x00\x01")), DataError,
     r"b\.csv is not a readable csv file \(UnicodeDecodeError"),
    ("empty-csv", lambda c: PairDataset.load(_file(c, "e.csv", b"")), DataError,
     r"e\.csv is empty\. Fix: a CSV file with a header row"),
    ("truncated-jsonl", lambda c: PairDataset.load(_file(c, "t.jsonl", b'{"text": "a [MASK]"}\n{"te')), DataError,
     r"t\.jsonl is not a readable jsonl file \(JSONDecodeError"),
    ("jsonl-not-objects", lambda c: PairDataset.load(_file(c, "l.jsonl", b"[1, 2]\n")), DataError,
     r"l\.jsonl line 1 is a JSON list, not an object\. Fix: one JSON object per line"),
    ("corrupt-parquet", lambda c: PairDataset.load(_file(c, "c.parquet", b"PAR1 not parquet")), DataError,
     r"c\.parquet is not a readable parquet file .*Fix: check the file is complete Parquet"),
    ("unknown-format", lambda c: PairDataset.load(_file(c, "d.xlsx", b"x")), DataError,
     r"unknown data format '\.xlsx'; use one of \['\.csv', '\.parquet', '\.jsonl'\]"),
    ("unsafe-class-id", lambda c: PairDataset.from_records(_rows(factual_class="../x"), ["masc", "fem"]), DataError,
     r"^row 0: class id cannot name a file or folder .*'\.\./x'.*Fix: use a class id without '/'"),
    # -- tokens
    ("multi-token-word", lambda c: c.lm.token_id(" hippopotamus"), TokenError,
     r"^' hippopotamus' is not a single token: it splits into \["),
    ("multi-token-rows", lambda c: PairDataset.from_records(_rows(factual=" hippopotamus"), ["masc", "fem"])
     .validate_tokens(c.lm), DataError,
     r"^1 of 3 distinct factual/alternative tokens are not one token of tiny-gpt2:.*Fix: use words that are single"),
    # -- configuration
    ("unknown-train-key", lambda c: TrainConfig.from_dict({"lr": 1e-3}), ConfigError,
     r"^unknown TrainConfig key\(s\) \['lr'\]; known: \[.*'learning_rate'"),
    ("nan-train-lr", lambda c: TrainConfig(learning_rate=float("nan")), ConfigError,
     r"^learning_rate must be finite, got nan"),
    ("wrong-type-train-value", lambda c: TrainConfig.from_dict({"learning_rate": None}), ConfigError,
     r"^learning_rate must be a number, got None \(NoneType\), e\.g\. 0\.001"),
    ("unknown-decompose-key", lambda c: DecomposeConfig.from_dict({"learning_rate": 1}), DecompositionError,
     r"^DecomposeConfig: unknown decomposition option\(s\) \['learning_rate'\]; known: \[.*'lr'"),
    ("wrong-type-decompose-value", lambda c: DecomposeConfig.from_dict({"steps": "abc"}), ConfigError,
     r"^DecomposeConfig: steps must be an int, got 'abc' \(str\)"),
    ("nan-decompose-lr", lambda c: DecomposeConfig.from_dict({"lr": float("inf")}), DecompositionError,
     r"^DecomposeConfig: lr must be finite, got inf"),
    # -- classes
    ("trainer-unknown-class", lambda c: Trainer(c.lm, PairDataset.from_records(RECORDS, ["masc", "fem"]), ["masc", "neuter"],
                                                config=TrainConfig(experiment_dir=str(c.tmp / "r"))),
     ConfigError, r"target class\(es\) \['neuter'\] not in the data; its classes are \['fem', 'masc'\]"),
    # -- model folders
    ("model-without-weights", lambda c: ge.load_model(str(c.model_folder("nw", lambda p: p.suffix == ".safetensors"))),
     ArtifactError, r"nw holds no model weights \(none of model\.safetensors, pytorch_model\.bin\); give a folder "
                    r"saved with model\.save_pretrained\(\)"),
    ("model-without-tokenizer", lambda c: ge.load_model(str(c.model_folder("nt", _is_tokenizer_file))),
     ArtifactError, r"nt holds no tokenizer \(none of tokenizer\.json.*\); give a folder saved with"),
    ("mismatched-tokenizer", _mismatched_tokenizer, ArtifactError,
     r"mismatched: the tokenizer's bos token id is 1, the model's config says 0, so the tokenizer belongs to another "
     r"model; save the model's own tokenizer beside it"),
    ("truncated-model-weights", lambda c: ge.load_model(str(_trunc_folder(c))), ArtifactError,
     r"tw: the weights are corrupt or truncated \(SafetensorError: .*\); give a folder saved with"),
    ("corrupt-model-config", lambda c: ge.load_model(str(_bad_config_folder(c))), ArtifactError,
     r"bc: config\.json is missing or unreadable \(.*\); give a folder saved with"),
    # -- saved artefacts
    ("truncated-edit", lambda c: ge.WeightEdit.load(_trunc_edit(c)), ArtifactError,
     r"edit\.safetensors is corrupt or truncated \(SafetensorError: .*\); save the edit again"),
    ("truncated-decomposition", lambda c: Decomposition.load(_trunc_decomposition(c)), DecompositionError,
     r"^decomposition in .*dec is unreadable \(SafetensorError: .*\); re-run decompose\(\)"),
    ("incomplete-decomposition-json", _corrupt_decomposition_json, DecompositionError,
     r"decomposition\.json is incomplete or inconsistent \(KeyError: 'config'\); re-run decompose\(\)"),
    ("truncated-checkpoint", _truncated_checkpoint, ArtifactError,
     r"trainer_state\.safetensors is not a readable gradedit state file \(SafetensorError: .*\); delete .*seed_0 "
     r"to train this seed from the start"),
    # -- applied to a different model
    ("edit-on-other-model", lambda c: _edit(c)[0].apply_(c.other.model), EditError,
     r"^the model has no parameter 'transformer\.wte\.weight'"),
    ("edit-wrong-shape", lambda c: ge.WeightEdit.dense({"transformer.wte.weight": torch.ones(3, 3)}).apply_(c.lm.model),
     EditError, r"^transformer\.wte\.weight: the dense update has shape \(3, 3\), expected the parameter's shape"),
    ("decomposition-on-other-model", _decomposition_of_other_model, DecompositionError,
     r"^this decomposition is of another model: the weights of '0' differ .*; use the model it was trained on"),
    # -- non-finite numbers
    ("nan-edit-scale", lambda c: _edit(c)[0].scaled(float("nan")), EditError, r"^scale must be finite, got nan"),
    ("inf-edit-scale", lambda c: ge.WeightEdit.dense({"w": torch.ones(2)}, scale=float("inf")), EditError,
     r"^scale must be finite, got inf"),
    # -- empty corpora
    ("no-corpora", lambda c: ge.blast_radius(c.lm, _edit(c)[0], {}), DataError,
     r"^corpora must be a non-empty mapping such as \{'en': \[\.\.\.\]"),
    ("empty-corpus", lambda c: ge.blast_radius(c.lm, _edit(c)[0], {"en": []}), DataError,
     r"^corpus 'en' is empty; give it at least one text or leave it out"),
    ("blank-corpus", lambda c: ge.blast_radius(c.lm, _edit(c)[0], {"en": ["", " "]}), DataError,
     r"^corpus 'en' holds only blank texts \(2\); give it texts with words in them"),
    # -- names that become files
    ("unsafe-name", lambda c: ge._files.safe_name("a/b", "class id"), UnsafeName,
     r"^class id 'a/b' holds '/', so it cannot name a file or folder; rename it"),
]


def _trunc_folder(c: Ctx) -> Path:
    folder = c.model_folder("tw")
    _truncate(folder / "model.safetensors")
    return folder


def _bad_config_folder(c: Ctx) -> Path:
    folder = c.model_folder("bc")
    (folder / "config.json").write_text("{not json")
    return folder


def _trunc_edit(c: Ctx) -> Path:
    _, folder = _edit(c)
    _truncate(folder / "edit.safetensors", 200)
    return folder


def _trunc_decomposition(c: Ctx) -> Path:
    _, folder = _decomposition(c)
    _truncate(folder / "decomposition.safetensors", 300)
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_one_clear_error(case, tiny_gpt2, tiny_llama, tmp_path) -> None:
    _, action, kind, pattern = case
    with pytest.raises(kind) as info:
        action(Ctx(tmp_path, tiny_gpt2, tiny_llama))
    message = str(info.value)
    assert message.strip() and "\n" not in message.strip() or kind is DataError, message
    assert re.search(pattern, message, re.S), f"{type(info.value).__name__}: {message}"
    if kind is not ValueError:  # the library's own errors: one base class (the CLI's exit code 2)
        assert isinstance(info.value, GradeditError)


# -- the command line: one line, exit 2 for the user's errors and 1 for bugs --------------------------------
def _stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and " INFO: " not in ln]


def test_cli_user_error_is_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    data = tmp_path / "pairs.csv"
    data.write_text('text,factual,alternative,factual_class,alternative_class,label,split\n'
                    '"no marker", he, she,masc,fem,1,train\n')
    code = main(["train", "--model", "tiny-gpt2", "--data", str(data), "--classes", "masc", "fem",
                 "--out", str(tmp_path / "run"), "--neutral", str(data), "--max-steps", "2"])
    lines = _stderr_lines(capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("gradedit: error: row 0: text has no [MASK]"), lines
    assert "Traceback" not in "".join(lines)


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf")])
def test_cli_refuses_non_finite_numbers_before_anything_loads(flag, value, tmp_path, capsys) -> None:
    code = main(["train", "--model", "tiny-gpt2", "--data", "en-pronouns", "--classes", "masc", "fem",
                 "--out", str(tmp_path / "run"), flag, value])
    err = capsys.readouterr().err
    assert code == 2
    assert f"argument {flag}: '{value}' is not a finite number; give e.g. 1e-3" in err
    assert not (tmp_path / "run").exists()


def test_cli_non_finite_config_value_is_refused(tmp_path, capsys) -> None:
    config = tmp_path / "cfg.json"
    config.write_text('{"learning_rate": Infinity}')
    code = main(["train", "--model", "tiny-gpt2", "--data", "en-pronouns", "--classes", "masc", "fem",
                 "--out", str(tmp_path / "run"), "--config", str(config)])
    lines = _stderr_lines(capsys)
    assert code == 2 and lines == [f"gradedit: error: --config {config}: learning_rate must be finite numbers, got inf"]


def test_cli_bug_is_one_line_with_exit_code_1_and_a_traceback_only_with_debug(tmp_path, capsys, monkeypatch) -> None:
    from gradedit.cli import env

    def boom(args: Any) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(env, "_cmd_env", boom, raising=False)
    parser_default = {"func": boom}
    import gradedit.cli.app as app

    original = app.build_parser

    def build() -> Any:
        p = original()
        for action in p._subparsers._group_actions:  # type: ignore[union-attr]
            action.choices["env"].set_defaults(**parser_default)
        return p

    monkeypatch.setattr(app, "build_parser", build)
    assert main(["env"]) == 1
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("gradedit: internal error: ZeroDivisionError: a bug (a bug: rerun "
                                                   "with --debug"), lines
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "env"])


def test_model_folder_refusals_leave_a_good_folder_loadable(tiny_gpt2, tmp_path) -> None:
    """The checks refuse only what is broken: the same folder with all its files loads and matches."""
    folder = Ctx(tmp_path, tiny_gpt2, tiny_gpt2).model_folder("good")
    lm = ge.load_model(str(folder))
    assert len(lm.tokenizer) == len(tiny_gpt2.tokenizer)
    for (n, a), (_, b) in zip(lm.model.state_dict().items(), tiny_gpt2.model.state_dict().items()):
        assert torch.equal(a, b), n
    shutil.rmtree(folder)
