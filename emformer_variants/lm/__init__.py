"""Token n-gram language models for shallow fusion in the modified beam search."""
