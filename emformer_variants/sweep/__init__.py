"""Sweeps: W&B sweep files run locally (``python -m emformer_variants.sweep``), and the
Hydra callbacks that check and report a multirun (Optuna)."""
