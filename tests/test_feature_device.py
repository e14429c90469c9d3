"""``TrainConfig.feature_device``: the feature model on another device than the base model.

This machine has only a CPU, so a second device is simulated (``tests/sim_device.py``): tensors on the
``lazy`` device hold real CPU numbers but every op mixing them with CPU tensors raises, as CUDA does
for two devices. So (1) training, checkpoints, resuming, encoding, rewriting and the decoder sweep
with the feature model on the simulated device give the CPU's results bit for bit, and (2) a forgotten
``.to(device)`` fails (shown in-suite for the loop's vector move). Data parallel under 2 gloo processes
(gradients reduced on the CPU, the comm device, while the feature model sits elsewhere) equals one
process. Plus: the config's checks, CUDA refused on a machine without it, and no CUDA call on the CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import gradedit as ge
from gradedit import dist
from gradedit.data.schema import PairDataset
from gradedit.errors import ConfigError
from gradedit.gradiend.evaluate.decoder import evaluate_decoder, lr_scale
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.gradiend.train import config as config_module
from gradedit.gradiend.train.adamw import FeatureAdamW
from gradedit.gradiend.train.config import TrainConfig, resolve_feature_device
from gradedit.gradiend.train.fused import fused_mse_step
from gradedit.gradiend.train.loop import SeedTrainer
from gradedit.gradiend.train.trainer import Trainer
from gradedit.models.param_map import ParamMap
from json_close import assert_json_close
from pronoun_rows import pronoun_records
from sim_device import SIM, DeviceMismatch, SimTensor, simulated_device, to_cpu

CLASSES = ["masc", "fem"]
BASE: dict[str, Any] = dict(max_steps=4, eval_steps=2, train_batch_size=2, pre_prune_topk=0.2, pre_prune_samples=4,
                            eval_max_size=8)
# every way FeatureOptimizer steps, bf16 moments, and rows read from the gradient store (2 rows per example)
MODES: dict[str, dict[str, Any]] = {"default": {}, "fused": {"fused_step": True},
                                    "in_backward": {"optimizer_in_backward": True},
                                    "bf16_moments": {"optimizer_state": "bf16"},
                                    "store": {"gradient_store": "fp32", "rows_per_gradient": 2}}
CHECKPOINTS = ("model", "seed_0/best", "seed_0/last")


@pytest.fixture
def simulated_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """TrainConfig accepts the simulated device's type (it refuses device types it cannot train on)."""
    monkeypatch.setattr(config_module, "FEATURE_DEVICE_TYPES", (*config_module.FEATURE_DEVICE_TYPES, SIM.type))


def _data() -> PairDataset:
    return PairDataset.from_records(pronoun_records(), target_classes=CLASSES)


def _train(lm: ge.LanguageModel, out: Path, **changes: Any) -> Trainer:
    tr = Trainer(lm, _data(), CLASSES, neutral=["The sky is blue today."],
                 config=TrainConfig(**{**BASE, **changes, "experiment_dir": str(out)}))
    tr.train()
    return tr


def _disk(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint folder holds (weights, param map, optimiser state), as read from disk."""
    out = {f"model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    if (folder / "trainer_state.safetensors").is_file():
        out.update({f"state.{k}": v for k, v in load_file(str(folder / "trainer_state.safetensors")).items()})
    return out


def _assert_same_run(ref: Path, got: Path) -> None:
    for sub in CHECKPOINTS:
        a, b = _disk(ref / sub), _disk(got / sub)
        assert a.keys() == b.keys(), sub
        for k in a:
            assert torch.equal(a[k], b[k]), (sub, k)
    res = [json.loads((d / "seed_0" / "result.json").read_text()) for d in (ref, got)]
    for r in res:
        r.pop("seconds")
        r.pop("directory")
        for h in r["history"]:
            h.pop("seconds")
    assert res[0] == res[1]  # r, class means and every step's loss, exactly


def _weights(fm: FeatureModel) -> dict[str, torch.Tensor]:
    return {n: to_cpu(p) for n, p in fm.named_parameters()}


# -- the config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["gpu", "meta", "disk", "cuda:x", "", "lazy"])
def test_config_refuses_a_bad_feature_device_in_one_line(bad: str) -> None:
    with pytest.raises(ConfigError, match="feature_device") as err:
        TrainConfig(feature_device=bad)
    assert "\n" not in str(err.value) and "'cpu'" in str(err.value)  # names the fix


def test_config_feature_device_values_round_trip_and_do_not_block_resuming() -> None:
    with pytest.raises(ConfigError, match="feature_device"):
        TrainConfig.from_dict({"feature_device": 1})
    for ok in (None, "cpu", "cuda", "cuda:1"):  # checked for availability when training starts, not here
        cfg = TrainConfig(feature_device=ok)
        assert TrainConfig.from_dict(cfg.to_dict()).feature_device == ok
    assert TrainConfig(feature_device="cpu").training_fingerprint() == TrainConfig().training_fingerprint()
    assert "feature_device" not in TrainConfig().training_fingerprint()


def test_resolve_feature_device(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_feature_device(None, cpu) == cpu
    assert resolve_feature_device("cpu", torch.device("cuda", 0)) == cpu
    assert resolve_feature_device(None, torch.device("cuda", 1)) == torch.device("cuda", 1)  # the base's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA.*feature_device='cpu'"):
        resolve_feature_device("cuda:0", cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_feature_device("cuda", cpu) == torch.device("cuda", 1)  # the index tensors report
    assert resolve_feature_device("cuda:0", cpu) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="2 GPU"):
        resolve_feature_device("cuda:2", cpu)


def test_cuda_feature_device_without_cuda_fails_before_any_work(tiny_llama: ge.LanguageModel, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what this machine has (any machine in the test)
    with pytest.raises(ConfigError, match="no CUDA"):
        _train(tiny_llama, tmp_path / "run", feature_device="cuda")
    assert not (tmp_path / "run").exists()  # nothing was locked, pre-pruned or written


# -- no CUDA on the CPU --------------------------------------------------------------------------------


def test_no_code_calls_dot_cuda() -> None:
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\." + "cuda" + r"\(")  # split: this file must not match itself
    hits = [f"{p.relative_to(root)}:{i + 1}" for d in ("src", "tests") for p in sorted((root / d).rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if pattern.search(line)]
    assert hits == []


def test_cpu_training_takes_no_cuda_path_and_explicit_cpu_equals_the_default(
        tiny_llama: ge.LanguageModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def record(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise RuntimeError(f"CUDA path taken: {name}")
        return call

    for name in ("_lazy_init", "current_device", "set_device", "device_count", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, record(f"torch.cuda.{name}"))
    monkeypatch.setattr(torch.Tensor, "cuda", record("Tensor.cuda"))
    ref = _train(tiny_llama, tmp_path / "default")
    cpu = _train(tiny_llama, tmp_path / "cpu", feature_device="cpu")
    assert calls == []  # recorded even where an exception would have been caught
    assert ref.feature_model.device == cpu.feature_model.device == torch.device("cpu")
    _assert_same_run(tmp_path / "default", tmp_path / "cpu")


# -- the simulated second device -----------------------------------------------------------------------


def test_the_simulated_device_catches_a_mix_and_computes_like_the_cpu() -> None:
    with simulated_device() as sim:
        w = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
        with pytest.raises(DeviceMismatch):
            torch.nn.functional.linear(x, w.to(SIM))
        y = torch.nn.functional.linear(x.to(SIM), w.to(SIM))
        assert isinstance(y, SimTensor) and y.device == SIM and torch.equal(to_cpu(y), x @ w.T)
        with pytest.raises(RuntimeError):
            y.numpy()  # as for a CUDA tensor
        assert sim.mixes == 1


@pytest.mark.parametrize("mode", list(MODES))
def test_training_on_another_device_equals_the_cpu_bit_for_bit(mode: str, tiny_llama: ge.LanguageModel,
                                                               tmp_path: Path, simulated_ok: None) -> None:
    ref = _train(tiny_llama, tmp_path / "cpu", **MODES[mode])
    with simulated_device() as sim:
        got = _train(tiny_llama, tmp_path / "sim", feature_device=SIM.type, **MODES[mode])
        fm = got.feature_model
        assert all(isinstance(p, SimTensor) and p.device == SIM for p in fm.parameters())
        assert got.feature_device == SIM
    assert sim.mixes == 0 and sim.sim_ops > 100  # the feature side ran on the simulated device
    a, b = _weights(ref.feature_model), _weights(fm)
    assert all(torch.equal(a[k], b[k]) for k in a)
    _assert_same_run(tmp_path / "cpu", tmp_path / "sim")  # checkpoints device-independent: the same bytes' tensors
    assert got.seed_results[0].step_losses == ref.seed_results[0].step_losses


def test_a_forgotten_move_of_the_vectors_fails(tiny_llama: ge.LanguageModel, tmp_path: Path, simulated_ok: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's proof: the loop's vectors left on the CPU (as without ``.to(self.device)``) fail."""
    moved = SeedTrainer._vectors

    def forgetful(self: SeedTrainer, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = moved(self, rows)
        return s.cpu(), t.cpu()

    monkeypatch.setattr(SeedTrainer, "_vectors", forgetful)
    with simulated_device(), pytest.raises(DeviceMismatch, match="a .to\\(device\\) is missing"):
        _train(tiny_llama, tmp_path / "sim", feature_device=SIM.type)


def test_a_cpu_checkpoint_resumes_on_another_device(tiny_llama: ge.LanguageModel, tmp_path: Path,
                                                    simulated_ok: None) -> None:
    _train(tiny_llama, tmp_path / "whole")
    _train(tiny_llama, tmp_path / "resumed", max_steps=2)  # last/ holds step 2
    with simulated_device() as sim:
        got = _train(tiny_llama, tmp_path / "resumed", feature_device=SIM.type)  # steps 3-4 on the other device
        assert isinstance(got.feature_model.encoder_weight, SimTensor)
    assert sim.mixes == 0
    steps = json.loads((tmp_path / "resumed" / "seed_0" / "result.json").read_text())["step_losses"]
    assert [s for s, _ in steps] == [1, 2, 3, 4]
    _assert_same_run(tmp_path / "whole", tmp_path / "resumed")


def test_fused_step_refuses_vectors_on_another_device() -> None:
    with simulated_device():
        fm = FeatureModel(6, 1, seed=0).to(SIM)
        opt = FeatureAdamW(fm.parameters(), lr=1e-3)
        with pytest.raises(ValueError, match="feature model's device"):
            fused_mse_step(fm, opt, torch.zeros(1, 6), torch.zeros(1, 6))


# -- encoding, rewriting and the decoder sweep with the feature model elsewhere ------------------------


@pytest.fixture(scope="module")
def trained(tiny_llama: ge.LanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("feature_device") / "run"
    _train(tiny_llama, out, post_prune_topk=None)
    return out


def _spy_devices(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[torch.device]]:
    """Devices of the tensors reaching the base model's side: jvp directions, the rewrite's update."""
    seen: dict[str, list[torch.device]] = {"jvp": [], "rewrite": []}
    init, add = ModelWithGradiend.__init__, ParamMap.scatter_add_

    def spy_add(self: ParamMap, params: Any, vec: torch.Tensor, alpha: float = 1.0) -> None:
        seen["rewrite"].append(torch.device("lazy") if isinstance(vec, SimTensor) else vec.device)
        add(self, params, vec, alpha)

    def spy_init(self: ModelWithGradiend, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        dot = self.engine.jvp_dot

        def spy_dot(texts: Any, f: Any, a: Any, direction: Any, source: Any = "diff") -> torch.Tensor:
            seen["jvp"] += [torch.device("lazy") if isinstance(d, SimTensor) else d.device for d in direction.values()]
            return dot(texts, f, a, direction, source)

        self.engine.jvp_dot = spy_dot  # type: ignore[method-assign]

    monkeypatch.setattr(ParamMap, "scatter_add_", spy_add)
    monkeypatch.setattr(ModelWithGradiend, "__init__", spy_init)
    return seen


def test_encode_rewrite_and_sweep_with_the_feature_model_on_another_device(
        tiny_llama: ge.LanguageModel, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lm, data = tiny_llama, _data()
    part = data.split("val")
    seen = _spy_devices(monkeypatch)
    cpu = ModelWithGradiend.from_pretrained(trained, lm)
    assert cpu.feature_model.device == lm.device  # feature_device=None: the base model's
    expect = {"jvp": cpu.encode(part), "explicit": cpu.encode(part, method="explicit"), "scale": lr_scale(cpu)}
    edit = cpu.as_edit(1e-2, 1.0)
    with cpu.applied(1e-2, -1.0):
        expect["applied"] = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    expect["rewritten"] = cpu.rewrite_base_model(1e-2, 1.0).state_dict()
    sweep = dict(feature_factors=[1.0, -1.0], learning_rates=[1e-3, 1e-1], refine_steps=0, max_rows_per_class=4)
    expect["sweep"] = evaluate_decoder(cpu, part, ("masc", "fem"), ["The sky is blue."], **sweep).to_dict()
    seen["jvp"].clear()
    seen["rewrite"].clear()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    with simulated_device() as sim:
        mwg = ModelWithGradiend.from_pretrained(trained, lm, feature_device=SIM)
        assert isinstance(mwg.feature_model.encoder_weight, SimTensor)
        assert torch.equal(torch.from_numpy(mwg.encode(part)), torch.from_numpy(expect["jvp"]))
        assert torch.equal(torch.from_numpy(mwg.encode(part, method="explicit")), torch.from_numpy(expect["explicit"]))
        assert lr_scale(mwg) == expect["scale"]
        sim_edit = mwg.as_edit(1e-2, 1.0)
        with mwg.applied(1e-2, -1.0):
            assert all(torch.equal(p, expect["applied"][n]) for n, p in lm.model.named_parameters())
        rewritten = mwg.rewrite_base_model(1e-2, 1.0).state_dict()
        got_sweep = evaluate_decoder(mwg, part, ("masc", "fem"), ["The sky is blue."], **sweep).to_dict()
    assert sim.mixes == 0
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())  # restored
    assert rewritten.keys() == expect["rewritten"].keys()
    assert all(torch.equal(rewritten[k], expect["rewritten"][k]) for k in rewritten)
    for e in (edit, sim_edit):
        with e.applied(lm.model):
            state = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
        assert all(torch.equal(state[n], expect["rewritten"][n]) for n in state)
    assert_json_close(expect["sweep"], got_sweep, ignore=("seconds",), rel_tol=0.0, abs_tol=0.0)
    # the base model's side got base-device tensors: the encoder rows and the update were moved, not the model
    assert seen["jvp"] and set(seen["jvp"]) == {lm.device}
    assert seen["rewrite"] and set(seen["rewrite"]) == {lm.device}


def test_a_trainer_reads_its_model_onto_the_feature_device(tiny_llama: ge.LanguageModel, trained: Path,
                                                           simulated_ok: None) -> None:
    cfg = TrainConfig(**{**BASE, "experiment_dir": str(trained), "post_prune_topk": None, "feature_device": SIM.type})
    with simulated_device():
        tr = Trainer(tiny_llama, _data(), CLASSES, config=cfg)
        fm = tr.feature_model  # read from model/
        assert isinstance(fm.decoder_weight, SimTensor) and fm.device == SIM
        assert isinstance(tr.get_model().feature_model.encoder_bias, SimTensor)
        again = FeatureModel.from_pretrained(trained / "model", device=SIM)
        assert again.param_map is not None and again.param_map == fm.param_map  # the map's indices stay on the CPU
    ref = FeatureModel.from_pretrained(trained / "model")
    assert all(torch.equal(_weights(ref)[k], v) for k, v in _weights(fm).items())


# -- data parallel: the comm device (CPU under gloo) is not the feature device --------------------------

# post_prune_topk=None: the kept model is the trained one, comparable with its init
DP_RUNS: dict[str, dict[str, Any]] = {"live": {"post_prune_topk": None},
                                      "fused": {"fused_step": True, "max_steps": 2, "post_prune_topk": None},
                                      "batch1": {"train_batch_size": 1, "max_steps": 2, "post_prune_topk": None}}
# "batch1": one example per step, so rank 1 holds none (an empty batch on the feature device)


def _dp_worker(root: str) -> None:
    torch.set_num_threads(1)
    config_module.FEATURE_DEVICE_TYPES = (*config_module.FEATURE_DEVICE_TYPES, SIM.type)
    lm = ge.load_model("tiny-llama")
    out: dict[str, Any] = {}
    with simulated_device() as sim:
        for name, changes in DP_RUNS.items():
            fm = _train(lm, Path(root, name), feature_device=SIM.type, **changes).feature_model
            out[name] = {"sim": all(isinstance(p, SimTensor) for p in fm.parameters()),
                         "model": {k: v.tolist() for k, v in _weights(fm).items()}}
    out["mixes"] = sim.mixes
    Path(root, f"rank{dist.rank()}.json").write_text(json.dumps(out))


def test_data_parallel_with_the_feature_model_on_another_device_equals_one_process(
        tiny_llama: ge.LanguageModel, tmp_path: Path) -> None:
    (tmp_path / "two").mkdir()
    dist.launch_local(_dp_worker, 2, str(tmp_path / "two"))
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks
    try:
        for name, changes in DP_RUNS.items():
            fm = _train(tiny_llama, tmp_path / "one" / name, **changes).feature_model
            ref = _weights(fm)
            assert ranks[0][name]["sim"] and ranks[1][name]["sim"]
            assert ranks[0][name]["model"] == ranks[1][name]["model"]  # every rank holds the same model
            got = {k: torch.tensor(v) for k, v in ranks[0][name]["model"].items()}
            assert got.keys() == ref.keys()
            for k, v in ref.items():  # float addition order aside (test_dist_train measured <= 4.2e-8)
                torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5, msg=k)
            # training moved the model far beyond the tolerance (the comparison can fail)
            init = FeatureModel(fm.input_dim, 1, param_map=fm.param_map, seed=0)
            assert (got["decoder_weight"] - init.decoder_weight.detach()).abs().max() > 1e-3
    finally:
        torch.set_num_threads(threads)
    assert ranks[0]["mixes"] == ranks[1]["mixes"] == 0
