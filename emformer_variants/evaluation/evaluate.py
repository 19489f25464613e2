"""Streaming evaluation of a Recognizer on a list of utterances -> flat metrics dict.

WER/CER are corpus-level after ``text_norm.normalize_text``. Latency follows the
streaming-ASR convention: algorithmic latency (chunk + right context) apart from compute
latency (per-chunk p50/p90/p99). Time to first token simulates a live stream: chunk k is
ready when its last needed sample (incl. right context) has arrived, starts when ready and
the previous chunk is done; TTFT is when the chunk that emits the first token finishes.
"""

from __future__ import annotations

import hashlib
import logging
import time

import torch

from emformer_variants.data.audio import load_audio
from emformer_variants.data.manifest import Utterance
from emformer_variants.engine.endpoint import EndpointConfig
from emformer_variants.engine.pipeline import build_pipeline
from emformer_variants.engine.stream import stream_decode
from emformer_variants.errors import UserError
from emformer_variants.evaluation.flops import measure_flops
from emformer_variants.metrics.latency import chunk_ready_times, percentiles, simulate_live_stream
from emformer_variants.metrics.memory import peak_rss_mb
from emformer_variants.metrics.params import count_params
from emformer_variants.metrics.wer import error_rates, error_rates_by
from emformer_variants.surgery.registry import EvaluationTelemetry

log = logging.getLogger(__name__)


SUBSETS = ("first", "random")


def check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise UserError(f"subset={subset!r}: must be one of {', '.join(SUBSETS)} "
                        "(which max_utterances utterances to decode)")


def pick_utterances(utts: list[Utterance], limit: int | None, subset: str = "first",
                    seed: int = 0) -> list[Utterance]:
    """At most ``limit`` utterances: the first ones, or a seeded random sample kept in corpus
    order (so a split listed in a sorted order, e.g. Asterisk or an audiofolder by file name,
    is sampled throughout)."""
    check_subset(subset)
    if not limit or limit >= len(utts):
        return list(utts)
    if subset == "first":
        return list(utts[:limit])
    import random

    keep = sorted(random.Random(seed).sample(range(len(utts)), limit))
    return [utts[i] for i in keep]


def evaluate_recognizer(rec, utts: list[Utterance], beam: int = 10, flops: bool = True,
                        skip_bad: bool = False, progress: bool = True, decoder: str = "stock",
                        decoder_options: dict | None = None,
                        endpoint: EndpointConfig | None = None,
                        params: tuple[int, int] | None = None) -> tuple[dict, list[dict]]:
    """Decode every utterance in streaming mode with the named decoder (``engine.pipeline``,
    built with ``decoder_options``), with ``endpoint`` rules if given (the hypothesis is
    the segments' texts joined); return (metrics, per-utterance rows). ``params``: the model's
    (total, active) parameter counts, counted here when not given; pass them when a precision
    conversion has already swapped the linears for packed buffers."""
    if beam < 1:
        raise UserError(f"beam={beam}: must be at least 1")
    rec.eval()
    decoder_options = decoder_options or {}
    pipe = build_pipeline(rec, decoder, beam, **decoder_options)
    cfg = rec.features.cfg
    refs, hyps, rows = [], [], []
    chunk_ms, feat_ms, enc_ms, dec_ms, ttfts, rtfs = [], [], [], [], [], []
    state_bytes, compute_s, audio_s, skipped = 0, 0.0, 0.0, []
    warmed = False
    telemetry = EvaluationTelemetry(rec.model)  # each variant's own counters (e.g. MoE router load)
    data_hash = hashlib.sha1()  # the samples and references scored: same value, same data
    t_start = time.perf_counter()
    for i, utt in enumerate(utts):
        try:
            wave = load_audio(utt.audio)
        except UserError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            log.warning("skipped (data.skip_bad=true): %s", e)
            continue
        if not warmed:  # one untimed pass: allocator and kernel warm-up
            stream_decode(rec, wave[: cfg.window_samples * 2], beam, pipe)
            warmed = True
        res = stream_decode(rec, wave, beam, pipe, endpoint=endpoint)
        data_hash.update(wave.numpy().tobytes())
        data_hash.update(utt.text.encode() + b"\0")
        refs.append(utt.text)
        hyps.append(res.text)
        chunks = res.chunk_s
        chunk_ms.extend(1000 * c for c in chunks)
        feat_ms.extend(1000 * c for c in res.features_s)
        enc_ms.extend(1000 * c for c in res.encoder_s)
        dec_ms.extend(1000 * c for c in res.decoder_s)
        compute_s += sum(chunks)
        audio_s += res.audio_s
        rtfs.append(sum(chunks) / max(res.audio_s, 1e-9))
        state_bytes = max(state_bytes, res.state_bytes)
        ttft = None
        if res.first_token_chunk is not None:
            ready = chunk_ready_times(len(chunks), cfg.chunk_seconds, cfg.right_context_seconds,
                                      res.audio_s)
            ttft = simulate_live_stream(ready, chunks)[res.first_token_chunk]
            ttfts.append(ttft)
        rows.append({"audio": utt.audio, "speaker": utt.speaker, "ref": utt.text, "hyp": res.text,
                     "audio_s": res.audio_s,
                     "rtf": rtfs[-1], "ttft_s": ttft, "chunk_ms": [round(1000 * c, 3) for c in chunks],
                     **{f"{part}_ms": [round(1000 * c, 3) for c in getattr(res, f"{part}_s")]
                        for part in ("features", "encoder", "decoder")}})
        if progress and (i + 1) % max(1, len(utts) // 10) == 0:
            log.info("decoded %d/%d utterances (%.0f s)", i + 1, len(utts), time.perf_counter() - t_start)
    if not refs:
        raise UserError("evaluation: no utterance could be decoded")
    rates = error_rates(refs, hyps)
    total, active = params if params is not None else count_params(rec.model)
    p = percentiles(chunk_ms)
    metrics = {
        "wer": rates["wer"], "cer": rates["cer"],
        "rtf": compute_s / audio_s,
        "ttft_s": sum(ttfts) / len(ttfts) if ttfts else None,
        "chunk_ms_p50": p["p50"], "chunk_ms_p90": p["p90"], "chunk_ms_p99": p["p99"],
        "features_ms_per_chunk": sum(feat_ms) / len(feat_ms),
        "encoder_ms_per_chunk": sum(enc_ms) / len(enc_ms),
        "decoder_ms_per_chunk": sum(dec_ms) / len(dec_ms),
        "algorithmic_latency_s": cfg.chunk_seconds + cfg.right_context_seconds,
        "params_total": total, "params_active": active,
        "kv_cache_bytes": state_bytes,
        "num_utterances": len(refs), "num_skipped": len(skipped), "audio_s": audio_s,
        "beam": beam, "decoder": decoder, "endpoint": endpoint is not None,
        "threads": torch.get_num_threads(),
        "ref_words": rates["ref_words"],
        "data_sha1": data_hash.hexdigest(),
    }
    speakers = [r["speaker"] for r in rows]
    if len(set(speakers)) > 1:  # corpus WER within each speaker (voice), in metrics.json only
        metrics["wer_by_speaker"] = {s: round(m["wer"], 6) for s, m in
                                     error_rates_by(refs, hyps, speakers).items()}
        # Each voice counts once, however many words it read (held-out voices are reported so).
        metrics["wer_speaker_mean"] = round(sum(metrics["wer_by_speaker"].values())
                                            / len(metrics["wer_by_speaker"]), 6)
    telemetry.close()
    metrics.update(telemetry.summary())
    if flops:  # on the longest decoded utterance: a 0.05 s clip would inflate FLOPs per second
        longest = max(rows, key=lambda r: r["audio_s"])
        metrics.update(measure_flops(rec, load_audio(longest["audio"])[: 16000 * 8], beam, decoder,
                                     **decoder_options))
    metrics["peak_rss_mb"] = peak_rss_mb()
    return metrics, rows
