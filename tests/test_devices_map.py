"""``device_map`` models (accelerate, CPU + disk offload): blast radius, scoring and the decoder sweep
give the undispatched model's numbers; gradients, rewrites, decompositions and edits of offloaded
weights are refused in one line; bad maps fail before any weight is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gradedit as ge
from gradedit import metrics
from gradedit.blast import blast_radius
from gradedit.cli.app import main
from gradedit.data.schema import PairDataset
from gradedit.edits import EditError, WeightEdit
from gradedit.errors import ConfigError
from gradedit.gradiend.evaluate.decoder import evaluate_decoder, fingerprint
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from gradedit.models.dispatch import DEVICE_MAP_ENV, OFFLOAD_ENV, is_dispatched
from pronoun_rows import SUBJECTS, VERBS, pronoun_records

EN = ["he said he was here and he left", "The nurse thinks the city is quiet.", "ok then"]
DE = ["Der Mann ist hier.", "Die Frau ist dort und sie schläft."]
CORPORA = {"en": EN, "de": DE}
NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the lazy dog."]
# layer 1 and the output head live on disk and are brought in for each forward by accelerate's hooks
LLAMA_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
             "model.rotary_emb": "cpu", "lm_head": "disk"}
GPT2_MAP = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu", "transformer.h.1": "disk",
            "transformer.ln_f": "cpu", "lm_head": "cpu"}


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama saved as an HF folder (loaded with from_pretrained(device_map=...))."""
    lm = ge.load_model("tiny-llama")
    out = tmp_path_factory.mktemp("tiny_llama_hf")
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def dispatched(llama_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> ge.LanguageModel:
    lm = ge.load_model(llama_folder, device_map=LLAMA_MAP, offload_folder=tmp_path_factory.mktemp("off"))
    assert is_dispatched(lm.model)
    devices = {n: p.device.type for n, p in lm.model.named_parameters()}
    assert devices["model.layers.1.mlp.up_proj.weight"] == "meta" and devices["lm_head.weight"] == "meta"
    assert devices["model.layers.0.mlp.up_proj.weight"] == "cpu"
    assert lm.device == torch.device("cpu")
    return lm


def _layer0_edit(lm: ge.LanguageModel) -> WeightEdit:
    w = dict(lm.model.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    return WeightEdit.dense({"model.layers.0.mlp.up_proj.weight":
                             torch.randn(w.shape, generator=torch.Generator().manual_seed(3)) * 0.5})


def test_scores_equal_the_plain_model(tiny_llama: ge.LanguageModel, dispatched: ge.LanguageModel) -> None:
    for a, b in zip(metrics.full_logprobs(tiny_llama, EN + DE), metrics.full_logprobs(dispatched, EN + DE)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert metrics.lm_scores(dispatched, EN) == pytest.approx(metrics.lm_scores(tiny_llama, EN), abs=1e-6)
    ids = [tiny_llama.token_id(" he"), tiny_llama.token_id(" she")]
    torch.testing.assert_close(metrics.next_token_logprobs(dispatched, ["He said"], ids),
                               metrics.next_token_logprobs(tiny_llama, ["He said"], ids), rtol=0, atol=1e-6)


def test_blast_equals_the_plain_model_and_restores(tiny_llama: ge.LanguageModel, dispatched: ge.LanguageModel) -> None:
    edit = _layer0_edit(tiny_llama)
    ref = blast_radius(tiny_llama, edit, CORPORA, "de", control=True, seed=2)
    before = {n: p.detach().clone() for n, p in dispatched.model.named_parameters() if p.device.type != "meta"}
    got = blast_radius(dispatched, edit, CORPORA, "de", control=True, seed=2)
    assert all(torch.equal(p, dict(dispatched.model.named_parameters())[n]) for n, p in before.items())
    assert ref.kl["en"] > 1e-3  # the edit does something, so equal numbers mean something
    for lang in CORPORA:
        assert got.ce_delta[lang] == pytest.approx(ref.ce_delta[lang], abs=1e-6)
        assert got.kl[lang] == pytest.approx(ref.kl[lang], abs=1e-6)
        assert got.control_kl[lang] == pytest.approx(ref.control_kl[lang], abs=1e-6)  # type: ignore[index]
    assert got.surrounding_kl == pytest.approx(ref.surrounding_kl, abs=1e-6)


def test_in_memory_zoo_model_dispatch_and_autocast(tiny_llama: ge.LanguageModel, tmp_path: Path) -> None:
    lm = ge.load_model("tiny-llama", device_map=LLAMA_MAP, offload_folder=tmp_path / "off", autocast="bf16")
    assert is_dispatched(lm.model) and lm.autocast == "bf16"
    assert (tmp_path / "off" / "index.json").is_file()  # disk modules were written there
    lm.autocast = None
    for a, b in zip(metrics.full_logprobs(tiny_llama, EN), metrics.full_logprobs(lm, EN)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    lm.autocast = "bf16"  # autocast works through the hooks: within the bf16 tolerance of test_devices.py
    ce32, ce16 = metrics.cross_entropy(tiny_llama, EN), metrics.cross_entropy(lm, EN)
    assert ce16 == pytest.approx(ce32, abs=2e-3) and ce16 != ce32


def test_decoder_sweep_equals_the_plain_model(tiny_gpt2: ge.LanguageModel, tmp_path: Path) -> None:
    ds = PairDataset.from_records(pronoun_records(SUBJECTS[:4], VERBS[:3]), target_classes=["masc", "fem"])
    cfg = TrainConfig(experiment_dir=str(tmp_path / "run"), max_steps=10, eval_steps=10, eval_max_size=8,
                      params=["transformer.h.0.*"])  # layer 1 is offloaded below: the edit stays in memory
    trainer = Trainer(tiny_gpt2, ds, ["masc", "fem"], neutral=NEUTRAL, config=cfg)
    trainer.train()
    mwg = trainer.get_model()
    kw = {"learning_rates": [1e-2, 1.0], "feature_factors": [-1.0, 1.0], "refine_steps": 1, "max_rows_per_class": 8,
          "search": "grid"}
    ref = evaluate_decoder(mwg, ds, trainer.classes, NEUTRAL, **kw)
    lm = ge.load_model("tiny-gpt2", device_map=GPT2_MAP, offload_folder=tmp_path / "off")
    assert is_dispatched(lm.model)
    got = evaluate_decoder(ModelWithGradiend(lm, mwg.feature_model), ds, trainer.classes, NEUTRAL, **kw)
    assert got.to_dict()["grid"] == ref.to_dict()["grid"]  # same points, same floats
    assert {k: s.learning_rate for k, s in got.items()} == {k: s.learning_rate for k, s in ref.items()}
    # caches: a device map gives the same numbers (shared key); autocast gives other numbers (its own key)
    dmwg = ModelWithGradiend(lm, mwg.feature_model)
    assert fingerprint(dmwg, ds, NEUTRAL, {}) == fingerprint(mwg, ds, NEUTRAL, {})
    lm.autocast = "bf16"
    assert fingerprint(dmwg, ds, NEUTRAL, {}) != fingerprint(mwg, ds, NEUTRAL, {})
    lm.autocast = None
    # refused on a dispatched model: a rewrite, gradients (training, JVP encodings), offloaded edits
    with pytest.raises(ConfigError, match="rewrite_base_model.*device_map") as err:
        dmwg.rewrite_base_model(1e-2, 1.0)
    _one_line(err)
    with pytest.raises(ConfigError, match="device_map") as err:
        dmwg.encode(ds)
    _one_line(err)
    with pytest.raises(ConfigError, match="fast search.*device_map") as err:  # its line model substitutes parameters
        evaluate_decoder(dmwg, ds, trainer.classes, NEUTRAL, search="fast", derivatives="fd", max_rows_per_class=8,
                         selector="perplexity:0.05")
    _one_line(err)
    with pytest.raises(ConfigError, match="device_map") as err:
        Trainer(lm, ds, ["masc", "fem"], neutral=NEUTRAL,
                config=TrainConfig(experiment_dir=str(tmp_path / "run2"), max_steps=2)).train()
    _one_line(err)


def test_gradients_and_offloaded_edits_are_refused(dispatched: ge.LanguageModel) -> None:
    enc = dispatched.tokenize(EN)
    with pytest.raises(ConfigError, match="gradients.*without device_map") as err:
        dispatched.forward_logits(enc["input_ids"], enc["attention_mask"])  # gradients on
    _one_line(err)
    w = dict(dispatched.model.named_parameters())["model.layers.1.mlp.up_proj.weight"]
    off = WeightEdit.dense({"model.layers.1.mlp.up_proj.weight": torch.ones(w.shape)})
    with pytest.raises(EditError, match="offloaded by a device_map") as err:
        blast_radius(dispatched, off, CORPORA, control=False)
    _one_line(err)
    from gradedit.decompose import decompose

    with pytest.raises(ConfigError, match="decompose") as err:
        decompose(dispatched, "model.layers.0.mlp.up_proj", 2, inputs=EN, steps=1)
    _one_line(err)


def test_bad_maps_fail_before_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cases = [
        ({"device_map": LLAMA_MAP}, "'disk' but no offload folder"),
        ({"device_map": {"": "tpu"}}, "not a device"),
        ({"device_map": {}}, "non-empty"),
        ({"device_map": "everywhere"}, "unknown device_map"),
        ({"device_map": {"": "cpu"}, "device": "cpu"}, "not both"),
    ]
    if not torch.cuda.is_available():
        cases.append(({"device_map": {"": 0}}, "asks for GPU 0 but this machine has 0"))
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            ge.load_model("tiny-llama", **kwargs)
        _one_line(err)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launcher") as err:
        ge.load_model("tiny-llama", device_map="auto")
    _one_line(err)


def test_single_device_map_is_a_plain_model(tiny_llama: ge.LanguageModel) -> None:
    lm = ge.load_model("tiny-llama", device_map={"": "cpu"})
    assert not is_dispatched(lm.model)  # no hooks: training is allowed, nothing to refuse
    lm2 = ge.load_model("tiny-llama", device_map="auto")  # CPU only here: one device, no hooks
    assert not is_dispatched(lm2.model) and lm2.device == torch.device("cpu")
    enc = lm.tokenize(EN)
    torch.testing.assert_close(lm.forward_logits(enc["input_ids"], enc["attention_mask"]),
                               tiny_llama.forward_logits(enc["input_ids"], enc["attention_mask"]), rtol=0, atol=0)


def test_cli_score_with_device_map(llama_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    base = ["score", "--model", str(llama_folder), "--text", EN[1], "--text", DE[0]]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(LLAMA_MAP))
    with caplog.at_level("WARNING", logger="accelerate"):
        assert main([*base, "--device-map", str(map_file), "--offload-folder", str(tmp_path / "off")]) == 0
    split = json.loads(capsys.readouterr().out)
    for key in ("cross_entropy", "perplexity", "lms", "tokens"):
        assert split[key] == pytest.approx(plain[key], abs=1e-6)
    assert any("offloaded to the" in r.getMessage() and "disk" in r.getMessage()
               for r in caplog.records)  # the map reached accelerate
    monkeypatch.delenv(DEVICE_MAP_ENV, raising=False)
    monkeypatch.delenv(OFFLOAD_ENV, raising=False)
    assert main([*base, "--device-map", json.dumps(LLAMA_MAP)]) == 2  # disk without a folder: usage error
    assert "offload folder" in capsys.readouterr().err
    assert main([*base, "--device-map", "{not json"]) == 2


def test_rewritten_folder_against_an_offloaded_base_is_refused(tiny_llama: ge.LanguageModel,
                                                              dispatched: ge.LanguageModel, tmp_path: Path) -> None:
    import copy

    from gradedit.gradiend.rewrite_io import rewrite_edit, save_rewrite

    model = copy.deepcopy(tiny_llama.model)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.1)
    save_rewrite(model, tiny_llama, tmp_path / "rw", {"base_model": "tiny-llama"})
    assert rewrite_edit(tmp_path / "rw", tiny_llama).metadata["changed_entries"]  # the plain model: fine
    with pytest.raises(EditError, match="offloaded by a device_map") as err:
        rewrite_edit(tmp_path / "rw", dispatched)  # was: an internal error (item() on a meta tensor)
    _one_line(err)
