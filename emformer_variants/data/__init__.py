"""Corpus building, datasets, features and the DataModule."""
