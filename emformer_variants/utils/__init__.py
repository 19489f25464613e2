"""Plumbing shared by the entry points: where things are, run folders, Hydra glue, config
checks, output files, W&B mode. No model or data code lives here."""
