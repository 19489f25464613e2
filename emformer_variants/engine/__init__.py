"""Inference engine: batched beam searches, fast linears, batched streaming encoder."""
