import pytest
import torch

import gradedit as ge
from gradedit.models import select_parameters


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_leading_space_words_are_single_tokens(name):
    lm = ge.load_model(name)
    he, she = lm.token_id(" he"), lm.token_id(" she")
    assert he != she
    assert lm.tokenizer.decode([he]).strip().lower() == "he"
    assert lm.token_ids([" he", " she"]) == [he, she]


def test_gpt2_distinguishes_space_marker(tiny_gpt2):
    assert tiny_gpt2.token_id(" he") != tiny_gpt2.token_id("he")
    assert tiny_gpt2.tokenizer.convert_ids_to_tokens(tiny_gpt2.token_id(" he")) == "Ġhe"


def test_wordpiece_ignores_space_and_case(tiny_bert):
    assert tiny_bert.token_id(" he") == tiny_bert.token_id("he") == tiny_bert.token_id("He")


def test_multi_piece_word_error_names_pieces(tiny_gpt2):
    with pytest.raises(ge.TokenError) as err:
        tiny_gpt2.token_id(" Xylophonequartz")
    msg = str(err.value)
    assert "not a single token" in msg and "splits into" in msg and "Xylophonequartz" in msg


def test_token_ids_reports_every_bad_word(tiny_gpt2):
    with pytest.raises(ge.TokenError) as err:
        tiny_gpt2.token_ids([" he", " Zzqxv", " Qqwvvk"])
    assert "Zzqxv" in str(err.value) and "Qqwvvk" in str(err.value)


def test_missing_space_hint(tiny_gpt2):
    # "she" without the space marker splits; the error suggests the word after a space.
    try:
        tiny_gpt2.token_id("she")
    except ge.TokenError as err:
        assert "' she'" in str(err)


def test_empty_word_rejected(tiny_gpt2):
    with pytest.raises(ge.TokenError):
        tiny_gpt2.token_id(" ")


def test_pad_token_is_set(tiny_lm):
    assert tiny_lm.tokenizer.pad_token_id is not None


def test_tiny_models_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = ge.load_model("tiny-llama")
    after = torch.rand(3)
    assert torch.equal(expected, after), "building a tiny model touched the global RNG"
    b = ge.load_model("tiny-llama")
    c = ge.zoo.load("tiny-llama", seed=1)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert not torch.equal(a.model.lm_head.weight, c.model.lm_head.weight)


def test_select_parameters_default_is_block_weights(tiny_llama):
    sel = select_parameters(tiny_llama.model)
    assert sel and all(".layers." in n and p.ndim == 2 for n, p in sel.items())
    assert not any("embed" in n or "lm_head" in n for n in sel)
    with_emb = select_parameters(tiny_llama.model, include_embeddings=True)
    assert "model.embed_tokens.weight" in with_emb and "lm_head.weight" in with_emb


def test_select_parameters_patterns_and_errors(tiny_gpt2):
    sel = select_parameters(tiny_gpt2.model, ["*.mlp.c_fc.weight"])
    assert list(sel) == ["transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(ValueError, match="matches nothing"):
        select_parameters(tiny_gpt2.model, ["*.no_such_module.*"])


def test_local_folder_roundtrip(tmp_path, tiny_gpt2, texts):
    tiny_gpt2.model.save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    lm = ge.load_model(tmp_path)
    assert lm.kind == "clm" and lm.name == str(tmp_path)
    assert ge.metrics.cross_entropy(lm, texts) == pytest.approx(ge.metrics.cross_entropy(tiny_gpt2, texts), abs=1e-6)


def test_local_mlm_folder_detected(tmp_path, tiny_bert):
    tiny_bert.model.save_pretrained(tmp_path)
    tiny_bert.tokenizer.save_pretrained(tmp_path)
    assert ge.load_model(tmp_path).kind == "mlm"


def test_unknown_name_error():
    with pytest.raises(FileNotFoundError, match="neither a zoo model"):
        ge.load_model("no-such-model")
