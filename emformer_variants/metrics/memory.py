"""Process memory and streaming-state size."""

from __future__ import annotations

import resource
import sys

import psutil
import torch

_MIB = 1024 * 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``).

    Linux reports KiB; macOS reports bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    return psutil.Process().memory_info().rss / _MIB


def tensor_bytes(obj) -> int:
    """Sum of ``nbytes`` over every tensor in a nested list/tuple/dict (dict values).

    Used for the streaming state (Emformer left-context K/V cache, memory bank, LSTM
    h/c): bytes a server must hold per live stream. Views count their own logical
    size; non-tensor leaves (None, ints) count 0.
    """
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0
