"""Endpoint rules on hand-made chunk sequences, and the stream loop restarting the search."""

from __future__ import annotations

import pytest
import torch

from emformer_variants.engine.endpoint import EndpointConfig, EndpointTracker, endpoint_rule
from emformer_variants.engine.stream import chunk_windows, stream_windows
from emformer_variants.errors import UserError

CHUNK = 0.16  # seconds per chunk of the tiny model


def run(tracker: EndpointTracker, hyps: list[list[int]]) -> list[int | None]:
    """The rule fired after each chunk, resetting like the stream loop does."""
    fired = []
    for tokens in hyps:
        rule = tracker.update(tokens, CHUNK)
        fired.append(rule)
        if rule is not None:
            tracker.reset()
    return fired


def test_defaults_are_the_k2_values():
    cfg = EndpointConfig()
    assert (cfg.rule1_silence_s, cfg.rule2_silence_s, cfg.rule3_max_segment_s) == (2.4, 1.2, 20.0)


def test_rule1_silence_without_speech():
    # 2.4 s = 15 chunks of blanks with nothing decoded
    fired = run(EndpointTracker(EndpointConfig()), [[]] * 15)
    assert fired == [None] * 14 + [1]


def test_rule2_silence_after_speech():
    # a word over 3 chunks, then blanks: 1.2 s = 7.5 chunks -> the 8th blank chunk
    hyps = [[5], [5, 6], [5, 6, 7]] + [[5, 6, 7]] * 8
    fired = run(EndpointTracker(EndpointConfig()), hyps)
    assert fired == [None] * 10 + [2]


def test_new_token_resets_the_silence():
    hyps = [[5]] + [[5]] * 6 + [[5, 6]] + [[5, 6]] * 6
    assert run(EndpointTracker(EndpointConfig()), hyps) == [None] * 14


def test_rule3_max_segment_while_speaking():
    cfg = EndpointConfig(rule3_max_segment_s=1.6)  # 10 chunks
    hyps = [list(range(1, k + 2)) for k in range(12)]  # a new token every chunk
    assert run(EndpointTracker(cfg), hyps) == [None] * 9 + [3, None, None]


def test_silence_is_per_hypothesis_when_the_beam_flips():
    """k2's rule: the best hypothesis's own trailing blanks. A rival that is briefly best
    inside the pause does not restart the clock of the one that comes back; a hypothesis
    that left the beam and returns is new (it had to emit again)."""
    cfg = EndpointConfig()
    spoken, rival = [5, 6], [5, 7]
    # [5, 6] best from chunk 0; the rival enters at chunk 3 and is best at chunk 4 only
    best = [spoken] * 4 + [rival] + [spoken] * 4
    beams = [[spoken]] * 3 + [[spoken, rival]] * 6
    tracker, fired = EndpointTracker(cfg), []
    for hyp, beam in zip(best, beams, strict=True):
        fired.append(tracker.update(hyp, CHUNK, beam=beam))
    # 1.2 s = 7.5 chunks after chunk 0: chunk 8, as if the rival had never been best
    assert fired == [None] * 8 + [2]
    # tracking only the best hypothesis, the flip restarts the clock
    assert run(EndpointTracker(cfg), best) == [None] * 9
    # [5, 6] leaves the beam at chunk 4 and is back at chunk 5: its clock starts again there
    tracker = EndpointTracker(cfg)
    beams = [[spoken]] * 4 + [[rival]] + [[spoken, rival]] * 9
    best = [spoken] * 4 + [rival] + [spoken] * 9
    fired = [tracker.update(h, CHUNK, beam=b) for h, b in zip(best, beams, strict=True)]
    assert fired == [None] * 13 + [2]


def test_speech_flag_overrides_tokens():
    """A fresh hypothesis that only emitted a word boundary has decoded no speech: rule 1."""
    tracker = EndpointTracker(EndpointConfig())
    fired = [tracker.update([1], CHUNK, speech=False) for _ in range(16)]  # 1 change + 15 blank
    assert fired == [None] * 15 + [1]


def test_rule_function_and_bad_config():
    cfg = EndpointConfig()
    assert endpoint_rule(cfg, 1.19, 5.0, True) is None
    assert endpoint_rule(cfg, 1.2, 5.0, True) == 2
    assert endpoint_rule(cfg, 2.0, 5.0, False) is None
    assert endpoint_rule(cfg, 0.0, 20.0, True) == 3
    with pytest.raises(UserError, match="rule2_silence_s"):
        EndpointConfig(rule2_silence_s=0)


def test_stream_windows_match_chunk_windows():
    """Blocks of any size give the windows of the whole wave, plus the flush tail."""
    wave = torch.randn(16000 + 77)
    whole = list(chunk_windows(wave, 2560, 3200))
    blocks = [wave[i:i + 1000] for i in range(0, wave.numel(), 1000)]
    pieces = list(stream_windows(blocks, 2560, 3200))
    assert len(pieces) == len(whole) == 7
    for a, b in zip(whole, pieces, strict=True):
        torch.testing.assert_close(a, b)
    flushed = list(stream_windows(blocks, 2560, 3200, tail=3200 + 2560))
    assert len(flushed) == 9 and all(w.numel() == 3200 for w in flushed)
    assert len(list(stream_windows([], 2560, 3200))) == 1


def test_a_word_boundary_emitted_into_the_pause_is_silence(base_rec):
    """The stream loop feeds the tracker decoded text: the shipped base emits the word boundary
    after "daughters" about a second into the pause, which changes the tokens but not the
    text, so it must not restart the 1.2 s silence clock."""
    tok = base_rec.tokenizer
    word = tok.encode("daughters")
    boundary = tok.encode("daughters nothing")[len(word)]
    assert tok.decode(word + [boundary]) == tok.decode(word) == "daughters"
    hyps = [word] * 6 + [word + [boundary]] * 3  # 8 chunks (1.28 s) after the word's last letter
    by_tokens, by_text = EndpointTracker(EndpointConfig()), EndpointTracker(EndpointConfig())
    assert [by_tokens.update(h, CHUNK) for h in hyps] == [None] * 9
    assert [by_text.update(tok.decode(h), CHUNK) for h in hyps] == [None] * 8 + [2]


@pytest.mark.parametrize("decoder", ["stock", "exact"])
def test_endpoint_splits_speech_at_a_pause(decoder, base_rec, two_sentences):
    """Two sentences with 2 s of silence between: two segments; the search restarted (the
    second segment's tokens do not extend the first's) and the encoder state was kept."""
    from emformer_variants.engine.pipeline import build_pipeline
    from emformer_variants.engine.stream import decode_chunks

    cfg = base_rec.features.cfg
    pipe = build_pipeline(base_rec, decoder, 4)
    updates = list(decode_chunks(base_rec, chunk_windows(two_sentences, cfg.segment_samples,
                                                         cfg.window_samples), pipe,
                                 endpoint=EndpointConfig()))
    finals = [u for u in updates if u.final and u.text]
    assert len(finals) == 2, [(u.index, u.rule, u.text) for u in finals]
    assert finals[0].rule == 2
    assert finals[0].last_chunk < finals[1].first_chunk
    assert "youngest" in finals[0].text and "evening" in finals[1].text
    assert "youngest" not in finals[1].text
