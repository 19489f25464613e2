"""Token n-gram language models for shallow fusion in the modified beam search."""

# The LM's scale in shallow fusion, chosen on dev for the shipped base (docs/tiny_base.md): the
# default of transcribe's --lm-weight and scripts/bench_lm.py; conf/evaluate.yaml's lm_weight
# holds the same value (a test keeps them equal).
LM_WEIGHT = 0.1
