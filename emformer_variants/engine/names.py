"""The names of ``decoder=`` and ``precision=``, importable without torch: command-line parsers
(transcribe, the fused-path benchmarks) offer them before anything heavy is loaded;
``engine.pipeline`` and ``engine.precision`` implement them."""

DECODER_NAMES = ("stock", "exact", "modified", "greedy")

# The engine's own kernels, then torch's reference quantisation.
KERNEL_PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
PRECISIONS = KERNEL_PRECISIONS + ("int8-fbgemm",)
