"""The few-pass decoder search (search="fast"): derivatives along a decoder line, boundary and peak
searches with known answers, and the same selection as an exhaustive fine grid on a tiny model."""

import math

import numpy as np
import pytest
import torch

import gradedit as ge
from gradedit import metrics
from gradedit.data.schema import PairDataset
from gradedit.gradiend.evaluate.decoder import evaluate_decoder, lr_scale, make_probe
from gradedit.gradiend.evaluate.fast import BoundarySearch, PeakSearch, key_weights
from gradedit.gradiend.evaluate.line import LineFunction, LineTaylor, line_taylor, quadratic_root
from gradedit.gradiend.evaluate.selectors import perplexity_constraint
from gradedit.gradiend.feature_model import FeatureModel
from gradedit.gradiend.model import ModelWithGradiend
from gradedit.models import select_parameters
from gradedit.models.param_map import ParamMap
from pronoun_rows import pronoun_records

NEUTRAL = ["The city is quiet and the house is old.", "The quick brown fox jumps over the lazy dog.",
           "Numbers like 1, 2, 3 and symbols appear too.", "The teacher knows the city is quiet."]
CLASSES = ("masc", "fem")


def _mwg(lm: ge.LanguageModel, seed: int = 0) -> ModelWithGradiend:
    """A random decoder over every block matrix: along ff=+1 the neutral perplexity rises smoothly."""
    pm = ParamMap.from_params(select_parameters(lm.model))
    return ModelWithGradiend(lm, FeatureModel(pm.size, param_map=pm, seed=seed))


@pytest.fixture(scope="module")
def data():
    return PairDataset.from_records(pronoun_records(), target_classes=list(CLASSES))


@pytest.fixture(scope="module")
def mwg(tiny_llama):
    return _mwg(tiny_llama)


@pytest.fixture(scope="module")
def llama64():
    lm = ge.load_model("tiny-llama")
    lm.model.double()
    return lm


def test_quadratic_root():
    assert quadratic_root(2.0, 0.0, 1.0) == pytest.approx(0.5)
    x = quadratic_root(1.0, 4.0, 3.0)  # x + 2x² = 3 -> x = 1
    assert x == pytest.approx(1.0)
    assert quadratic_root(-1.0, 0.0, 1.0) is None  # falling line never rises
    assert quadratic_root(1.0, -4.0, 1.0) is None  # parabola peaks at 1/8 below 1
    x = quadratic_root(-1.0, 2.0, 1.0)  # dips first: -x + x² = 1 -> x = (1 + √5) / 2
    assert x == pytest.approx((1 + math.sqrt(5)) / 2)


def test_jvp_derivatives_match_finite_differences(llama64, data):
    mwg = _mwg(llama64)
    probe = make_probe(mwg, data, CLASSES, NEUTRAL, 16, None, None, None)
    fn = LineFunction(mwg, probe.prompts, probe.neutral, [probe.token_ids[c] for c in CLASSES])
    scale = lr_scale(mwg)
    exact = line_taylor(fn, -1.0, "jvp2")
    v = mwg.feature_model.decode(-1.0).detach()
    h = 0.03 * scale  # RMSNorm and the rotary tables round through fp32: Richardson-extrapolated wide steps
    with torch.no_grad():
        f = {k: fn(v, torch.tensor(k * h, dtype=torch.float64)).double() for k in (-2, -1, 0, 1, 2)}

    def d1(k):
        return (f[k] - f[-k]) / (2 * k * h)

    def d2(k):
        return (f[k] - 2 * f[0] + f[-k]) / (k * h) ** 2

    fd1, fd2 = (4 * d1(1) - d1(2)) / 3, (4 * d2(1) - d2(2)) / 3
    got = torch.cat([torch.from_numpy(exact.nll)[:, None], torch.from_numpy(exact.probs).reshape(3, -1)], 1)
    assert torch.allclose(got[0], f[0], rtol=1e-10, atol=1e-12)
    assert ((got[1] - fd1).abs() / fd1.abs().max()).max() < 1e-4
    assert ((got[2] - fd2).abs() / fd2.abs().max()).max() < 2e-3
    assert exact.nll[2] != 0 and np.abs(exact.probs[1]).max() > 0  # the line really moves them
    # the cheaper first-order variant (jvp at ±h) agrees with the exact derivatives
    fd = line_taylor(fn, -1.0, "fd", h=1e-3 * scale)
    assert fd.passes == 2 and exact.passes == 1
    for a, b in [(fd.nll, exact.nll), (fd.probs.reshape(3, -1), exact.probs.reshape(3, -1))]:
        assert (np.abs(a - b).max(-1) <= 1e-3 * np.abs(b).max(-1) + 1e-15).all()


def test_taylor_value_is_the_probe_score(mwg, data):
    probe = make_probe(mwg, data, CLASSES, NEUTRAL, 16, None, None, None)
    fn = LineFunction(mwg, probe.prompts, probe.neutral, [probe.token_ids[c] for c in CLASSES], batch_size=3)
    t = line_taylor(fn, 1.0)
    base = probe.score()
    assert t.tokens == metrics.lm_scores(mwg.lm, NEUTRAL)["tokens"]
    assert t.ce[0] == pytest.approx(math.log(base["perplexity"]), rel=1e-5)
    for key in ("masc", "fem", "masc_weaken", "fem_weaken"):
        w, off = key_weights(probe, key)
        assert t.metric(w, off)[0] == pytest.approx(base["metrics"][key], rel=1e-4)


def test_fast_picks_the_fine_grid_point_within_tolerance(mwg, data):
    scale = lr_scale(mwg)
    kw = dict(target_class="masc", max_rows_per_class=None, selector="perplexity:0.015")
    fine_lrs = [scale * r for r in np.logspace(-2, 0, 101)]  # neighbours 4.7 % apart
    fine = evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="grid", learning_rates=fine_lrs, refine_steps=0, **kw)
    tol = 0.02
    fast = evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="fast", learning_rates=[1e-2 * scale, scale],
                            tolerance=tol, **kw)
    f, g = fast["masc"], fine["masc"]
    assert g.admissible and fast.info["lines"]["1.0"]["boundary_hi"] is not None  # the constraint binds in range
    assert f.admissible and f.feature_factor == g.feature_factor
    assert abs(math.log(f.learning_rate / g.learning_rate)) <= math.log(1.047) + math.log1p(tol)
    assert f.value >= g.value * (1 - 1e-3)
    # the prediction from derivatives at lr = 0 lands within 20 % of the real boundary
    line = fast.info["lines"][repr(f.feature_factor)]
    assert line["predicted_lr"] == pytest.approx(f.learning_rate, rel=0.2)


def test_fast_respects_the_constraint_on_real_passes_and_counts_its_passes(mwg, data, monkeypatch):
    import gradedit.gradiend.evaluate.probe as P

    calls = []
    real = P.DecoderProbe.score
    monkeypatch.setattr(P.DecoderProbe, "score", lambda self: calls.append(1) or real(self))
    scale = lr_scale(mwg)
    lrs = [scale * r for r in np.logspace(-4, 0, 5)]
    fast = evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="fast", learning_rates=lrs, selector="perplexity:0.015")
    n_fast = len(calls)
    grid = evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="grid", learning_rates=lrs, selector="perplexity:0.015")
    n_grid = len(calls) - n_fast
    assert fast.info["scoring_passes"] == n_fast and grid.info["scoring_passes"] == n_grid
    # one derivative pass per feature factor for jvp-of-jvp, two (±h) for the default fd
    assert fast.info["derivatives"] == "fd"
    assert fast.info["forward_passes"] == n_fast + fast.info["jvp_passes"] and fast.info["jvp_passes"] == 2 * 2
    assert grid.info["forward_passes"] == n_grid == 1 + 10 + 2 * 4
    assert fast.info["forward_passes"] < grid.info["forward_passes"]
    base_ppl = metrics.perplexity(mwg.lm, NEUTRAL)
    for sel in fast.values():
        assert sel.admissible
        with mwg.applied(sel.learning_rate, sel.feature_factor):  # an independent real pass
            assert metrics.perplexity(mwg.lm, NEUTRAL) <= 1.015 * base_ppl
        assert sel.value >= grid[sel.key].value * (1 - 1e-3)  # never worse than the coarse grid here


def test_fast_needs_a_predictable_selector(mwg, data):
    with pytest.raises(ValueError, match="search='grid'"):
        evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="fast", selector="product")
    with pytest.raises(ValueError, match="search must be one of"):
        evaluate_decoder(mwg, data, CLASSES, NEUTRAL, search="newton")


class _Probe:
    """A probe whose measures along a line are known functions of the lr (no model)."""

    def __init__(self, ce, metric):
        self.ce, self.metric, self.calls = ce, metric, []

    def score_at(self, ff, lr):
        self.calls.append(lr)
        return {"feature_factor": ff, "learning_rate": lr, "lms": 0.5, "perplexity": math.exp(self.ce(lr)),
                "metrics": {"k": self.metric(lr)}}


BASE = {"feature_factor": 0.0, "learning_rate": 0.0, "lms": 0.5, "perplexity": 1.0, "metrics": {"k": 0.0}}


def _taylor(c1, c2):
    return LineTaylor(1.0, np.array([0.0, c1, c2]), 1, np.zeros((3, 1, 2)), "jvp2")


@pytest.mark.parametrize("c1,c2", [(0.1, 0.0), (0.02, 0.0), (0.3, 0.5)])  # exact, 5x off, curvature off
def test_boundary_search_brackets_the_real_boundary(c1, c2):
    probe = _Probe(lambda x: 0.1 * x + 0.05 * x * x, lambda x: x)
    c = perplexity_constraint(0.02).constraint
    root = quadratic_root(0.1, 0.1, math.log(1.02))
    s = BoundarySearch(probe, 1.0, _taylor(c1, c2), c, BASE, "k", (1e-3, 1e3), 0.01)
    s.run(_taylor(c1, c2).boundary(math.log(1.02)))
    assert s.lo <= root < s.hi and s.hi / s.lo <= 1.01
    assert len(probe.calls) <= (4 if c1 == 0.1 else 8)


def test_peak_search_finds_an_interior_maximum():
    probe = _Probe(lambda x: 0.0, lambda x: x * math.exp(-x / 0.3))  # peak at 0.3, constraint never binds
    line = [probe.score_at(1.0, 10.0)]
    s = PeakSearch(probe, 1.0, "k", 1e-3, 0.05, lambda p: True).run(line, 10.0, None, trusted=False)
    best = max(s.points + line, key=lambda p: p["metrics"]["k"])
    assert s.scanned and best["learning_rate"] == pytest.approx(0.3, rel=0.1)
    assert best["metrics"]["k"] >= 0.995 * 0.3 * math.exp(-1)


def test_peak_search_stops_when_the_metric_rises_into_the_boundary():
    probe = _Probe(lambda x: 0.0, lambda x: x)
    line = [probe.score_at(1.0, 2.0)]
    s = PeakSearch(probe, 1.0, "k", 1e-3, 0.05, lambda p: True).run(line, 2.0, None, trusted=True)
    assert not s.scanned and len(s.points) == 1
