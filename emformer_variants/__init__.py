"""emformer-variants: model surgery and retraining of streaming Emformer RNN-T recognizers."""

__version__ = "0.1.0"
