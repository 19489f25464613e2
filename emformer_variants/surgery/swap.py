"""The one module swap: collect ``{fqn: new module}`` first, then set each on its parent.

Every transform (the surgeries, ``engine.precision``) builds its replacements while walking
the tree once, then calls ``swap_modules_``; nothing is set while ``named_modules()`` is
being iterated (gpt-fast's ``quantize.py``, icefall's ``scaling_converter.py``).
"""

from __future__ import annotations

from torch import nn


def swap_modules_(root: nn.Module, new: dict[str, nn.Module]) -> list[str]:
    """Replace each submodule of ``root`` named in ``new`` (fqn relative to ``root``) in place;
    returns the replaced names in order. A ``ModuleList`` entry is named by its index."""
    for fqn, module in new.items():
        parent, _, child = fqn.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, child, module)
    return list(new)
