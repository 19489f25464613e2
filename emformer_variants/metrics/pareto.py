"""Pareto front of points where both coordinates are costs (lower is better)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def usable(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pareto_front(xs: Sequence[float | None], ys: Sequence[float | None]) -> list[int]:
    """Indices of the non-dominated points, sorted by x (then y).

    Point i is dominated when some j has ``x_j <= x_i`` and ``y_j <= y_i`` with at least one
    strict. Duplicates of a front point are all on the front. Points with a missing or
    non-finite coordinate take no part (never on the front, never dominate).
    """
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length: {len(xs)} vs {len(ys)}")
    idx = sorted((i for i in range(len(xs)) if usable(xs[i]) and usable(ys[i])),
                 key=lambda i: (xs[i], ys[i]))
    front: list[int] = []
    best_y = math.inf
    for i in idx:
        # Sorted by (x, y): i is dominated iff an earlier point has y < y_i, or has y == y_i
        # with a smaller x (an exact duplicate of a front point stays on the front).
        if ys[i] < best_y:
            front.append(i)
            best_y = ys[i]
        elif ys[i] == best_y and front and xs[front[-1]] == xs[i]:
            front.append(i)
    return front
