"""Decoders by name: an encoder + a search that advance N streams one chunk at a time.

| decoder | encoder | search |
|---|---|---|
| stock | torchaudio ``transcribe_streaming`` | torchaudio ``RNNTBeamSearch`` (the reference) |
| exact | engine ``StreamingEncoder`` | ``ExactBeamSearch``: same transcripts as stock |
| modified | engine ``StreamingEncoder`` | ``ModifiedBeamSearch``: one symbol per frame |
| greedy | engine ``StreamingEncoder`` | ``GreedySearch`` |

The engine encoder takes torchaudio's Emformer layers and the surgeries' replacements (MLA's
latent attention, MoE FFNs, low-rank linears); a model with Emformer memory falls back to
torchaudio's encoder, with all streams in step.

Interface: ``encoder.init(n)``, ``encoder.step(features (N, T, F), state) -> (enc, state)``;
``search.init_state()``, ``search.step(enc (N, T', D), states) -> states``,
``search.best_tokens(state) -> token ids``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchaudio.models import RNNTBeamSearch

from emformer_variants.engine.names import DECODER_NAMES
from emformer_variants.errors import UserError
from emformer_variants.metrics.memory import tensor_bytes


class StockEncoder:
    """torchaudio's streaming transcriber; N > 1 streams must start together."""

    name = "stock"
    path = "torchaudio"
    supports_reset = False

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def init(self, n: int):
        return None

    @torch.inference_mode()
    def step(self, feats: torch.Tensor, state) -> tuple[torch.Tensor, Any]:
        lengths = torch.full((feats.shape[0],), feats.shape[1])
        enc, _, state = self.model.transcribe_streaming(feats, lengths, state)
        return enc, state

    def state_bytes(self, state) -> int:
        return tensor_bytes(state)


class EngineEncoder:
    """Adapter of ``engine.encoder.StreamingEncoder`` with per-stream reset."""

    name = "engine"
    supports_reset = True

    def __init__(self, model: torch.nn.Module):
        from emformer_variants.engine.encoder import StreamingEncoder

        self.impl = StreamingEncoder(model)
        self.init, self.step, self.reset = self.impl.init, self.impl.step, self.impl.reset
        self.path = "layer loop" if self.impl.stack is None else "fused stack"

    def state_bytes(self, state) -> int:
        """K/V cache + the int32 history length per layer, as torchaudio's state holds."""
        return state.nbytes() + 4 * len(state.keys) * len(state.past)


class StockSearch:
    """torchaudio's ``RNNTBeamSearch``, one ``_search`` call per stream and chunk."""

    name = "stock"

    def __init__(self, model: torch.nn.Module, blank: int, beam: int):
        self.search, self.beam = RNNTBeamSearch(model, blank), beam

    def init_state(self):
        return None

    @torch.inference_mode()
    def step(self, enc: torch.Tensor, states: list) -> list:
        return [self.search._search(enc[i:i + 1], st, self.beam) for i, st in enumerate(states)]

    def best_tokens(self, hyps) -> list[int]:
        return [] if not hyps else list(hyps[0][0][1:])

    def hypotheses(self, hyps) -> list[tuple[list[int], float]]:
        return [(list(h[0]), float(h[3])) for h in hyps or []]


@dataclass
class Pipeline:
    name: str
    encoder: Any
    search: Any
    features: Any = None  # windows (S,) | (N, S) -> (N, T, F); None: the extractor's ``streaming``


def engine_encoder(model: torch.nn.Module):
    from emformer_variants.engine.encoder import supports

    return EngineEncoder(model) if supports(model) else StockEncoder(model)


def _stock(rec, beam: int, **_) -> Pipeline:
    return Pipeline("stock", StockEncoder(rec.model), StockSearch(rec.model, rec.blank, beam))


def _exact(rec, beam: int, **opts) -> Pipeline:
    from emformer_variants.engine.exact import ExactBeamSearch

    return Pipeline("exact", engine_encoder(rec.model), ExactBeamSearch(rec.model, rec.blank, beam, **opts))


def _modified(rec, beam: int, **opts) -> Pipeline:
    from emformer_variants.engine.modified import ModifiedBeamSearch

    return Pipeline("modified", engine_encoder(rec.model),
                    ModifiedBeamSearch(rec.model, rec.blank, beam, **opts))


def _greedy(rec, beam: int, **opts) -> Pipeline:
    from emformer_variants.engine.greedy import GreedySearch

    return Pipeline("greedy", engine_encoder(rec.model), GreedySearch(rec.model, rec.blank, **opts))


DECODERS: dict[str, Callable[..., Pipeline]] = dict(
    zip(DECODER_NAMES, (_stock, _exact, _modified, _greedy), strict=True))


def check_decoder(decoder: str, beam: int, max_symbols: int | None = None, lm: bool = False) -> None:
    if decoder not in DECODERS:
        raise UserError(f"decoder={decoder}: unknown; choose one of {', '.join(DECODERS)}")
    if lm and decoder != "modified":
        raise UserError(f"lm= with decoder={decoder}: shallow fusion runs in the modified beam search; "
                        "pass decoder=modified")
    if beam < 1:
        raise UserError(f"beam={beam}: must be at least 1")
    if max_symbols is not None and (decoder not in ("modified", "greedy") or max_symbols < 1):
        raise UserError(f"max_symbols={max_symbols}: a count >= 1, for decoder=modified or greedy only")


def build_pipeline(rec, decoder: str = "stock", beam: int = 10, **opts) -> Pipeline:
    """The named decoder for ``rec`` (build it after any precision change: it reads weights)."""
    check_decoder(decoder, beam, opts.get("max_symbols"), opts.get("lm") is not None)
    lm = opts.get("lm")
    if lm is not None and lm.vocab != rec.tokenizer.vocab_size:
        raise UserError(f"lm: built for {lm.vocab} symbols, this model has {rec.tokenizer.vocab_size}; "
                        "build it with this model's tokenizer "
                        "(python -m emformer_variants.lm.build --ckpt CKPT)")
    rec.eval()
    pipe = DECODERS[decoder](rec, beam, **opts)
    if decoder != "stock":  # the stock pipeline keeps torchaudio's feature transforms
        from emformer_variants.engine.features import EngineFeatures

        pipe.features = EngineFeatures(rec.features)
    return pipe
