"""Memory modes of GRADIEND training (issue 16.3) on a tiny feature model: optimizer-in-backward is
bit-identical to the default AdamW step, the fused (no-autograd) step equals autograd within float
tolerance and creates no n-sized temporary, bf16 moments stay close, and every mode's optimiser state
round-trips through a checkpoint file to the model of an uninterrupted run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gradedit._files import load_tree, save_tree_atomic
from gradedit.errors import ConfigError
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.train.adamw import FeatureAdamW, stochastic_round_
from gradedit.gradiend.train.config import TrainConfig
from gradedit.gradiend.train.optim import FeatureOptimizer

N = 3000  # inputs of the tiny feature model
MODES = {  # name -> TrainConfig fields
    "default": {},
    "in_backward": {"optimizer_in_backward": True},
    "bf16": {"optimizer_state": "bf16"},
    "bf16_in_backward": {"optimizer_state": "bf16", "optimizer_in_backward": True},
    "bf16_sr": {"optimizer_state": "bf16-sr"},
    "fused": {"fused_step": True},
    "fused_bf16": {"fused_step": True, "optimizer_state": "bf16"},
}


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig(learning_rate=1e-3, weight_decay=0.01, **kw)  # type: ignore[arg-type]


def _batches(steps: int, batch: int = 3, n: int = N, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sources and targets ``[batch, n]`` with a learnable relation (target = 0.5 source + noise)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        src = torch.randn(batch, n, generator=g)
        out.append((src, 0.5 * src + 0.1 * torch.randn(batch, n, generator=g)))
    return out


def _one_step(fm: FeatureModel, opt: FeatureOptimizer, src: torch.Tensor, tgt: torch.Tensor) -> tuple[float, list[str]]:
    """What the training loop does for one step (the fused path when the config asks for it)."""
    if opt.fused:
        loss, bad = opt.fused_step(src, tgt)
        return float(loss), bad
    rec, _ = fm(src)
    loss = F.mse_loss(rec, tgt)
    return float(loss.detach()), opt.step(loss)


def _train(mode: dict, batches: list, k: int = 1, fm: FeatureModel | None = None,
           state: dict | None = None, reduce_grad=None) -> tuple[FeatureModel, FeatureOptimizer, list[float]]:
    fm = fm if fm is not None else FeatureModel(N, k, seed=3)
    opt = FeatureOptimizer(fm, _cfg(**mode), reduce_grad=reduce_grad)
    if state is not None:
        opt.load_state_dict(state)
    losses = []
    for src, tgt in batches:
        loss, bad = _one_step(fm, opt, src, tgt)
        assert bad == []
        losses.append(loss)
    return fm, opt, losses


def _assert_equal_models(a: FeatureModel, b: FeatureModel) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name


def _max_diff(a: FeatureModel, b: FeatureModel) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("k", [1, 2])
def test_in_backward_is_bit_identical_to_the_default_and_to_torch_adamw(k):
    batches = _batches(12)
    ref, _, ref_losses = _train(MODES["default"], batches, k)
    inb, opt, losses = _train(MODES["in_backward"], batches, k)
    _assert_equal_models(ref, inb)
    assert losses == ref_losses
    assert all(p.grad is None for p in inb.parameters())  # every gradient was freed in backward
    # the oracle: torch's own fused AdamW, step by step
    fm = FeatureModel(N, k, seed=3)
    torch_opt = torch.optim.AdamW(fm.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    for src, tgt in batches:
        torch_opt.zero_grad()
        F.mse_loss(fm(src)[0], tgt).backward()
        torch_opt.step()
    _assert_equal_models(fm, inb)
    # same state layout as torch's AdamW
    mine, theirs = opt.state_dict(), torch_opt.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    for i, st in theirs["state"].items():
        assert {key: v.dtype for key, v in st.items()} == {key: v.dtype for key, v in mine["state"][i].items()}
        assert all(torch.equal(v, mine["state"][i][key]) for key, v in st.items())


def test_in_backward_hooks_act_only_inside_step():
    fm = FeatureModel(N, 1, seed=3)
    opt = FeatureOptimizer(fm, _cfg(**MODES["in_backward"]))
    before = [p.detach().clone() for p in fm.parameters()]
    src, tgt = _batches(1)[0]
    F.mse_loss(fm(src)[0], tgt).backward()  # a backward that is not a training step (e.g. a probe)
    assert all(p.grad is not None for p in fm.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, fm.parameters()))
    opt.close()
    fm.zero_grad(set_to_none=True)
    F.mse_loss(fm(src)[0], tgt).backward()
    assert all(torch.equal(a, p) for a, p in zip(before, fm.parameters()))


def _train_scaled_loss(mode: dict, batches: list, scale: float) -> FeatureModel:
    fm = FeatureModel(N, 1, seed=3)
    opt = FeatureOptimizer(fm, _cfg(**mode))
    for src, tgt in batches:
        assert opt.step(F.mse_loss(fm(src)[0], tgt) * scale) == []
    return fm


@pytest.mark.parametrize("mode", ["default", "in_backward", "fused"])
def test_reduce_grad_runs_on_every_gradient_before_its_update(mode):
    """A reducer that doubles each gradient (what an all-reduce over two ranks with equal gradients does)
    must equal training on twice the loss: bit for bit when autograd makes the gradients, within float
    tolerance for the fused step (which hands its gradient chunks to the reducer)."""
    batches = _batches(6)
    calls: list[int] = []

    def double(g: torch.Tensor) -> None:
        calls.append(g.numel())
        g.mul_(2.0)

    reduced, _, _ = _train(MODES[mode], batches, reduce_grad=double)
    n_weights = sum(p.numel() for p in reduced.parameters())
    if mode == "fused":
        assert sum(calls) == 6 * (n_weights + 2)  # + the two exit flags per step
        assert _max_diff(reduced, _train_scaled_loss(MODES["default"], batches, 2.0)) < 1e-5
    else:
        assert sum(calls) == 6 * n_weights
        _assert_equal_models(reduced, _train_scaled_loss(MODES[mode], batches, 2.0))
    assert _max_diff(reduced, _train(MODES["default"], batches)[0]) > 1e-6  # the doubling did change the model


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("chunk", [777, 1 << 20])
def test_fused_step_equals_autograd_within_float_tolerance(k, chunk):
    from gradedit.gradiend.train import fused

    batches = _batches(15)
    ref, _, ref_losses = _train(MODES["default"], batches, k)
    fm = FeatureModel(N, k, seed=3)
    opt = FeatureOptimizer(fm, _cfg(**MODES["fused"]))
    losses = []
    for src, tgt in batches:
        loss, bad = fused.fused_mse_step(fm, opt.opt, src, tgt, chunk=chunk)  # type: ignore[arg-type]
        assert bad == []
        losses.append(float(loss))
    assert max(abs(a - b) for a, b in zip(ref_losses, losses)) < 1e-6
    assert _max_diff(ref, FeatureModel(N, k, seed=3)) > 1e-3  # the weights did move: the comparison is not vacuous
    assert _max_diff(ref, fm) < 1e-5


class _Largest(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_fused_step_creates_no_input_sized_temporary():
    n, batch, chunk = 50_000, 2, 4096
    from gradedit.gradiend.train import fused

    fm = FeatureModel(n, 1, seed=0)
    opt = FeatureOptimizer(fm, _cfg(**MODES["fused_bf16"]))
    src, tgt = _batches(1, batch, n)[0]
    fused.fused_mse_step(fm, opt.opt, src, tgt, chunk=chunk)  # type: ignore[arg-type]  # moments exist now
    with _Largest() as seen:
        fused.fused_mse_step(fm, opt.opt, src, tgt, chunk=chunk)  # type: ignore[arg-type]
    assert 0 < seen.largest <= max(batch * chunk, fused.FINITE_CHUNK)
    with _Largest() as autograd:  # the check can fail: the autograd step makes [batch, n] tensors
        F.mse_loss(fm(src)[0], tgt).backward()
    assert autograd.largest >= batch * n


def test_step_refuses_a_fused_config_and_fused_step_a_plain_one():
    fm = FeatureModel(N, 1, seed=0)
    src, tgt = _batches(1)[0]
    with pytest.raises(ConfigError, match="fused_step"):
        FeatureOptimizer(fm, _cfg(fused_step=True)).step(F.mse_loss(fm(src)[0], tgt))
    with pytest.raises(ConfigError, match="fused_step=True"):
        FeatureOptimizer(fm, _cfg()).fused_step(src, tgt)


@pytest.mark.parametrize("mode", ["bf16", "bf16_sr", "fused_bf16"])
def test_bf16_moments_halve_the_state_and_stay_close_to_fp32(mode):
    batches = _batches(20)
    ref, ref_opt, _ = _train(MODES["default"], batches)
    low, opt, _ = _train(MODES[mode], batches)
    states = opt.state_dict()["state"]
    assert all(st[key].dtype == torch.bfloat16 for st in states.values() for key in ("exp_avg", "exp_avg_sq"))
    assert all(p.dtype == torch.float32 for p in low.parameters())  # master weights stay fp32
    moved = max(float((p - q).abs().max()) for p, q in zip(ref.parameters(), FeatureModel(N, 1, seed=3).parameters()))
    diff = _max_diff(ref, low)
    assert 0 < diff < 0.02 * moved  # measured ~0.4 % of the largest move after 20 steps
    cos = F.cosine_similarity(ref.decoder_weight.reshape(-1), low.decoder_weight.reshape(-1), dim=0)
    assert cos > 0.999


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour():
    x = torch.full((200_000,), 1.0 + 1 / 512 + 1 / 1024)  # between two bf16 values, 3/4 of the way up
    out = stochastic_round_(torch.empty(x.shape, dtype=torch.bfloat16), x, torch.Generator().manual_seed(0))
    lo, hi = torch.tensor(1.0 + 1 / 256 - 1 / 256, dtype=torch.bfloat16), torch.tensor(1.0 + 1 / 128, dtype=torch.bfloat16)
    assert set(out.float().unique().tolist()) == {float(lo), float(hi)}
    assert abs(float(out.double().mean()) - float(x[0])) < 2e-5  # round-to-nearest would be off by 1.95e-3
    neg = stochastic_round_(torch.empty(x.shape, dtype=torch.bfloat16), -x, torch.Generator().manual_seed(0))
    assert torch.equal(neg, -out)  # sign-magnitude: the same draws round -x to -(the same neighbour)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_checkpoint_round_trip_resumes_to_the_uninterrupted_model(mode, tmp_path: Path):
    batches = _batches(10)
    full, _, _ = _train(MODES[mode], batches)
    first, opt, _ = _train(MODES[mode], batches[:6])
    save_tree_atomic(tmp_path / "state.safetensors", {"optimizer": opt.state_dict()})
    first.save_pretrained(tmp_path / "fm")
    del first, opt
    state = load_tree(tmp_path / "state.safetensors", "fix")["optimizer"]
    resumed, _, _ = _train(MODES[mode], batches[6:], fm=FeatureModel.from_pretrained(tmp_path / "fm"), state=state)
    _assert_equal_models(full, resumed)


def test_default_state_resumes_in_backward_and_back():
    """The two stepping modes share one state layout (in_backward is left out of the fingerprint)."""
    batches = _batches(8)
    full, _, _ = _train(MODES["default"], batches)
    fm, opt, _ = _train(MODES["default"], batches[:3])
    fm2, opt2, _ = _train(MODES["in_backward"], batches[3:6], fm=fm, state=copy.deepcopy(opt.state_dict()))
    fm3, _, _ = _train(MODES["default"], batches[6:], fm=fm2, state=copy.deepcopy(opt2.state_dict()))
    _assert_equal_models(full, fm3)


def test_non_finite_gradient_each_mode_reports_it(tmp_path: Path):
    """A source entry of +inf saturates tanh (finite loss) but makes W_e's gradient NaN."""
    src, tgt = _batches(1)[0]
    src = src.clone()
    src[0, 5] = float("inf")
    for mode in ("default", "in_backward", "fused"):
        fm = FeatureModel(N, 1, seed=3)
        opt = FeatureOptimizer(fm, _cfg(**MODES[mode]))
        before = {n: p.detach().clone() for n, p in fm.named_parameters()}
        loss, bad = _one_step(fm, opt, src, tgt)
        assert loss == loss and "encoder_weight" in bad, mode  # finite loss, bad encoder gradient
        assert torch.equal(before["encoder_weight"], fm.encoder_weight), mode
        if mode != "in_backward":  # after backward / fused: nothing of the step is applied
            assert all(torch.equal(before[n], p) for n, p in fm.named_parameters()), mode
        assert all(p.grad is None for p in fm.parameters()), mode


def test_feature_adamw_refuses_a_foreign_state():
    fm = FeatureModel(N, 1, seed=0)
    opt = FeatureAdamW(fm.parameters(), lr=1e-3)
    from gradedit.errors import ArtifactError

    with pytest.raises(ArtifactError, match="does not belong"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})
    bad = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(5), "exp_avg_sq": torch.zeros(5)}},
           "param_groups": [{"params": [0, 1, 2, 3]}]}
    with pytest.raises(ArtifactError, match="not an AdamW state"):
        opt.load_state_dict(bad)


def test_config_validates_and_fingerprints_the_memory_options():
    with pytest.raises(ConfigError, match="optimizer_state must be one of"):
        TrainConfig(optimizer_state="fp16")
    with pytest.raises(ConfigError, match="set one of them"):
        TrainConfig(fused_step=True, optimizer_in_backward=True)
    with pytest.raises(ConfigError, match="optimizer_in_backward must be"):
        TrainConfig(optimizer_in_backward="yes")  # type: ignore[arg-type]
    base = TrainConfig().training_fingerprint()
    assert not {"optimizer_state", "optimizer_in_backward", "fused_step"} & set(base)  # old runs stay resumable
    assert TrainConfig(optimizer_in_backward=True).training_fingerprint() == base  # bit-identical: resumable
    assert TrainConfig(optimizer_state="bf16").training_fingerprint() != base
    assert TrainConfig(optimizer_state="bf16-sr").training_fingerprint() != TrainConfig(optimizer_state="bf16").training_fingerprint()
    assert TrainConfig(fused_step=True).training_fingerprint() != base


@pytest.mark.parametrize("mode", sorted(MODES))
def test_feature_model_and_optimiser_are_freed_without_a_garbage_collection(mode):
    """No reference cycle: when the loop drops them, the 3n weights and their moments go at once (a cycle
    would keep them until the next gc run, beside whatever the run allocates next)."""
    import gc
    import weakref

    fm = FeatureModel(N, 1, seed=0)
    opt = FeatureOptimizer(fm, _cfg(**MODES[mode]))
    src, tgt = _batches(1)[0]
    _one_step(fm, opt, src, tgt)
    refs = [weakref.ref(fm), weakref.ref(opt), weakref.ref(opt.opt)]
    enabled = gc.isenabled()
    gc.disable()
    try:
        del fm, opt
        assert [r() is None for r in refs] == [True, True, True]
    finally:
        if enabled:
            gc.enable()
