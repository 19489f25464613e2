"""Endpoint detection for a live stream: when the current segment ends.

The rules follow the k2 / sherpa-onnx convention (three rules, any one ends a segment):

1. trailing silence of at least ``rule1_silence_s`` (2.4 s) and nothing decoded yet: a long
   pause before any speech;
2. trailing silence of at least ``rule2_silence_s`` (1.2 s) after some speech was decoded:
   the speaker finished a phrase;
3. the segment has lasted ``rule3_max_segment_s`` (20 s): bound the hypothesis length and the
   search's work however long someone talks without pausing.

"Silence" here is the best hypothesis's trailing blank time (k2's rule): how long the
hypothesis that is best now has been in the beam unchanged, the model's own view, so
background noise the model ignores counts as silence. It is per hypothesis, not a clock of
the best one's changes: when the beam's order flips inside a pause (another hypothesis is
briefly best, then the old one again) the old one's silence goes on from where it was. The
streaming loop keys hypotheses by decoded text, not tokens: a character model often emits
the word boundary after a word's last letter well into the pause that follows, which
changes the tokens but not the text, and would restart the clock short of the rule-2
pause. It is measured
per chunk (the encoder emits a chunk of frames at a time), so every duration is a multiple
of the chunk length (160 ms for the tiny model).

At an endpoint the caller finalises the segment's text and restarts the search from a fresh
hypothesis (zero predictor state); the encoder keeps its streaming state.
"""

from __future__ import annotations

from dataclasses import dataclass

from emformer_variants.errors import UserError


@dataclass(frozen=True)
class EndpointConfig:
    rule1_silence_s: float = 2.4  # trailing silence, nothing decoded in the segment
    rule2_silence_s: float = 1.2  # trailing silence after decoded speech
    rule3_max_segment_s: float = 20.0  # segment length, whatever was decoded

    def __post_init__(self):
        for name in ("rule1_silence_s", "rule2_silence_s", "rule3_max_segment_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"endpoint {name}={getattr(self, name)}: must be a positive "
                                "number of seconds")


def endpoint_rule(cfg: EndpointConfig, silence_s: float, segment_s: float, decoded: bool) -> int | None:
    """The number (1, 2, 3) of the first rule that ends the segment, or None.

    ``silence_s``: trailing time without a new token; ``segment_s``: time since the segment
    started; ``decoded``: whether the segment holds any token. A small tolerance absorbs
    float sums of chunk lengths (15 x 0.16 s must count as 2.4 s).
    """
    eps = 1e-6
    if not decoded and silence_s + eps >= cfg.rule1_silence_s:
        return 1
    if decoded and silence_s + eps >= cfg.rule2_silence_s:
        return 2
    if segment_s + eps >= cfg.rule3_max_segment_s:
        return 3
    return None


class EndpointTracker:
    """Per-stream bookkeeping for ``endpoint_rule``: feed it each chunk's best hypothesis, as
    tokens or as its decoded text (``engine.stream.decode_chunks`` feeds the text).

    ``update(hyp, seconds, speech, beam)`` after each chunk of ``seconds`` of audio returns
    the rule number that fired (then call ``reset()`` once the search restarted) or None.
    ``beam``: every hypothesis in the beam (keyed like ``hyp``); each one's silence runs from
    the chunk it entered the beam, and ``hyp``'s is the one the rules read. Without ``beam``
    only ``hyp`` is tracked: silence is time over which the best hypothesis did not change.
    ``speech``: whether the hypothesis decodes to any text (default: any token or character);
    a fresh hypothesis that only emitted a word boundary has decoded no speech yet.
    """

    def __init__(self, cfg: EndpointConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self.entered: dict[tuple, float] = {(): 0.0}  # hypothesis -> segment time it entered the beam
        self.silence_s = 0.0
        self.segment_s = 0.0

    def update(self, hyp, seconds: float, speech: bool | None = None, beam=None) -> int | None:
        hyp = tuple(hyp)
        now = self.segment_s + seconds
        keys = {hyp, *(tuple(h) for h in beam)} if beam is not None else {hyp}
        # a hypothesis that left the beam and comes back is new: it emitted again to get back
        self.entered = {k: self.entered.get(k, now) for k in keys}
        self.segment_s = now
        self.silence_s = now - self.entered[hyp]
        return endpoint_rule(self.cfg, self.silence_s, self.segment_s,
                             bool(hyp) if speech is None else speech)
