"""Inference engine for streaming Emformer RNN-T (docs/engine.md).

- ``pipeline``: decoders by name (stock, exact, modified, greedy) -> encoder + search
- ``encoder``: torchaudio's streaming transcriber for N streams with per-stream history
- ``exact`` / ``modified`` / ``greedy``: searches over N streams in lockstep (``base``)
- ``predictor`` / ``joiner``: batched predictor steps with a prefix cache; joiner log-probs
- ``linear``: linears for small batches (oneDNN for large fp32 weights, fused projections)
- ``precision``: bf16 / fp16 / int8 conversion of a model's linears
"""
