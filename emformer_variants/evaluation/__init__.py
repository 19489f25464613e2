"""Streaming evaluation of a recognizer on a corpus split -> metrics and per-utterance rows
(``evaluate``), its FLOP count (``flops``) and operator profile (``profiling``)."""
