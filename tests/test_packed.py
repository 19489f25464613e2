"""The packed small-batch linear kernel: same results as F.linear on the weight it stores,
for every batch size, shape and weight dtype, and the fallback when it cannot be used."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from emformer_variants.engine import packed
from emformer_variants.engine.packed import (
    INT4_CLIPS,
    Int4Linear,
    Int8Linear,
    PackedLinear,
    kernel,
    pack,
    pack_int4,
    pack_int8,
    quantize_activations,
    quantize_groups,
    quantize_rows,
    unpack,
)
from tests.conftest import require_kernel


def test_kernel_builds_where_it_can():
    """Fails where the kernel should build and did not (EMFORMER_VARIANTS_ALLOW_NO_KERNEL=1: skips);
    a kernel switched off (EMFORMER_VARIANTS_KERNEL_ISA=none) skips."""
    if packed._unavailable_reason():
        pytest.skip(f"kernel disabled: {packed._unavailable_reason()}")
    assert require_kernel() is kernel() is not None and packed.isa() in ("avx2", "avx512", "amx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,n", [(1, 1), (17, 33), (64, 16), (300, 97)])
def test_matches_f_linear_on_the_stored_weight(dtype, k, n):
    g = torch.Generator().manual_seed(k * n)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    lin = PackedLinear(w, b, dtype)
    torch.testing.assert_close(lin.weight(), w.to(dtype).float(), rtol=0, atol=0)
    for m in (0, 1, 5, 6, 7, 13):
        x = torch.randn(m, k, generator=g)
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight(), b), rtol=1e-5, atol=1e-5)


def test_rows_do_not_depend_on_the_batch_and_shapes_pass_through():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 24, generator=g)
    lin = PackedLinear(w, None)
    x = torch.randn(2, 9, 24, generator=g)
    y = lin(x)
    assert y.shape == (2, 9, 40)
    for i in range(9):  # each row alone gives the same bits as inside the batch
        assert torch.equal(lin(x[1, i:i + 1]), y[1, i:i + 1])


@pytest.mark.parametrize("kind", [PackedLinear, Int8Linear])
def test_threads_give_the_same_bits(kind):
    require_kernel()
    g = torch.Generator().manual_seed(1)
    lin = kind(torch.randn(1000, 512, generator=g), torch.randn(1000, generator=g))
    x = torch.randn(5, 512, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lin(x)
        torch.set_num_threads(2)
        assert torch.equal(lin(x), one)
    finally:
        torch.set_num_threads(threads)


def test_pack_round_trips_and_pads():
    w = torch.arange(35 * 3, dtype=torch.float32).view(35, 3)
    p = pack(w)
    assert p.shape == (3, 3, 16) and p[2, :, 3:].abs().sum() == 0
    assert torch.equal(unpack(p, 35), w)


def test_fallback_computes_the_same(monkeypatch):
    g = torch.Generator().manual_seed(2)
    w, b, x = torch.randn(33, 20, generator=g), torch.randn(33, generator=g), torch.randn(4, 20, generator=g)
    fast = PackedLinear(w, b, torch.float16)
    monkeypatch.setattr(packed, "kernel", lambda: None)
    slow = PackedLinear(w, b, torch.float16)
    torch.testing.assert_close(slow(x), fast(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(slow(x), F.linear(x, w.half().float(), b))
    slow8 = Int8Linear(w, b)
    monkeypatch.undo()
    torch.testing.assert_close(slow8(x), Int8Linear(w, b)(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(slow8(x), slow8.reference(x))


def test_disabled_by_environment(monkeypatch, caplog):
    monkeypatch.setenv("EMFORMER_VARIANTS_PACKED", "0")
    monkeypatch.setattr(packed, "_TRIED", False)
    monkeypatch.setattr(packed, "_KERNEL", None)
    with caplog.at_level("WARNING"):
        assert packed.kernel() is None
    assert "EMFORMER_VARIANTS_PACKED=0" in caplog.text
    with pytest.raises(ValueError, match="weight dtype"):
        PackedLinear(torch.zeros(2, 2), None, torch.int8)


def test_counting_flops_counts_every_call_and_nests():
    lin = PackedLinear(torch.randn(7, 3), None)
    with packed.counting_flops() as outer:
        lin(torch.randn(4, 3))
        with packed.counting_flops() as inner:
            lin(torch.randn(2, 5, 3))
        assert inner[0] == 2 * 10 * 3 * 7
    assert outer[0] == 2 * 4 * 3 * 7 + inner[0]
    lin(torch.randn(1, 3))  # outside any block: not counted, no error
    assert outer[0] == 2 * 14 * 3 * 7


def test_int8_rows_use_the_full_range_and_round_to_nearest():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -0.01]])
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().amax(1).tolist() == [127, 0, 127]
    torch.testing.assert_close(scale, torch.tensor([1 / 127, 1.0, 3 / 127]))
    assert q[0].tolist() == [64, -127, 32] and q[2].tolist() == [127, 42, 0]
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("k,n", [(1, 1), (17, 33), (64, 16), (300, 97)])
def test_int8_kernel_equals_its_torch_reference(k, n):
    """Integer sums are exact, so kernel and reference differ only in the last fp32 steps;
    both stay within int8 rounding of the fp32 linear."""
    require_kernel()
    g = torch.Generator().manual_seed(k + n)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    lin = Int8Linear(w, b)
    for m in (0, 1, 4, 5, 6, 11):
        x = torch.randn(m, k, generator=g) * 3
        y = lin(x)
        torch.testing.assert_close(y, lin.reference(x), rtol=1e-5, atol=1e-5)
        if m:
            assert (y - F.linear(x, w, b)).norm() <= 0.03 * F.linear(x, w, None).norm() + 1e-6
    x = torch.randn(7, k, generator=g)
    torch.testing.assert_close(lin(x)[3:5], lin(x[3:5]), rtol=0, atol=0)  # rows are independent


def test_int8_activation_rows_keep_zero_exact_and_use_seven_bits():
    x = torch.tensor([[-1.0, 0.0, 3.0], [0.5, 0.25, 0.0], [0.0, 0.0, 0.0]])
    xq, scale, zero = quantize_activations(x)
    assert xq.min() >= 0 and xq.max() <= 127 and xq[0].max() == 127
    torch.testing.assert_close((xq - zero[:, None]) * scale[:, None], x, atol=scale.max().item() / 2, rtol=0)
    assert xq[0, 1] == zero[0] and xq[2].tolist() == [0, 0, 0]


def test_pack_int8_layout():
    q = torch.arange(20 * 6, dtype=torch.int8).view(20, 6)
    p = pack_int8(q)
    assert p.shape == (2, 2, 16, 4)
    assert p[0, 0, 3].tolist() == q[3, :4].tolist() and p[0, 1, 3].tolist() == [*q[3, 4:].tolist(), 0, 0]
    assert p[1, 0, 3].tolist() == q[19, :4].tolist() and p[1, 0, 4].abs().sum() == 0


def test_int4_groups_reproduce_weights_on_their_grid_and_clip_only_to_err_less():
    """A weight already on an int4 grid (q * s, a scale per row and group) comes back exactly;
    a group with one outlier is clipped when that lowers its squared error."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-7, 8, (5, 24), generator=g)
    q[:, ::8] = 7  # every group reaches the top of the range
    s = torch.rand(5, 3, generator=g) + 0.1
    w = (q.view(5, 3, 8) * s[..., None]).view(5, 24)
    q2, s2 = quantize_groups(w, group=8)
    assert q2.dtype == torch.int8 and torch.equal(q2.long(), q)
    torch.testing.assert_close(s2, s)
    outlier = torch.tensor([[1.0, 0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.55] * 1])
    q3, s3 = quantize_groups(outlier, group=8)
    err = lambda qq, ss: ((qq.float() * ss[..., None] - outlier.view(1, 1, 8)) ** 2).sum()  # noqa: E731
    full = torch.round(outlier / (1.0 / 7)).clamp(-7, 7).view(1, 1, 8)
    assert err(q3.view(1, 1, 8), s3) <= err(full, torch.tensor([[1.0 / 7]])) + 1e-9
    assert min(INT4_CLIPS) * 1.0 / 7 - 1e-7 <= s3.item() <= 1.0 / 7 + 1e-7
    zeros, zs = quantize_groups(torch.zeros(2, 16), group=8)
    assert zeros.abs().sum() == 0 and torch.isfinite(zs).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        quantize_groups(w, group=12)


def test_pack_int4_layout():
    """Each 64-byte step holds two of pack_int8's 4-k steps as q + 8: the first in the low
    nibbles; padded columns hold 8 (q = 0)."""
    q = (torch.arange(20 * 16) % 15 - 7).to(torch.int8).view(20, 16)
    p = pack_int4(q)
    p8 = pack_int8(q).view(2, 2, 2, 64)
    assert p.shape == (2, 2, 64) and p.dtype == torch.uint8
    lo = (p.to(torch.int16) & 0xF).to(torch.int8) - 8
    hi = (p.to(torch.int16) >> 4).to(torch.int8) - 8
    assert torch.equal(lo, p8[:, :, 0]) and torch.equal(hi, p8[:, :, 1])
    assert p[1, :, 16:].unique().tolist() == [8 + 16 * 8]  # panel 1's columns 4-15: rows 20-31, padding


@pytest.mark.parametrize("k,n,group", [(1, 1, 8), (17, 33, 8), (64, 16, 64), (300, 97, 64), (1000, 40, 32)])
def test_int4_kernel_equals_its_torch_reference(k, n, group):
    """Exact integer sums per group, so kernel and reference differ only in the last fp32 steps;
    both stay within int4 rounding of the fp32 linear, and rows are independent of the batch."""
    require_kernel()
    g = torch.Generator().manual_seed(k + n)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    lin = Int4Linear(w, b, group=group)
    for m in (0, 1, 4, 5, 12, 13, 25):
        x = torch.randn(m, k, generator=g) * 3
        y = lin(x)
        assert y.shape == (m, n)
        torch.testing.assert_close(y, lin.reference(x), rtol=1e-5, atol=1e-5 * max(1, k / 64))
        if m:
            exact = F.linear(x, lin.weight(), None)  # only the 7-bit inputs differ from this
            assert (y - exact - b).norm() <= 0.03 * exact.norm() + 1e-6
            assert (y - F.linear(x, w, b)).norm() <= 0.2 * F.linear(x, w, None).norm() + 1e-6
    x = torch.randn(7, k, generator=g)
    torch.testing.assert_close(lin(x)[3:5], lin(x[3:5]), rtol=0, atol=0)


def test_int4_fallback_computes_the_same(monkeypatch):
    require_kernel()
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(40, 200, generator=g), torch.randn(40, generator=g)
    x = torch.randn(6, 200, generator=g)
    monkeypatch.setattr(packed, "kernel", lambda: None)
    slow = Int4Linear(w, b)
    monkeypatch.undo()
    assert not slow.uses_kernel
    torch.testing.assert_close(slow(x), Int4Linear(w, b)(x), rtol=1e-5, atol=1e-4)

