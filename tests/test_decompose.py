"""gradedit.decompose on toy models: recovery of known mechanisms in superposition, exactness,
persistence, resume, refusal of another model, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradedit.decompose import DecomposeConfig, Decomposition, decompose
from gradedit.errors import DecompositionError

N_FEAT, N_HID = 5, 2


class TMS(nn.Module):
    """Toy model of superposition, built by hand: 5 features on a pentagon in 2 hidden dims,
    ``relu(W2 W1 x + b)``. Feature ``k``'s mechanism is ``w_k e_kᵀ`` in ``linear1`` and ``e_k w_kᵀ``
    in ``linear2`` — five rank-1 mechanisms in each rank-2 layer, so SVD cannot find them."""

    def __init__(self, bias: float = -0.5) -> None:
        super().__init__()
        self.linear1 = nn.Linear(N_FEAT, N_HID, bias=False)
        self.linear2 = nn.Linear(N_HID, N_FEAT)
        ang = torch.arange(N_FEAT) * 2 * math.pi / N_FEAT
        W = torch.stack([ang.cos(), ang.sin()])  # [2, 5], column k = w_k
        with torch.no_grad():
            self.linear1.weight.copy_(W)
            self.linear2.weight.copy_(W.T)
            self.linear2.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear2(self.linear1(x)))


def sparse_features(n: int, p: float = 0.05, seed: int = 0) -> torch.Tensor:
    """``[n, 5]``: each feature active with probability ``p``, value ``U(0, 1)``."""
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(n, N_FEAT, generator=g) < p
    return torch.rand(n, N_FEAT, generator=g) * active


def mechanisms(model: TMS, layer: str) -> torch.Tensor:
    """True mechanisms of ``layer`` as unit-norm flattened ``[out, in]`` matrices ``[5, out*in]``."""
    W = model.linear1.weight.detach()
    out = []
    for k in range(N_FEAT):
        e = torch.zeros(N_FEAT)
        e[k] = 1
        M = torch.outer(W[:, k], e) if layer == "linear1" else torch.outer(e, W[:, k])
        out.append(M.reshape(-1) / M.norm())
    return torch.stack(out)


def cosines(weights: torch.Tensor, mech: torch.Tensor) -> torch.Tensor:
    """|cos| between components ``[C, out, in]`` and mechanisms ``[5, out*in]``: ``[C, 5]``."""
    flat = weights.reshape(weights.shape[0], -1)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (flat @ mech.T).abs()


def learned(dec: Decomposition, layer: str) -> torch.Tensor:
    V, U = dec.components(layer)
    return torch.einsum("co,ic->coi", U, V)  # [C, out, in]


def svd_weights(model: TMS, layer: str) -> torch.Tensor:
    W = getattr(model, layer).weight.detach()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return torch.stack([S[i] * torch.outer(U[:, i], Vh[i]) for i in range(S.numel())])


@pytest.fixture(scope="module")
def tms() -> TMS:
    return TMS()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return sparse_features(20000)


@pytest.fixture(scope="module")
def dec1(tms: TMS, x: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> Decomposition:
    """``linear1`` decomposed with its own output as the objective (5 mechanisms, 20 components)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dec1")
    return decompose(tms, "linear1", 20, x, objective="layer", steps=600, batch_size=512, seed=0, lr=0.01,
                     importance_coeff=0.1, init="data", out=out)


def test_layer_objective_recovers_mechanisms_that_svd_cannot(tms: TMS, dec1: Decomposition) -> None:
    mech = mechanisms(tms, "linear1")
    best = cosines(learned(dec1, "linear1"), mech).max(0).values  # [5] best match per mechanism
    svd_best = cosines(svd_weights(tms, "linear1"), mech).max(0).values
    assert best.mean() >= 0.9, best
    assert svd_best.mean() < 0.7, svd_best  # two singular vectors for five mechanisms: at most ~0.63
    assert best.mean() - svd_best.mean() > 0.25


def test_importance_fires_only_for_the_active_mechanism(tms: TMS, dec1: Decomposition) -> None:
    cos = cosines(learned(dec1, "linear1"), mechanisms(tms, "linear1"))  # [C, 5]
    owner = torch.where(cos.max(1).values > 0.9, cos.argmax(1), -1)
    for k in range(N_FEAT):
        e = torch.zeros(N_FEAT)
        e[k] = 0.8
        g = dec1.importance("linear1", e)
        assert g[owner == k].max() > 0.9, (k, g)
        assert g[owner != k].max() < 0.1, (k, g)
    assert (dec1.importance("linear1", torch.zeros(N_FEAT)) < 0.1).all()


def test_statistics(dec1: Decomposition) -> None:
    s = dec1.stats["linear1"]
    assert s["alive"] == sum(f > 0 for f in s["firing_frequency"])
    assert 1 <= s["alive"] <= 20 and len(s["mean_importance"]) == 20
    # ~23 % of rows have an active feature; the optimum fires one component per active feature
    assert 0.05 < s["mean_l0"] < 0.6
    m = dec1.metrics
    assert m["faithfulness_relative"] < 1e-3 and dec1.faithfulness() < 1e-3
    r = m["layers"]["linear1"]
    assert r["rel_mse_stochastic"] < 0.05 and r["rel_mse_importance"] < 0.1 and r["rel_mse_components"] < 1e-3


def test_output_objective_recovers_both_tms_layers(tms: TMS, x: torch.Tensor) -> None:
    torch.set_num_threads(1)
    dec = decompose(tms, ["linear1", "linear2"], 20, x, objective="output", steps=1000, batch_size=512, seed=1,
                    lr=0.01, importance_coeff=0.3, init="data")
    best, svd_best = [], []
    for layer in ("linear1", "linear2"):
        mech = mechanisms(tms, layer)
        best.append(cosines(learned(dec, layer), mech).max(0).values)
        svd_best.append(cosines(svd_weights(tms, layer), mech).max(0).values)
    b, sb = torch.cat(best), torch.cat(svd_best)  # 10 mechanisms: 5 per layer
    assert b.mean() >= 0.9 and min(x.mean() for x in best) >= 0.85, best
    assert sb.mean() < 0.7, sb
    assert dec.metrics["output"]["mse_importance"] < 1e-3


def test_all_masks_one_reproduce_the_model_exactly(tms: TMS, dec1: Decomposition, x: torch.Tensor) -> None:
    with torch.no_grad():
        base = tms(x[:256])
        with dec1.masked(tms, {"linear1": torch.ones(20)}):
            same = tms(x[:256])
        with dec1.masked(tms, {"linear1": torch.zeros(20)}, residual=0.0):
            off = tms(x[:256])
    assert torch.equal(base, same)
    assert not torch.equal(base, off)
    assert torch.equal(tms(x[:256]), base)  # hooks are gone, weights untouched


def test_save_load_identical_importances(tms: TMS, dec1: Decomposition, x: torch.Tensor, tmp_path: Path) -> None:
    dec1.save(tmp_path / "d")
    back = Decomposition.load(tmp_path / "d", tms)
    assert torch.equal(back.importance("linear1", x[:512]), dec1.importance("linear1", x[:512]))
    V, U = back.components("linear1")
    assert torch.equal(V, dec1.components("linear1")[0]) and torch.equal(U, dec1.components("linear1")[1])
    assert back.config == dec1.config and back.stats == dec1.stats and back.infos == dec1.infos
    assert back.faithfulness() == dec1.faithfulness()


def _tiny_run(tms: TMS, x: torch.Tensor, out: Path | None, **kw: object) -> Decomposition:
    """A 5 + 30 step run (warm-up from a random U, then the main phase) of both TMS layers."""
    opts: dict = {"objective": "output", "steps": 30, "batch_size": 64, "seed": 3, "faithfulness_warmup_steps": 5,
                  "checkpoint_every": 10, **kw}
    return decompose(tms, ["linear1", "linear2"], 8, x[:4096], out=out, **opts)


def test_resume_equals_uninterrupted(tms: TMS, x: torch.Tensor, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ref = _tiny_run(tms, x, tmp_path / "ref")

    def crash(step: int, _terms: dict[str, float]) -> None:
        if step == 22:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tms, x, tmp_path / "cut", on_step=crash)
    assert (tmp_path / "cut" / "checkpoint.safetensors").is_file()
    resumed = _tiny_run(tms, x, tmp_path / "cut")
    assert not (tmp_path / "cut" / "checkpoint.safetensors").exists()
    for layer in ("linear1", "linear2"):
        a, b = ref.layer(layer).state_dict(), resumed.layer(layer).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), layer
    assert resumed.meta["steps_done"] == ref.meta["steps_done"] == 35
    # the same seed gives the same result; a finished folder is loaded, not retrained
    again = _tiny_run(tms, x, tmp_path / "ref")
    assert torch.equal(again.components("linear1")[0], ref.components("linear1")[0])
    with pytest.raises(DecompositionError, match="other options"):
        _tiny_run(tms, x, tmp_path / "ref", lr=0.02)


def test_another_model_is_refused(tms: TMS, dec1: Decomposition, tmp_path: Path) -> None:
    dec1.save(tmp_path / "d")
    other = TMS(bias=-0.4)  # linear1 identical: the fingerprint covers only decomposed layers
    Decomposition.load(tmp_path / "d", other)
    changed = TMS()
    with torch.no_grad():
        changed.linear1.weight[0, 0] += 1e-3
    with pytest.raises(DecompositionError, match="another model"):
        Decomposition.load(tmp_path / "d", changed)
    with pytest.raises(DecompositionError, match="another model"), dec1.masked(changed):
        pass
    with pytest.raises(DecompositionError, match="no module"):
        dec1.check(nn.Sequential(nn.Linear(5, 2)))
    with pytest.raises(DecompositionError, match="no decomposition"):
        Decomposition.load(tmp_path / "missing")


@pytest.mark.parametrize("kwargs, match", [
    ({"modules": "nope*"}, "matches no module"),
    ({"modules": ""}, "matches no module"),
    ({"modules": []}, "no module pattern"),
    ({"n_components": 0}, "n_components must be an int >= 1"),
    ({"n_components": {"linear2": 4}}, "matches no key of n_components"),
    ({"n_components": 2.5}, "n_components must be an int"),
    ({"steps": 0}, "steps must be a positive int"),
    ({"objective": "kl"}, "objective must be"),
    ({"colour": "red"}, "unknown decomposition option"),
    ({"inputs": []}, "inputs is empty"),
    ({"inputs": ["some text"]}, "texts need a gradedit LanguageModel"),
    ({"inputs": "text"}, "one string"),
])
def test_bad_input(tms: TMS, x: torch.Tensor, kwargs: dict, match: str) -> None:
    args = {"modules": "linear1", "n_components": 4, "inputs": x[:64], **kwargs}
    with pytest.raises(DecompositionError, match=match):
        decompose(tms, args.pop("modules"), args.pop("n_components"), args.pop("inputs"), **args)


def test_non_linear_module_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.LayerNorm(4))
    with pytest.raises(DecompositionError, match="not a linear layer"):
        decompose(model, "2", 4, torch.randn(8, 4))
    with pytest.raises(DecompositionError, match="not a linear layer"):
        decompose(model, ["0", "1"], 4, torch.randn(8, 4))


def test_config_validation() -> None:
    with pytest.raises(DecompositionError, match="unknown decomposition option"):
        DecomposeConfig.from_dict({"step": 3})
    with pytest.raises(DecompositionError, match="lr must be > 0"):
        DecomposeConfig(lr=0.0)
    cfg = DecomposeConfig(steps=100, p_start=2.0, p_end=0.4)
    assert cfg.p_at(0) == 2.0 and cfg.p_at(100) == pytest.approx(0.4) and cfg.p_at(50) == pytest.approx(1.2)
    assert DecomposeConfig.from_dict(cfg.to_dict()) == cfg


def test_deterministic_and_leaves_the_model_alone(tms: TMS, x: torch.Tensor) -> None:
    torch.set_num_threads(1)
    before = {k: v.clone() for k, v in tms.state_dict().items()}
    flags = [p.requires_grad for p in tms.parameters()]
    tms.train()
    a = _tiny_run(tms, x, None)
    b = _tiny_run(tms, x, None)
    for layer in ("linear1", "linear2"):
        sa, sb = a.layer(layer).state_dict(), b.layer(layer).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = _tiny_run(tms, x, None, seed=4)
    assert not torch.equal(c.components("linear1")[0], a.components("linear1")[0])
    assert all(torch.equal(v, before[k]) for k, v in tms.state_dict().items())
    assert [p.requires_grad for p in tms.parameters()] == flags and tms.training
    tms.eval()
