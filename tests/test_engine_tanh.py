"""The kernels' tanh (``fast_tanh``, used by the searches and the predictor step in C++ and in
their Python loops through ``engine.linear.tanh``): within 1 ulp of the exact tanh everywhere,
IEEE special values kept, any layout."""

from __future__ import annotations

import pytest
import torch

from emformer_variants.engine import packed
from emformer_variants.engine.linear import tanh

pytestmark = pytest.mark.skipif(packed.kernel() is None, reason="the packed kernels do not load here")


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def test_fast_tanh_is_within_one_ulp_of_the_exact_tanh():
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.randn(50_000) * 3,
                   torch.logspace(-30, 1, 2_001), -torch.logspace(-30, 1, 2_001),
                   torch.tensor([0.625, -0.625, 0.6249999, 8.66, 9.0, 10.0, 30.0])])
    exact = torch.tanh(x.double()).float()
    assert _ulps(packed.kernel().fast_tanh(x), exact).max().item() <= 1
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
    got = packed.kernel().fast_tanh(specials)
    assert got[:4].tolist() == [0.0, -0.0, 1.0, -1.0] and torch.isnan(got[4])
    assert torch.signbit(got[1]) and not torch.signbit(got[0])


def test_fast_tanh_takes_any_layout_and_engine_tanh_uses_it():
    x = torch.randn(7, 13, 3) * 4
    view = x.transpose(0, 2)[:, 1:, ::2]  # not contiguous; 11 x ... elements, a tail of < 8
    out = packed.kernel().fast_tanh(view)
    assert out.shape == view.shape and out.is_contiguous()
    assert torch.equal(out, packed.kernel().fast_tanh(view.contiguous()))
    assert torch.equal(tanh(view), out)
    assert _ulps(out, torch.tanh(view.double()).float()).max().item() <= 1
    half = x.half()  # other dtypes: torch's
    assert torch.equal(tanh(half), torch.tanh(half))
