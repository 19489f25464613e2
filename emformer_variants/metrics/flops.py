"""FLOPs of torchaudio's Emformer RNN-T: measured (FlopCounterMode) and analytic.

FLOPs = 2 x multiply-accumulates of matmuls (linear layers, attention bmm), the same
ops FlopCounterMode counts. Layer norms, softmax, activations, the memory AvgPool and
embedding lookups are O(T*D) and ignored by both, so the two counts can be compared.

Legend: D Emformer model dim (= time_reduction_input_dim * time_reduction_stride),
F FFN dim, S segment frames and R right-context frames after time reduction, L
left-context frames cached, M memory vectors used, H LSTM hidden dim, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode


def measured_flops(fn: Callable, *args, **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` under FlopCounterMode; return ``(total_flops, result)``.

    Counts only ops with a registered formula (mm/addmm/bmm/conv/sdpa, ...); custom ops
    with no formula count 0, hence the analytic cross-check.
    """
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return int(counter.get_total_flops()), result


def _linear(rows: int, d_in: int, d_out: int) -> int:
    return 2 * rows * d_in * d_out


def analytic_emformer_rnnt_flops(
    arch: dict,
    *,
    segment_length: int | None = None,
    right_context_length: int | None = None,
    chunk_index: int | None = None,
) -> dict[str, int]:
    """Analytic FLOPs of one streaming step of ``torchaudio.models.emformer_rnnt_model(**arch)``.

    ``segment_length`` and ``right_context_length`` are in input feature frames (before
    time reduction, the units of ``arch``); they default to ``arch``'s values, which are
    the only ones ``transcriber.infer`` accepts. ``chunk_index`` is the 0-based index of
    the chunk within the stream: it sets how full the left-context K/V cache
    (``min(left_context, k*S)`` frames) and the memory bank (``min(max_memory, k)``
    vectors) are. ``None`` means steady state (both full).

    Returns FLOPs per stream (batch 1):
      ``encoder``: one ``transcriber.infer`` call on ``segment_length + right_context_length``
      input frames, with its parts ``encoder.input_linear``, ``encoder.attention_qkv``
      (query over R+S+summary, key/value over M+R+S), ``encoder.attention_scores``
      (QK^T and probs@V over M+R+L+S keys), ``encoder.attention_out``, ``encoder.ffn``,
      ``encoder.output_linear``;
      ``predictor``: one token step of one hypothesis (all LSTM layers + output linear);
      ``joiner``: one (frame, hypothesis) evaluation.
    """
    seg_in = arch["segment_length"] if segment_length is None else segment_length
    rc_in = arch["right_context_length"] if right_context_length is None else right_context_length
    stride = arch["time_reduction_stride"]
    d_feat = arch["input_dim"]
    d_tr = arch["time_reduction_input_dim"]
    d = d_tr * stride
    ffn = arch["transformer_ffn_dim"]
    layers = arch["transformer_num_layers"]
    enc = arch["encoding_dim"]
    left_context = arch["transformer_left_context_length"]
    max_memory = arch["transformer_max_memory_size"]
    if d % arch["transformer_num_heads"]:
        raise ValueError(f"model dim {d} is not a multiple of transformer_num_heads")

    # _EmformerEncoder: Emformer gets segment_length // stride frames per segment.
    seg = seg_in // stride
    rc = rc_in // stride
    frames_in = seg_in + rc_in
    if frames_in // stride != seg + rc or seg < 1:
        raise ValueError(
            f"segment_length {seg_in} + right_context_length {rc_in} do not reduce to whole "
            f"frames with time_reduction_stride {stride}; transcriber.infer would reject them"
        )

    if chunk_index is None:
        cached_lc, mems = left_context, max_memory
    else:
        if chunk_index < 0:
            raise ValueError(f"chunk_index must be >= 0, got {chunk_index}")
        past = chunk_index * seg  # state[3] (past_length) after chunk_index chunks
        cached_lc = min(left_context, past)
        mems = min(max_memory, math.ceil(past / seg))
    summary = 1 if max_memory > 0 else 0
    queries = rc + seg + summary
    keys = mems + rc + cached_lc + seg

    qkv = _linear(queries, d, d) + _linear(mems + rc + seg, d, 2 * d)
    # Per head: (queries x dh) @ (dh x keys) then (queries x keys) @ (keys x dh); summed
    # over heads dh * heads = D.
    scores = 2 * (2 * queries * keys * d)
    out = _linear(queries, d, d)
    ffn_flops = _linear(rc + seg, d, ffn) + _linear(rc + seg, ffn, d)

    parts = {
        "encoder.input_linear": _linear(frames_in, d_feat, d_tr),
        "encoder.attention_qkv": layers * qkv,
        "encoder.attention_scores": layers * scores,
        "encoder.attention_out": layers * out,
        "encoder.ffn": layers * ffn_flops,
        "encoder.output_linear": _linear(seg, d, enc),
    }
    emb = arch["symbol_embedding_dim"]  # also the LSTM hidden dim in emformer_rnnt_model
    lstm = arch["num_lstm_layers"] * (_linear(1, emb, 4 * emb) + _linear(1, emb, 4 * emb))
    return {
        "encoder": sum(parts.values()),
        **parts,
        "predictor": lstm + _linear(1, emb, enc),
        "joiner": _linear(1, enc, arch["num_symbols"]),
    }


def emformer_base_arch(num_symbols: int = 4097) -> dict:
    """Keyword arguments ``torchaudio.models.emformer_rnnt_base(num_symbols)`` passes on to
    ``emformer_rnnt_model`` (copied from torchaudio 2.11 ``models/rnnt.py``)."""
    return {
        "input_dim": 80,
        "encoding_dim": 1024,
        "num_symbols": num_symbols,
        "segment_length": 16,
        "right_context_length": 4,
        "time_reduction_input_dim": 128,
        "time_reduction_stride": 4,
        "transformer_num_heads": 8,
        "transformer_ffn_dim": 2048,
        "transformer_num_layers": 20,
        "transformer_dropout": 0.1,
        "transformer_activation": "gelu",
        "transformer_left_context_length": 30,
        "transformer_max_memory_size": 0,
        "transformer_weight_init_scale_strategy": "depthwise",
        "transformer_tanh_on_mem": True,
        "symbol_embedding_dim": 512,
        "num_lstm_layers": 3,
        "lstm_layer_norm": True,
        "lstm_layer_norm_epsilon": 1e-3,
        "lstm_dropout": 0.3,
    }
