"""Precision options: what is replaced, how close the outputs stay, fused linears, and the
stock pipeline running on converted models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from emformer_variants.engine.linear import fuse_linears
from emformer_variants.engine.pipeline import build_pipeline
from emformer_variants.engine.precision import (
    Int4DynamicLinear,
    Int8DynamicLinear,
    WeightCastLinear,
    apply_precision_,
    int4_weights,
)
from emformer_variants.engine.stream import stream_decode
from emformer_variants.errors import UserError
from tests.conftest import make_tiny_rec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("precision,kind,tol", [("bf16", WeightCastLinear, 0.02),
                                                ("fp16", WeightCastLinear, 0.002),
                                                ("int8", Int8DynamicLinear, 0.1),
                                                ("int4", Int4DynamicLinear, 0.2),
                                                ("int8-fbgemm", DynamicLinear, 0.1)])
def test_every_linear_is_converted_and_outputs_stay_close(precision, kind, tol):
    rec = make_tiny_rec(0)
    linears = sum(type(m) is torch.nn.Linear for m in rec.model.modules())
    low = copy.deepcopy(rec)
    report = apply_precision_(low, precision)
    assert report["replaced"] == linears
    assert not any(type(m) is torch.nn.Linear for m in low.model.modules())
    count = {k: sum(type(m) is k for m in low.model.modules()) for k in (kind, Int8DynamicLinear)}
    if precision == "int4":  # the encoder only (int4_weights); the predictor and joiner int8
        encoder = sum(type(m) is torch.nn.Linear for n, m in rec.model.named_modules()
                      if n.startswith("transcriber."))
        assert count[kind] == encoder and count[Int8DynamicLinear] == linears - encoder > 0
    else:
        assert count[kind] == linears
    x = torch.randn(1, 21, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, _, _ = rec.model.transcribe_streaming(x, torch.tensor([21]), None)
        b, _, _ = low.model.transcribe_streaming(x, torch.tensor([21]), None)
    assert b.dtype == torch.float32
    assert (a - b).norm() / a.norm() < tol


def test_fp32_is_a_no_op_and_unknown_precision_is_rejected():
    rec = make_tiny_rec(0)
    assert apply_precision_(rec, "fp32")["replaced"] == 0
    with pytest.raises(UserError,
                       match="precision=fp8: unknown; choose one of fp32, bf16, fp16, int8, int4, "
                             "int8-fbgemm"):
        apply_precision_(rec, "fp8")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "int8", "int4", "int8-fbgemm"])
def test_fused_linears_equal_separate_ones(precision):
    torch.manual_seed(0)
    holder = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(32, 48))
    if precision != "fp32":
        apply_precision_(type("R", (), {"model": holder})(), precision)
    fused = fuse_linears(list(holder))
    x = torch.randn(5, 32)
    with torch.inference_mode():
        want = torch.cat([holder[0](x), holder[1](x)], -1)
        torch.testing.assert_close(fused(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_per_tensor_int8_is_not_fused():
    holder = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    torch.ao.quantization.quantize_dynamic(holder, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    assert fuse_linears(list(holder)) is None


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4", "int8-fbgemm"])
@pytest.mark.parametrize("decoder", ["stock", "exact"])
def test_pipelines_decode_converted_models(precision, decoder):
    rec = make_tiny_rec(1)
    apply_precision_(rec, precision)
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(1)) * 0.1
    res = stream_decode(rec, wave, 3, build_pipeline(rec, decoder, 3))
    assert len(res.encoder_s) == 7 and isinstance(res.text, str)


@pytest.mark.parametrize("variant", ["lowrank", "moe", "mla"])
@pytest.mark.parametrize("precision", ["fp16", "int8", "int8-fbgemm"])
def test_surgery_variants_decode_at_every_precision(variant, precision):
    """MLA's absorbed attention and the MoE router read child linears' weights directly: they
    must still work once those linears are converted (a property, a method, a quantised
    tensor). MLA used to fail here with "Inference tensors do not track version counter"."""
    from tests.conftest import apply_shipped_variant_

    rec = make_tiny_rec(4)
    apply_shipped_variant_(rec, variant)
    assert apply_precision_(rec, precision)["replaced"] > 0
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(5)) * 0.1
    for decoder in ("stock", "exact"):
        res = stream_decode(rec, wave, 3, build_pipeline(rec, decoder, 3))
        assert len(res.encoder_s) == 7 and isinstance(res.text, str)


def test_int4_goes_to_the_encoder_only():
    """The predictor and joiner run at the beam's rows (int8 is no slower there) and a router's
    top-k is discrete: they stay int8 under precision=int4."""
    assert int4_weights("transcriber.emformer.layers.0.pos_ff.1")
    assert int4_weights("transcriber.emformer.layers.3.attention.project_in")
    assert not int4_weights("transcriber.emformer.layers.0.pos_ff.router")
    assert not int4_weights("predictor.lstm_layers.0.x2g")
    assert not int4_weights("joiner.linear")
