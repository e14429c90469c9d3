"""The gradient store (issue 16.1): extracted once, read every epoch and seed; same model as live gradients.

Oracles: fp32 store-trained == live-trained bit for bit (same seed, several epochs, two seeds);
bf16 within a measured tolerance; the store refuses other data / param maps / dtypes; damaged,
truncated or missing shards are named; an interrupted extraction resumes to byte-identical files.
"""

import json
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch

from gradedit.data.schema import PairDataset
from gradedit.errors import ArtifactError, TrainingError
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.gradients import GradientEngine
from gradedit.gradiend.rows import rows_of
from gradedit.gradiend.store import STORE_DIR, GradientStore, StoreIndex, extract_store, store_key
from gradedit.gradiend.store import extract as extract_mod
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.trainer import Trainer
from gradedit.models.param_map import ParamMap
from pronoun_rows import pronoun_records

CLASSES = ("masc", "fem")


@pytest.fixture(scope="module")
def pronouns() -> PairDataset:
    return PairDataset.from_records(pronoun_records(), target_classes=list(CLASSES))


def _cfg(tmp_path, name="run", **kw):
    base = dict(experiment_dir=str(tmp_path / name), max_steps=40, eval_steps=10, pre_prune_topk=0.2,
                pre_prune_samples=8, eval_max_size=16, early_stopping_patience=None)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def count_gradients(monkeypatch):
    """Counts rows whose gradient vectors are computed (live steps and store extraction alike)."""
    calls = {"rows": 0}
    original = GradientEngine.gradient_vectors

    def counted(self, texts, *args, **kwargs):
        calls["rows"] += len(texts)
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(GradientEngine, "gradient_vectors", counted)
    return calls


def _models(run_dir, seed=0):
    return [FeatureModel.from_pretrained(run_dir / f"seed_{seed}" / part) for part in ("best", "last")]


def _assert_same_model(a: FeatureModel, b: FeatureModel) -> None:
    for name in ("encoder_weight", "encoder_bias", "decoder_weight", "decoder_bias"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_fp32_store_trains_bit_identically_to_live(tiny_gpt2, pronouns, tmp_path, count_gradients):
    # 40 steps x batch 4 over 64 rows = 2.5 epochs, two seeds (min_correlation 2 never converges)
    common = dict(max_seeds=2, min_convergent_seeds=1, min_correlation=2.0)
    live = Trainer(tiny_gpt2, pronouns, CLASSES, config=_cfg(tmp_path, "live", **common))
    fm_live = live.train()
    live_rows = count_gradients["rows"]
    n_train = len(pronouns.split("train"))
    assert live_rows == 2 * 40 * 4  # every example of every epoch and seed computed anew
    count_gradients["rows"] = 0
    stored = Trainer(tiny_gpt2, pronouns, CLASSES, config=_cfg(tmp_path, "store", gradient_store="fp32", **common))
    fm_store = stored.train()
    assert count_gradients["rows"] == n_train == 64  # each row once, at extraction
    _assert_same_model(fm_live, fm_store)
    for seed in (0, 1):
        for a, b in zip(_models(tmp_path / "live", seed), _models(tmp_path / "store", seed)):
            _assert_same_model(a, b)
    for a, b in zip(live.seed_results, stored.seed_results):
        assert a.step_losses == b.step_losses and a.correlation == b.correlation
    info = json.loads((tmp_path / "store" / "run.json").read_text())["gradient_store"]
    assert info["dtype"] == "fp32" and info["rows"] == info["extracted_rows"] == 64 and info["disk_bytes"] >= 64 * info["entries"] * 4
    assert json.loads((tmp_path / "live" / "run.json").read_text())["gradient_store"] is None


def test_bf16_store_is_within_measured_tolerance(tiny_gpt2, pronouns, tmp_path):
    """bf16 rounds each stored entry to 8 mantissa bits (relative error <= 2^-9). Measured on tiny-gpt2
    and tiny-llama, 10-40 steps, sources diff/factual: encoder/decoder weights differ by <= 1.3e-3
    relative (L2), the decoder bias by <= 3.9e-3, step losses by <= 1.6e-4 relative, validation r by
    <= 6e-4. The bounds below leave ~4x headroom."""
    runs = {}
    for mode in ("off", "bf16"):
        tr = Trainer(tiny_gpt2, pronouns, CLASSES, config=_cfg(tmp_path, mode, gradient_store=mode,
                                                                post_prune_topk=None))
        tr.train()
        runs[mode] = (FeatureModel.from_pretrained(tmp_path / mode / "seed_0" / "last"), tr.seed_results[0])
    (a, ra), (b, rb) = runs["off"], runs["bf16"]

    def rel(x, y):
        return float((x - y).detach().norm() / x.detach().norm())

    assert 0 < rel(a.encoder_weight, b.encoder_weight) < 5e-3  # > 0: bf16 really was used
    assert rel(a.decoder_weight, b.decoder_weight) < 5e-3
    assert rel(a.decoder_bias, b.decoder_bias) < 1.5e-2
    la, lb = np.array(ra.step_losses)[:, 1], np.array(rb.step_losses)[:, 1]
    assert np.max(np.abs(la - lb) / np.abs(la)) < 1e-3
    assert np.allclose([h["correlation"] for h in ra.history], [h["correlation"] for h in rb.history], atol=5e-3)
    store = GradientStore.open(tmp_path / "bf16" / STORE_DIR)
    assert store.key.dtype == "bf16"
    assert (tmp_path / "bf16" / STORE_DIR / store.index.shards[0].file).stat().st_size < 64 * store.key.n_inputs * 3


def test_store_reused_by_later_runs_and_other_inputs_rejected(tiny_gpt2, pronouns, tmp_path, count_gradients):
    Trainer(tiny_gpt2, pronouns, CLASSES, config=_cfg(tmp_path, max_steps=10, gradient_store="fp32")).train()
    assert count_gradients["rows"] == 64
    count_gradients["rows"] = 0
    # another learning rate retrains the seed but reuses the store: no gradient is computed again
    tr = Trainer(tiny_gpt2, pronouns, CLASSES, config=_cfg(tmp_path, max_steps=10, gradient_store="fp32",
                                                           learning_rate=5e-4))
    tr.train()
    assert count_gradients["rows"] == 0 and tr.seed_results[0].last_step == 10
    store_dir = tmp_path / "run" / STORE_DIR
    before = {p.name: p.read_bytes() for p in store_dir.iterdir()}
    data_csv = (tmp_path / "run" / "data.csv").read_bytes()
    with pytest.raises(ArtifactError, match="param-map hash.*delete"):  # another pre-pruned input space
        Trainer(tiny_gpt2, pronouns, CLASSES, config=_cfg(tmp_path, max_steps=10, gradient_store="fp32",
                                                          pre_prune_topk=0.1)).train()
    fewer = PairDataset.from_records(pronoun_records()[:-8], target_classes=list(CLASSES))
    with pytest.raises(ArtifactError, match="data fingerprint"):
        Trainer(tiny_gpt2, fewer, CLASSES, config=_cfg(tmp_path, max_steps=10, gradient_store="fp32")).train()
    with pytest.raises(ArtifactError, match="dtype .'fp32' vs 'bf16'"):
        Trainer(tiny_gpt2, pronouns, CLASSES, config=_cfg(tmp_path, max_steps=10, gradient_store="bf16")).train()
    assert {p.name: p.read_bytes() for p in store_dir.iterdir()} == before  # never overwritten
    assert (tmp_path / "run" / "data.csv").read_bytes() == data_csv  # a refused run leaves its inputs alone


Setup = namedtuple("Setup", "engine rows pmap key")


@pytest.fixture
def setup(tiny_llama, pronouns):
    engine = GradientEngine(tiny_llama, ["*.mlp.*"])
    full = ParamMap.from_params(engine.params)
    pmap = full.select(torch.arange(0, full.size, 7))  # a pre-pruned-like selection
    rows = rows_of(pronouns.split("train"), tiny_llama)
    key = store_key(engine, rows, pmap, classes=CLASSES, split="train", source="alternative", target="diff",
                    dtype="fp32")
    return Setup(engine, rows, pmap, key)


def _files(folder):
    """Every file's content: index.json byte for byte; per shard its header metadata and each tensor's
    bytes (safetensors writes the header's keys in no fixed order, so raw shard bytes may differ)."""
    from safetensors import safe_open

    out = {}
    for p in sorted(folder.iterdir()):
        if p.name.endswith(".safetensors"):
            with safe_open(str(p), framework="pt") as f:
                out[p.name] = (f.metadata(), {k: f.get_tensor(k).view(torch.uint8).numpy().tobytes()
                                              for k in sorted(f.keys())}, p.stat().st_size)
        elif p.name != ".gradedit.lock":
            out[p.name] = p.read_bytes()
    return out


def test_store_rows_equal_live_vectors_and_keys_are_checked(setup, tmp_path):
    s = setup
    store = extract_store(tmp_path / "st", s.engine, s.rows, s.pmap, s.key, shard_rows=10)
    assert len(store.index.shards) == 7 and store.key.kinds == ("alternative", "diff")
    for i in (0, 9, 10, 63):
        live = s.engine.gradient_vectors([s.rows.texts[i]], s.rows.factual[[i]], s.rows.alternative[[i]],
                                         ["alternative", "diff"], s.pmap)
        src, tgt = store.example([i])
        assert torch.equal(src, live["alternative"]) and torch.equal(tgt, live["diff"])
    # several rows: the mean of the stored rows (the gradient of the mean loss, up to rounding)
    batch = s.engine.gradient_vectors([s.rows.texts[i] for i in (1, 2, 3)], s.rows.factual[[1, 2, 3]],
                                      s.rows.alternative[[1, 2, 3]], ["diff"], s.pmap)["diff"]
    torch.testing.assert_close(store.example([1, 2, 3])[1], batch, rtol=1e-4, atol=1e-6)
    other_map = s.pmap.select(torch.arange(0, s.pmap.size, 2))
    other = store_key(s.engine, s.rows, other_map, classes=CLASSES, split="train", source="alternative",
                      target="diff", dtype="fp32")
    with pytest.raises(ArtifactError, match="param-map hash"):
        GradientStore.open(tmp_path / "st", other)
    fewer = s.rows.subset(list(range(60)))
    other = store_key(s.engine, fewer, s.pmap, classes=CLASSES, split="train", source="alternative",
                      target="diff", dtype="fp32")
    with pytest.raises(ArtifactError, match="data fingerprint"):
        GradientStore.open(tmp_path / "st", other)
    with pytest.raises(ArtifactError, match="param-map hash"):
        extract_store(tmp_path / "st", s.engine, s.rows, other_map, store_key(
            s.engine, s.rows, other_map, classes=CLASSES, split="train", source="alternative", target="diff",
            dtype="fp32"), shard_rows=10)
    with pytest.raises(KeyError, match="not 'factual'"):
        store.row("factual", 0)


def test_truncated_shard_is_a_clear_error_and_extraction_repairs_it(setup, tmp_path, count_gradients):
    s = setup
    extract_store(tmp_path / "st", s.engine, s.rows, s.pmap, s.key, shard_rows=10).close()
    good = _files(tmp_path / "st")
    shard = tmp_path / "st" / "shard_00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=r"shard_00002\.safetensors is \d+ bytes instead of \d+ .truncated"):
        GradientStore.open(tmp_path / "st", s.key)
    # the same check without the recorded size (a store whose index lost it): safetensors' own header check
    index = StoreIndex.load(tmp_path / "st")
    index.shards[2].bytes = None
    index.save(tmp_path / "st")
    with pytest.raises(ArtifactError, match=r"shard_00002\.safetensors is unreadable .*truncated"):
        GradientStore.open(tmp_path / "st", s.key)
    count_gradients["rows"] = 0
    extract_store(tmp_path / "st", s.engine, s.rows, s.pmap, s.key, shard_rows=10).close()
    assert count_gradients["rows"] == 10  # only the damaged shard
    assert _files(tmp_path / "st") == good


def test_interrupted_extraction_resumes_to_an_identical_store(setup, tmp_path, monkeypatch, count_gradients):
    s = setup
    extract_store(tmp_path / "ref", s.engine, s.rows, s.pmap, s.key, shard_rows=10).close()
    reference = _files(tmp_path / "ref")
    original = GradientEngine.gradient_vectors

    seen = {"rows": 0}

    def crash_at_row_25(self, texts, *args, **kwargs):
        if seen["rows"] == 25:
            raise KeyboardInterrupt("simulated interruption")
        seen["rows"] += 1
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(GradientEngine, "gradient_vectors", crash_at_row_25)
    with pytest.raises(KeyboardInterrupt):
        extract_store(tmp_path / "st", s.engine, s.rows, s.pmap, s.key, shard_rows=10)
    done = sorted(p.name for p in (tmp_path / "st").glob("shard_*"))
    assert done == ["shard_00000.safetensors", "shard_00001.safetensors"]  # no half-written shard 2
    assert not StoreIndex.load(tmp_path / "st").complete
    with pytest.raises(ArtifactError, match="unfinished"):
        GradientStore.open(tmp_path / "st", s.key)
    monkeypatch.undo()
    calls = {"rows": 0}

    def counted(self, texts, *args, **kwargs):
        calls["rows"] += 1
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(GradientEngine, "gradient_vectors", counted)
    store = extract_store(tmp_path / "st", s.engine, s.rows, s.pmap, s.key, shard_rows=10)
    assert calls["rows"] == 64 - 20  # shards 0 and 1 were skipped
    assert _files(tmp_path / "st") == reference  # the index byte for byte, every shard's content and size
    # a deleted shard of a finished store: named on open, re-extracted alone
    store.close()
    (tmp_path / "st" / "shard_00006.safetensors").unlink()
    with pytest.raises(ArtifactError, match="shard_00006.safetensors is missing"):
        GradientStore.open(tmp_path / "st", s.key)
    calls["rows"] = 0
    extract_store(tmp_path / "st", s.engine, s.rows, s.pmap, s.key).close()
    assert calls["rows"] == 4 and _files(tmp_path / "st") == reference


def test_refuses_when_the_disk_cannot_hold_the_store(setup, tmp_path, monkeypatch, caplog):
    s = setup
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(extract_mod.shutil, "disk_usage",
                        lambda p: usage._replace(free=extract_mod.DISK_RESERVE_BYTES + 1000))
    with caplog.at_level("INFO", logger="gradedit.gradiend.store.extract"), \
            pytest.raises(TrainingError, match="needs .* more .* only .* free.*gradient_store='off'"):
        extract_store(tmp_path / "st", s.engine, s.rows, s.pmap, s.key, shard_rows=10)
    assert "MiB on disk" in caplog.text or "KiB on disk" in caplog.text  # the estimate is logged first
    assert not list((tmp_path / "st").glob("shard_*"))


def test_rows_per_gradient_averages_stored_rows(tiny_gpt2, pronouns, tmp_path):
    """With rows_per_gradient > 1 an example is the mean of its rows' stored gradients: equal to the live
    batched gradient up to float rounding, so training stays within a tight tolerance."""
    models = {}
    for mode in ("off", "fp32"):
        cfg = _cfg(tmp_path, mode, max_steps=20, rows_per_gradient=2, gradient_store=mode, post_prune_topk=None)
        Trainer(tiny_gpt2, pronouns, CLASSES, config=cfg).train()
        models[mode] = FeatureModel.from_pretrained(tmp_path / mode / "seed_0" / "last")
    torch.testing.assert_close(models["off"].encoder_weight, models["fp32"].encoder_weight, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(models["off"].decoder_weight, models["fp32"].decoder_weight, rtol=1e-3, atol=1e-5)


def test_config_field_and_fingerprint():
    with pytest.raises(ValueError, match="gradient_store must be one of"):
        TrainConfig(gradient_store="fp16")
    off = TrainConfig().training_fingerprint()
    assert "gradient_store" not in off  # checkpoints of older runs stay resumable
    assert TrainConfig(gradient_store="fp32").training_fingerprint() == off  # bit-identical training
    assert TrainConfig(gradient_store="bf16").training_fingerprint()["gradient_store"] == "bf16"
