"""PairDataset: IO round trips, per-class frames, validation messages, splits, tokens, model inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import gradedit._files as files_mod
import gradedit.data.io as data_io
from gradedit.data.schema import COLUMNS, DataError, PairDataset, PairRow, split_masked
from gradedit.data.splits import assign_splits


def _rows() -> list[dict]:
    masc = [
        ("He said that [MASK] would be late.", " he", " she"),
        ("I think [MASK] knows, \"surely\", and more.", " he", " she"),
        ("The doctor, [MASK] said,\nwas right.", " his", " her"),
    ]
    fem = [("The nurse thinks [MASK] left early.", " she", " he"), ("Maybe [MASK] wrote it.", " her", " his")]
    rows = []
    for i, (text, f, a) in enumerate(masc * 2):
        rows.append(dict(text=text, factual=f, alternative=a, factual_class="masc", alternative_class="fem",
                         source="bible", id=i, weight=0.5 + i if i % 3 else math.nan))
    for i, (text, f, a) in enumerate(fem * 2):
        rows.append(dict(text=text, factual=f, alternative=a, factual_class="fem", alternative_class="masc",
                         source="fortunes", id=100 + i, weight=1.25))
    rows.append(dict(text="They said [MASK] was fine.", factual=" they", alternative=" they", factual_class="neutral",
                     alternative_class="neutral", source="x", id=999, weight=2.0))
    return rows


@pytest.fixture()
def ds() -> PairDataset:
    return PairDataset.from_records(_rows(), target_classes=["masc", "fem"])


def _frame(overrides: dict | None = None) -> pd.DataFrame:
    df = PairDataset.from_records(_rows(), target_classes=["masc", "fem"]).to_frame()
    for (col, row), value in (overrides or {}).items():
        df.loc[row, col] = value
    return df


# -- construction -------------------------------------------------------------------------------


def test_from_records_labels_columns_and_views(ds: PairDataset) -> None:
    df = ds.to_frame()
    assert list(df.columns) == [*COLUMNS, "source", "id", "weight"]
    assert df["label"].tolist() == [1] * 6 + [-1] * 4 + [0]
    assert ds.classes == ["fem", "masc", "neutral"] and ds.target_classes == ("masc", "fem")
    assert len(ds) == 11 and set(df["split"]) <= {"train", "val", "test"}
    first = next(iter(ds))
    assert isinstance(first, PairRow) and first.factual == " he" and first.extra["source"] == "bible"
    assert len(ds.head(3)) == 3 and len(ds.split("train")) + len(ds.split("val")) + len(ds.split("test")) == 11
    assert len(ds.filter(factual_class="fem")) == 4
    assert len(ds.filter(factual=[" he", " she"], split="train")) == len(ds.where(
        df["factual"].isin([" he", " she"]) & (df["split"] == "train")))
    assert len(ds.filter(lambda r: r.label == 0)) == 1
    counts = ds.counts()
    assert int(counts.to_numpy().sum()) == 11 and set(counts.columns) == {"fem", "masc", "neutral"}
    assert ds.to_frame() is not ds.to_frame()  # a copy each time
    with pytest.raises(DataError, match="no column 'nope'"):
        ds.filter(nope=1)


def test_with_targets_recomputes_labels(ds: PairDataset) -> None:
    flipped = ds.with_targets(["fem", "masc"])
    assert flipped.to_frame()["label"].tolist() == [-1] * 6 + [1] * 4 + [0]
    assert flipped.fingerprint() != ds.fingerprint()


def test_duplicates_are_kept_and_counted(ds: PairDataset) -> None:
    assert len(ds) == 11
    counted = ds.duplicate_count()
    core = ds.to_frame()[list(COLUMNS)]
    assert counted == int(core.duplicated().sum()) and counted > 0


def test_masked_column_is_accepted_as_text() -> None:
    df = _frame().rename(columns={"text": "masked"})
    assert PairDataset.from_frame(df, ["masc", "fem"]).to_frame()["text"].str.contains(r"\[MASK\]").all()


# -- IO -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_roundtrip_keeps_rows_columns_and_fingerprint(ds: PairDataset, tmp_path: Path, ext: str) -> None:
    path = ds.save(tmp_path / f"pairs.{ext}")
    back = PairDataset.load(path, target_classes=["masc", "fem"])
    assert len(back) == len(ds) and list(back.to_frame().columns) == list(ds.to_frame().columns)
    pd.testing.assert_frame_equal(back.to_frame(), ds.to_frame(), check_dtype=False)
    assert back.fingerprint() == ds.fingerprint()


def test_fingerprint_is_content_based(ds: PairDataset) -> None:
    df = ds.to_frame()
    assert PairDataset.from_frame(df[list(reversed(df.columns))]).fingerprint() == ds.fingerprint()
    df.loc[0, "factual"] = " his"
    assert PairDataset.from_frame(df).fingerprint() != ds.fingerprint()
    assert len(ds.fingerprint()) == 64


def test_unknown_extension(ds: PairDataset, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data format '.txt'"):
        ds.save(tmp_path / "pairs.txt")


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_failed_write_leaves_existing_file_intact(ds: PairDataset, tmp_path: Path, ext: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"pairs.{ext}"
    ds.head(2).save(path)
    before = path.read_bytes()

    def broken(self, target, *args, **kwargs):
        Path(target).write_text("half a fi")
        raise OSError("disk full")

    def broken_json(value):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    monkeypatch.setattr(data_io, "_jsonable", broken_json)
    with pytest.raises(OSError, match="disk full"):
        ds.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_failed_rename_leaves_existing_file_intact(ds: PairDataset, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = ds.head(2).save(tmp_path / "pairs.csv")
    before = path.read_bytes()

    def no_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(files_mod.os, "replace", no_replace)
    with pytest.raises(OSError, match="rename failed"):
        ds.save(path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_csv_keeps_token_strings_verbatim(tmp_path: Path) -> None:
    rows = [dict(text="x [MASK]", factual="null", alternative="NA", factual_class="1", alternative_class="2",
                 label=0, split="train")]
    back = PairDataset.load(PairDataset.from_records(rows).save(tmp_path / "p.csv"))
    row = next(iter(back))
    assert (row.factual, row.alternative, row.factual_class) == ("null", "NA", "1")


# -- per-class frames ---------------------------------------------------------------------------


def _class_frames() -> dict[str, pd.DataFrame]:
    masc = pd.DataFrame({"masked": ["Now [MASK] runs.", "[MASK] said so.", "Then [MASK] ate."],
                         "masc": [" he", "He", " he"], "id": [1, 2, 3]})
    fem = pd.DataFrame({"masked": ["Now [MASK] runs.", "so [MASK] said.", "and [MASK] sat.", "[MASK] ran."],
                        "label": [" she", " she", " her", "She"], "id": [4, 5, 6, 7]})
    return {"masc": masc, "fem": fem}


def test_from_class_frames_most_frequent_alternative_with_casing() -> None:
    ds = PairDataset.from_class_frames(_class_frames())
    df = ds.to_frame()
    assert ds.target_classes == ("masc", "fem") and len(df) == 7
    masc = df[df["factual_class"] == "masc"]
    assert masc["alternative"].tolist() == [" she", "She", " she"]
    assert set(masc["label"]) == {1} and masc["alternative_class"].eq("fem").all()
    fem = df[df["factual_class"] == "fem"]
    assert fem["alternative"].tolist() == [" he", " he", " he", "He"] and set(fem["label"]) == {-1}
    assert df["id"].tolist() == [1, 2, 3, 4, 5, 6, 7]  # extra columns survive
    # split grouped by text: the shared sentence lands in one split
    assert df[df["text"] == "Now [MASK] runs."]["split"].nunique() == 1


def test_from_class_frames_row_wise_and_mapping_alternatives() -> None:
    frames = _class_frames()
    frames["masc"]["fem"] = [" she", "She", None]  # row-wise pair; the last row has none
    neutral = pd.DataFrame({"text": ["They said [MASK] ok."], "token": [" it"], "split": ["test"]})
    for f in frames.values():
        f["split"] = "train"
    ds = PairDataset.from_class_frames({**frames, "neutral": neutral}, target_classes=["masc", "fem"],
                                       alternatives={"masc": {" she": " he", " her": " his"}})
    df = ds.to_frame()
    assert df[df["factual_class"] == "masc"]["alternative"].tolist() == [" she", "She"]
    assert df[df["factual_class"] == "fem"]["alternative"].tolist() == [" he", " he", " his", "He"]
    ident = df[df["factual_class"] == "neutral"]
    assert ident[["alternative", "alternative_class", "label", "split"]].values.tolist() == [[" it", "neutral", 0, "test"]]
    with pytest.raises(DataError, match=r"alternatives\['masc'\] has no entry for 'fem' token\(s\) \[' her'\]"):
        PairDataset.from_class_frames(frames, alternatives={"masc": {" she": " he"}})


def test_from_class_frames_errors_name_the_fix() -> None:
    frames = _class_frames()
    with pytest.raises(DataError, match=r"class 'fem' has no token column .* it has \['masked', 'id'\]"):
        PairDataset.from_class_frames({"masc": frames["masc"], "fem": frames["fem"].drop(columns="label")})
    with pytest.raises(DataError, match="target class 'neutral' has no frame"):
        PairDataset.from_class_frames(frames, target_classes=["masc", "neutral"])


def test_load_class_folder_and_dict(tmp_path: Path) -> None:
    frames = _class_frames()
    frames["masc"].to_csv(tmp_path / "masc.csv", index=False)
    frames["fem"].to_parquet(tmp_path / "fem.parquet", index=False)
    from_dir = PairDataset.load(tmp_path, target_classes=["masc", "fem"])
    from_dict = PairDataset.load(frames, target_classes=["masc", "fem"])
    assert len(from_dir) == 7 and from_dir.fingerprint() == from_dict.fingerprint()


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({("text", 1): "no mask here"}, r"row 1: text has no \[MASK\] \(column 'text'"),
        ({("text", 2): "[MASK] and [MASK]"}, r"row 2: text has more than one \[MASK\] \(column 'text'"),
        ({("text", 3): "   "}, r"row 3: empty text \(column 'text'"),
        ({("factual", 4): None}, r"row 4: empty factual \(column 'factual'"),
        ({("label", 5): 2}, r"row 5: label is not -1, 0 or 1 \(column 'label' = 2\)"),
        ({("split", 6): "validation"}, r"row 6: unknown split value \(column 'split' = 'validation'\).*'val'"),
        ({("label", 7): 1}, r"row 7: label inconsistent with target_classes \['masc', 'fem'\].*with_targets"),
        ({("label", 10): 1}, r"row 10: identity row .* non-zero label"),
    ],
)
def test_validation_errors_name_row_column_and_fix(overrides: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as info:
        PairDataset.from_frame(_frame(overrides), target_classes=["masc", "fem"])
    assert "Fix:" in str(info.value)


def test_missing_column_lists_existing_columns() -> None:
    with pytest.raises(DataError, match=r"missing required column\(s\) \['alternative'\]; the data has columns "
                                        r"\['text', 'factual', 'factual_class'"):
        PairDataset.from_frame(_frame().drop(columns="alternative"))
    with pytest.raises(DataError, match=r"\['label'\].*target_classes"):
        PairDataset.from_frame(_frame().drop(columns="label"))


def test_empty_target_class_and_bad_targets() -> None:
    with pytest.raises(DataError, match=r"target class 'other' has no rows; factual_class values present: "
                                        r"\['fem', 'masc', 'neutral'\]"):
        PairDataset.from_frame(_frame().drop(columns="label"), target_classes=["masc", "other"])
    with pytest.raises(DataError, match="two different class ids"):
        PairDataset.from_frame(_frame(), target_classes=["masc", "masc"])


def test_split_masked() -> None:
    assert split_masked("a [MASK] b") == ("a ", " b")
    with pytest.raises(DataError, match="has 0"):
        split_masked("no mask")


# -- splits -------------------------------------------------------------------------------------


def test_assign_splits_deterministic_and_exact() -> None:
    a = assign_splits(100, seed=3)
    assert a == assign_splits(100, seed=3) and a != assign_splits(100, seed=4)
    assert [a.count(s) for s in ("train", "val", "test")] == [80, 10, 10]
    assert assign_splits(10, (0.5, 0.0, 0.5)).count("val") == 0
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits(10, (0.5, 0.2, 0.2))


def test_grouped_splits_never_share_a_group() -> None:
    groups = [f"w{i % 37}" for i in range(500)]
    splits = assign_splits(500, seed=1, groups=groups)
    seen: dict[str, set[str]] = {}
    for g, s in zip(groups, splits):
        seen.setdefault(g, set()).add(s)
    assert all(len(v) == 1 for v in seen.values())
    assert {s for v in seen.values() for s in v} == {"train", "val", "test"}
    assert 0.7 < splits.count("train") / 500 < 0.9


def test_from_frame_assigns_splits_when_missing(ds: PairDataset) -> None:
    df = ds.to_frame().drop(columns="split")
    a = PairDataset.from_frame(df, ["masc", "fem"], seed=5)
    assert a.to_frame()["split"].tolist() == PairDataset.from_frame(df, ["masc", "fem"], seed=5).to_frame()["split"].tolist()
    grouped = ds.with_splits(seed=2, group_by="text").to_frame()
    assert (grouped.groupby("text")["split"].nunique() == 1).all()


# -- tokens and model inputs --------------------------------------------------------------------


def test_validate_tokens_on_tiny_gpt2(ds: PairDataset, tiny_gpt2) -> None:
    ids = ds.validate_tokens(tiny_gpt2)
    assert ids[" he"] == tiny_gpt2.token_id(" he") and set(ids) == {" he", " she", " his", " her", " they"}
    df = ds.to_frame()
    df.loc[3, "factual"] = " extraordinary"
    df.loc[8, "alternative"] = " unbelievable"
    bad = PairDataset.from_frame(df)
    with pytest.raises(DataError) as info:
        bad.validate_tokens(tiny_gpt2)
    msg = str(info.value)
    assert "2 of 7 distinct" in msg and "tiny-gpt2" in msg
    assert "' extraordinary' (1 row(s), first row 3)" in msg and "' unbelievable' (1 row(s), first row 8)" in msg


def test_model_inputs_clm_drops_the_suffix(ds: PairDataset, tiny_gpt2) -> None:
    texts, fac, alt, labels = ds.model_inputs(tiny_gpt2)
    assert texts[0] == "He said that" and texts[2] == "The doctor,"
    assert all("[MASK]" not in t and "late" not in t for t in texts)
    assert fac.dtype == torch.long and alt.dtype == torch.long and labels.dtype == torch.float32
    assert fac[0].item() == tiny_gpt2.token_id(" he") and alt[0].item() == tiny_gpt2.token_id(" she")
    assert labels.tolist() == ds.to_frame()["label"].astype(float).tolist()
    start = PairDataset.from_frame(_frame({("text", 0): "[MASK] said so."}))
    with pytest.raises(DataError, match="row 0: nothing before"):
        start.model_inputs(tiny_gpt2)


def test_model_inputs_mlm_keeps_the_mask_token(ds: PairDataset, tiny_bert) -> None:
    texts, fac, alt, labels = ds.model_inputs(tiny_bert)
    assert texts == ds.to_frame()["text"].str.replace("[MASK]", tiny_bert.tokenizer.mask_token).tolist()
    assert all(t.count(tiny_bert.tokenizer.mask_token) == 1 for t in texts) and texts[0].endswith("be late.")
    assert fac[0].item() == tiny_bert.token_id(" he") and len(labels) == len(ds)
    assert ds.prompts("mlm", mask_token="<mask>")[0] == "He said that <mask> would be late."


def test_hf_dataset_round_trip(ds: PairDataset) -> None:
    hf = ds.to_hf_dataset()
    assert hf.num_rows == len(ds) and set(hf.column_names) >= {"text", "factual", "alternative", "label", "split"}
    back = PairDataset.from_hf_dataset(hf)
    assert back.fingerprint() == ds.fingerprint()
