"""Fuzzing (issue 18.5): random rows, random files and random config mappings. Whatever they hold,
PairDataset loading/creation and ``DecomposeConfig.from_dict`` raise only gradedit's own errors, and
``TrainConfig.from_dict`` only ``ConfigError`` (wrong types and non-finite numbers included); what is accepted is
valid (exactly one ``[MASK]``, labels in {-1, 0, 1}, known splits) and survives a save/load round
trip with the same fingerprint."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradedit.data.columns import MASK, SPLITS
from gradedit.data.schema import PairDataset
from gradedit.decompose.config import DecomposeConfig
from gradedit.errors import ConfigError, DecomposeConfigError, GradeditError
from gradedit.gradiend.train import TrainConfig

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from([MASK, f"a {MASK} b", f"{MASK}{MASK}", "train", "val",
                                                           "test", "masc", "fem", " he", " she", "../x", "a\x00"]))
cells = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=3), scalars, max_size=2),
                  st.binary(max_size=4))
COLUMN_NAMES = ["text", "factual", "alternative", "factual_class", "alternative_class", "label", "split", "masked",
                "source"]
rows = st.lists(st.dictionaries(st.sampled_from(COLUMN_NAMES), cells, max_size=9), max_size=6)
good_row = st.fixed_dictionaries({
    "text": st.sampled_from([f"The man said {MASK} left.", f"{MASK} was there", f"x {MASK}", "no mask",
                             f"{MASK} and {MASK}"]),
    "factual": st.sampled_from([" he", " she", "", " it"]),
    "alternative": st.sampled_from([" he", " she", " it"]),
    "factual_class": st.sampled_from(["masc", "fem", "neut", "a/b"]),
    "alternative_class": st.sampled_from(["masc", "fem", "neut"]),
    "split": st.sampled_from([*SPLITS, "dev"]),
})
targets = st.one_of(st.none(), st.just(["masc", "fem"]), st.lists(st.sampled_from(["masc", "fem", "neut", "x"]),
                                                                  max_size=3))


def _check_valid(ds: PairDataset) -> None:
    frame = ds.to_frame()
    assert all(t.count(MASK) == 1 for t in frame["text"])
    assert set(frame["label"]) <= {-1, 0, 1} and set(frame["split"]) <= set(SPLITS)
    for col in ("text", "factual", "alternative", "factual_class", "alternative_class"):
        assert all(isinstance(v, str) and v for v in frame[col]), col


def _accepted_or_refused(records: list[dict[str, Any]], target_classes: Any) -> None:
    """Either a gradedit error or a valid dataset: nothing else may escape."""
    try:
        ds = PairDataset.from_records(records, target_classes)
    except GradeditError:
        return
    _check_valid(ds)


@SETTINGS
@given(records=rows, target_classes=targets)
def test_from_records_raises_only_gradedit_errors(records: list[dict[str, Any]], target_classes: Any) -> None:
    _accepted_or_refused(records, target_classes)


@SETTINGS
@given(records=st.lists(good_row, min_size=1, max_size=8), target_classes=targets)
def test_almost_valid_rows_are_accepted_or_refused_cleanly(records: list[dict[str, Any]], target_classes: Any) -> None:
    _accepted_or_refused(records, target_classes)


@SETTINGS
@given(records=st.lists(good_row, min_size=1, max_size=6), suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]),
       cut=st.integers(0, 400))
def test_saved_then_damaged_files_load_or_raise_gradedit_errors(records, suffix, cut, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    try:
        ds = PairDataset.from_records(records)
    except GradeditError:
        return
    path = ds.save(folder / f"d{suffix}")
    assert PairDataset.load(path).fingerprint() == ds.fingerprint()  # a round trip keeps every value
    path.write_bytes(path.read_bytes()[:cut])  # truncated anywhere
    try:
        _check_valid(PairDataset.load(path))
    except GradeditError:
        pass


@SETTINGS
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_random_bytes_load_or_raise_gradedit_errors(content: bytes, suffix: str, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("bytes") / f"d{suffix}"
    path.write_bytes(content)
    try:
        _check_valid(PairDataset.load(path, ["masc", "fem"]))
    except GradeditError:
        pass


@SETTINGS
@given(text=st.lists(st.sampled_from([*'ab,"\n[] \x00\\', MASK, " he", "masc", "1", "train"]), max_size=40).map("".join))
def test_random_csv_text_loads_or_raises_gradedit_errors(text: str, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("csv") / "d.csv"
    path.write_text("text,factual,alternative,factual_class,alternative_class,label,split\n" + text, encoding="utf-8")
    try:
        _check_valid(PairDataset.load(path))
    except GradeditError:
        pass


config_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True),
                          st.text(max_size=8), st.lists(st.text(max_size=4), max_size=2),
                          st.sampled_from(["diff", "factual", "layer", "output", "cosine", "data", "auto"]))
#: values of the field's own type (a number for a number field): what a JSON config of numbers holds
numbers = st.one_of(st.integers(-5, 500), st.floats(allow_nan=True, allow_infinity=True))


def _config_dicts(cls: type, values: st.SearchStrategy[Any] = config_values) -> st.SearchStrategy[dict[str, Any]]:
    names = [*cls.__dataclass_fields__, "unknown_key", "lr"]
    return st.dictionaries(st.sampled_from(names), values, max_size=5)


def _numeric_fields(cls: type) -> list[str]:
    default = cls()
    return [n for n in cls.__dataclass_fields__
            if isinstance(getattr(default, n), (int, float)) and not isinstance(getattr(default, n), bool)]


def _check_train(values: dict[str, Any]) -> None:
    try:
        cfg = TrainConfig.from_dict(values)
    except ConfigError as err:
        assert str(err).strip() and "\n" not in str(err)
        return
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # what is accepted round-trips
    assert cfg.learning_rate > 0 and cfg.max_steps >= 1


def _check_decompose(values: dict[str, Any]) -> None:
    try:
        cfg = DecomposeConfig.from_dict(values)
    except DecomposeConfigError as err:
        assert str(err).strip()
        return
    assert DecomposeConfig.from_dict(cfg.to_dict()) == cfg
    assert all(math.isfinite(v) for v in cfg.to_dict().values() if isinstance(v, float))


@SETTINGS
@given(values=st.dictionaries(st.sampled_from(_numeric_fields(TrainConfig)), numbers, max_size=5))
def test_train_config_numbers_raise_only_config_errors(values: dict[str, Any]) -> None:
    _check_train(values)


@SETTINGS
@given(values=st.dictionaries(st.sampled_from([*_numeric_fields(DecomposeConfig), "unknown_key"]), numbers,
                              max_size=5))
def test_decompose_config_numbers_raise_only_gradedit_errors(values: dict[str, Any]) -> None:
    _check_decompose(values)


@settings(SETTINGS, report_multiple_bugs=False)
@given(values=_config_dicts(TrainConfig))
def test_train_config_any_values_raise_only_config_errors(values: dict[str, Any]) -> None:
    _check_train(values)


@settings(SETTINGS, report_multiple_bugs=False)
@given(values=_config_dicts(DecomposeConfig))
def test_decompose_config_any_values_raise_only_gradedit_errors(values: dict[str, Any]) -> None:
    _check_decompose(values)


@pytest.mark.parametrize("bad", [{"max_steps": "5"}, {"learning_rate": -1.0}, {"lr": 1}, {"source": "grad"}])
def test_train_config_errors_name_the_field(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict(bad)
    assert re.search(next(iter(bad)) if next(iter(bad)) != "lr" else "'lr'", str(info.value))


def test_fuzz_helpers_recognise_valid_and_invalid(tmp_path: Path) -> None:
    """The property tests' oracle itself: a valid dataset passes ``_check_valid``, a hand-broken one fails it."""
    ds = PairDataset.from_records([{"text": f"x {MASK}", "factual": " he", "alternative": " she",
                                    "factual_class": "masc", "alternative_class": "fem", "split": "train"},
                                   {"text": f"y {MASK}", "factual": " she", "alternative": " he",
                                    "factual_class": "fem", "alternative_class": "masc", "split": "test"}],
                                  ["masc", "fem"])
    _check_valid(ds)
    broken = PairDataset._wrap(ds.to_frame().assign(text="no mask"), None)
    with pytest.raises(AssertionError):
        _check_valid(broken)
