"""``train.fused.all_finite`` (the gradient check of every training step) against ``torch.isfinite(t).all()``."""

from __future__ import annotations

import pytest
import torch

from gradedit.gradiend.train import fused
from gradedit.gradiend.train.fused import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_all_finite_equals_isfinite_all(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "FINITE_CHUNK", 7)  # several chunks in the exact path
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 5, 64, 1000):
        for bad in (None, float("nan"), float("inf"), float("-inf")):
            t = torch.randn(n, generator=g).to(dtype)
            if bad is not None and n:
                t[int(torch.randint(n, (1,), generator=g))] = bad
            assert all_finite(t) == bool(torch.isfinite(t).all()), (n, bad, dtype)
            assert all_finite(t.reshape(1, -1)) == all_finite(t)  # any shape


def test_a_sum_that_overflows_from_finite_entries_is_still_finite() -> None:
    """The fast path (one sum) overflows to inf here; the exact path must decide True."""
    big = torch.full((10,), 3e38, dtype=torch.float32)
    assert not bool(torch.isfinite(big.sum()))
    assert all_finite(big)
    mixed = torch.tensor([3e38, 3e38, -3e38, float("inf")], dtype=torch.float32)  # inf hidden by nothing
    assert not all_finite(mixed)
    assert not all_finite(torch.tensor([float("inf"), float("-inf")]))  # sums to NaN
