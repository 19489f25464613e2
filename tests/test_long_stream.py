"""A long live stream with endpoints: state, hypothesis and memory stay flat."""

from __future__ import annotations

import json

import pytest

from emformer_variants.engine.endpoint import EndpointConfig
from emformer_variants.long_stream import measure_long_stream, tile


def test_two_minute_stream_with_endpoints_is_flat(base_rec, two_sentences):
    """Two sentences with pauses, tiled to 2 minutes, exact decoder with endpoints: the
    encoder state never changes size, the best hypothesis stays one sentence long in the last
    minute as in the first, and RSS does not grow."""
    from emformer_variants.engine.pipeline import build_pipeline

    wave = tile([two_sentences], 120.0)
    pipe = build_pipeline(base_rec, "exact", 4)
    report = measure_long_stream(base_rec, wave, beam=4, rss_every=50, pipeline=pipe,
                                 endpoint=EndpointConfig())
    assert report["chunks"] == 750
    assert report["state_bytes_steady_min"] == report["state_bytes_steady_max"] == report["state_bytes_last"]
    # One sentence (47 characters and word boundaries: 53 tokens measured), not the ~1,500
    # characters of the whole stream a never-reset search carries; two sentences (a missed
    # endpoint, as when a flip of the beam's order inside a pause restarted the clock) are 91.
    assert report["hyp_tokens_max_first_min"] <= 80, report
    assert report["hyp_tokens_max_last_min"] <= 80, report
    assert report["transcript_words"] > 100
    assert report["rss_mb_last_min"] - report["rss_mb_first_min"] < 30, report["rss_samples"]


@pytest.mark.slow
def test_sixty_minute_stream_with_endpoints(tmp_path):
    """python -m emformer_variants.long_stream --minutes 60 --decoder exact --endpoint:
    per-chunk latency and memory of the last minute as in the first."""
    from emformer_variants.long_stream import main

    out = tmp_path / "r.json"
    assert main(["--minutes", "60", "--decoder", "exact", "--endpoint", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["state_bytes_steady_min"] == report["state_bytes_steady_max"] == report["state_bytes_last"]
    assert report["hyp_tokens_max_last_min"] <= 2 * max(1, report["hyp_tokens_max_first_min"]), report
    assert report["chunk_ms_p50_last_min"] < 2 * report["chunk_ms_p50_first_min"] + 5, report
    assert report["rss_mb_last_min"] - report["rss_mb_first_min"] < 30, report
