"""Inference engine for streaming Emformer RNN-T (docs/engine.md).

- ``stream``: the streaming loop (features -> encoder step -> search step, one chunk at a
  time) that evaluation, profiling, the benchmark and the long-stream check drive via hooks
- ``endpoint``: when a live stream's segment ends (k2-style rules; docs/streaming.md)
- ``pipeline``: decoders by name (stock, exact, modified, greedy) -> encoder + search
- ``encoder``: torchaudio's streaming transcriber for N streams with per-stream history
- ``exact`` / ``modified`` / ``greedy``: searches over N streams in lockstep (``base``)
- ``predictor`` / ``joiner``: batched predictor steps with a prefix cache; joiner log-probs
- ``linear``: linears for small batches (the packed kernel for fp32, fused projections)
- ``packed``: the packed small-batch linear kernel, AVX2 or AVX-512 chosen at run time
  (``kernels/packed_linear.cpp``)
- ``precision``: bf16 / fp16 weights or int8 quantisation of a model's linears
- ``names``: the names of the decoders and precisions, importable without torch (argument parsers)
"""
