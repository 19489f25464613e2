"""Read a W&B sweep file and expand it into runs, with no W&B server.

Supported (the subset of W&B's sweep configuration that maps onto Hydra overrides):

- ``method``: ``grid`` (every combination, in file order) or ``random`` (seeded).
- ``parameters``: dotted Hydra keys, each with ``value``, ``values`` (+ ``probabilities``)
  or ``distribution`` in ``DISTRIBUTIONS`` with ``min``/``max`` (``q``, ``mu``, ``sigma``).
- ``command``: ``${env} ${interpreter} ${program} ${args_no_hyphens}``; any other item is
  a fixed Hydra override (e.g. ``variant.budget=null``).
- ``program`` (train.py or evaluate.py), ``metric`` (``name``, ``goal``), ``name``.

Values reach the program exactly as the W&B agent formats them (``f"{key}={value}"``),
so a run here and a run under ``wandb agent`` see the same overrides.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from emformer_variants.errors import UserError

METHODS = ("grid", "random")
# distribution -> required keys
DISTRIBUTIONS = {
    "constant": ("value",),
    "categorical": ("values",),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max"),
    "log_uniform": ("min", "max"),  # min/max are natural-log exponents (W&B's convention)
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max"),
    "normal": (),
    "q_normal": (),
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
TOP_LEVEL = {"program", "method", "metric", "parameters", "command", "name", "description",
             "project", "entity", "early_terminate", "run_cap"}
PARAM_KEYS = {"value", "values", "probabilities", "distribution", "min", "max", "q", "mu", "sigma"}
MACROS = {"${env}", "${interpreter}", "${program}", "${args_no_hyphens}"}
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's default


@dataclass(frozen=True)
class Param:
    name: str
    distribution: str
    values: tuple = ()
    probabilities: tuple | None = None
    min: float | None = None
    max: float | None = None
    q: float = 1.0
    mu: float = 0.0
    sigma: float = 1.0


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    program: str
    method: str
    metric: str
    goal: str
    params: tuple[Param, ...]
    fixed_overrides: tuple[str, ...] = ()
    name: str = ""
    run_cap: int | None = None
    extra: dict = field(default_factory=dict)


def _fail(path: Path, where: str, msg: str) -> UserError:
    return UserError(f"{path}: {where}: {msg}")


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and check a sweep file; every problem is a one-line UserError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: sweep file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise _fail(path, where, f"not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(doc, dict):
        raise _fail(path, "top level", "a sweep file is a mapping with method, metric, parameters")
    unknown = sorted(set(doc) - TOP_LEVEL)
    if unknown:
        raise _fail(path, unknown[0], f"unknown key; a sweep file has {sorted(TOP_LEVEL)}")

    method = doc.get("method")
    if method is None:
        raise _fail(path, "method", "missing; choose grid or random (bayes needs a W&B server)")
    if method not in METHODS:
        hint = " (bayes needs a W&B server: use wandb agent, or --method random here)" \
            if method == "bayes" else ""
        raise _fail(path, "method", f"{method!r} is not one of {list(METHODS)}{hint}")

    metric = doc.get("metric") or {}
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise _fail(path, "metric.name", "missing; e.g. metric: {name: val/wer, goal: minimize}")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise _fail(path, "metric.goal", f"{goal!r}: choose minimize or maximize")

    program = doc.get("program")
    if not isinstance(program, str) or not program.endswith(".py"):
        raise _fail(path, "program", f"{program!r}: give the script, e.g. program: train.py")

    raw = doc.get("parameters")
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "parameters", "missing or empty; give at least one Hydra key to sweep")
    params = tuple(_param(path, str(k), v) for k, v in raw.items())
    if method == "grid":
        for p in params:
            if p.distribution not in GRID_DISTRIBUTIONS:
                raise _fail(path, f"parameters.{p.name}", f"distribution {p.distribution} cannot be "
                            f"enumerated by method: grid; use values or one of {list(GRID_DISTRIBUTIONS)}")

    fixed = _command(path, doc.get("command", DEFAULT_COMMAND))
    run_cap = doc.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise _fail(path, "run_cap", f"{run_cap!r} must be an integer >= 1")
    return SweepSpec(path, program, method, metric["name"], goal, params, tuple(fixed),
                     str(doc.get("name") or path.stem), run_cap)


def _command(path: Path, command) -> list[str]:
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise _fail(path, "command", "must be a list of strings")
    if "${args_no_hyphens}" not in command:
        raise _fail(path, "command", "values must arrive as Hydra overrides: use "
                    "[${env}, ${interpreter}, ${program}, ${args_no_hyphens}]")
    fixed = []
    for item in command:
        if item in MACROS:
            continue
        if item.startswith("${"):
            raise _fail(path, "command", f"macro {item} is not supported here; use {sorted(MACROS)}")
        if "=" not in item or item.startswith("-"):
            raise _fail(path, "command", f"{item!r}: extra items must be Hydra overrides key=value")
        fixed.append(item)
    return fixed


def _num(path: Path, where: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(path, where, f"{v!r} must be a finite number")
    return v


def _param(path: Path, name: str, spec) -> Param:
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        raise _fail(path, where, "must be a mapping with value, values or distribution")
    if "parameters" in spec:
        raise _fail(path, where, "nested parameters do not map onto Hydra overrides; "
                    "use dotted keys such as module.optimizer.lr")
    unknown = sorted(set(spec) - PARAM_KEYS)
    if unknown:
        raise _fail(path, f"{where}.{unknown[0]}", f"unknown key; a parameter has {sorted(PARAM_KEYS)}")
    dist = spec.get("distribution")
    if dist is None:  # W&B's inference rules
        if "values" in spec:
            dist = "categorical"
        elif "value" in spec:
            dist = "constant"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        else:
            raise _fail(path, where, "give value, values, or distribution with min/max")
    if dist not in DISTRIBUTIONS:
        raise _fail(path, f"{where}.distribution", f"{dist!r} is not one of {sorted(DISTRIBUTIONS)}")
    missing = [k for k in DISTRIBUTIONS[dist] if k not in spec]
    if missing:
        raise _fail(path, f"{where}.{missing[0]}", f"missing; distribution {dist} needs "
                    f"{list(DISTRIBUTIONS[dist])}")
    if dist == "constant":
        values = (spec["value"],)
    elif dist == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise _fail(path, f"{where}.values", "must be a non-empty list")
        values = tuple(values)
    else:
        values = ()
    for v in values:
        if v is None:  # the agent would pass the string "None", which Hydra keeps as a string
            raise _fail(path, where, "null reaches Hydra as the string 'None' under wandb agent; "
                        f"put {name}=null in command instead")
    probs = spec.get("probabilities")
    if probs is not None:
        if dist != "categorical" or not isinstance(probs, list) or len(probs) != len(values):
            raise _fail(path, f"{where}.probabilities", "needs values and one probability per value")
        probs = tuple(_num(path, f"{where}.probabilities", p) for p in probs)
        if any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
            raise _fail(path, f"{where}.probabilities", "must be >= 0 and sum to 1")
    kw = {k: _num(path, f"{where}.{k}", spec[k]) for k in ("min", "max", "q", "mu", "sigma") if k in spec}
    if "min" in kw and "max" in kw and kw["min"] > kw["max"]:
        raise _fail(path, f"{where}.min", f"min={kw['min']} is above max={kw['max']}")
    if dist == "int_uniform" and not all(isinstance(spec[k], int) for k in ("min", "max")):
        raise _fail(path, where, "int_uniform needs integer min and max")
    if dist == "log_uniform_values" or dist == "q_log_uniform_values":
        if kw["min"] <= 0:
            raise _fail(path, f"{where}.min", f"{dist} needs min > 0")
    if kw.get("q", 1) <= 0 or kw.get("sigma", 1) <= 0:
        raise _fail(path, where, "q and sigma must be > 0")
    return Param(name, dist, values, probs, **kw)


# ---------------------------------------------------------------- expansion

def _grid_values(p: Param) -> list:
    if p.distribution in ("constant", "categorical"):
        return list(p.values)
    if p.distribution == "int_uniform":
        return list(range(int(p.min), int(p.max) + 1))
    n = int(math.floor((p.max - p.min) / p.q + 1e-9))  # q_uniform: min, min+q, ..., <= max
    return [_round_q(p.min + i * p.q, p.q) for i in range(n + 1)]


def _round_q(x: float, q: float):
    v = round(x / q) * q
    return int(round(v)) if float(q).is_integer() else round(v, 10)


def sample_value(p: Param, rng: random.Random):
    d = p.distribution
    if d == "constant":
        return p.values[0]
    if d == "categorical":
        if p.probabilities:
            return rng.choices(p.values, weights=p.probabilities)[0]
        return rng.choice(p.values)
    if d == "int_uniform":
        return rng.randint(int(p.min), int(p.max))
    if d == "uniform":
        return rng.uniform(p.min, p.max)
    if d == "q_uniform":
        return _round_q(rng.uniform(p.min, p.max), p.q)
    if d == "log_uniform":
        return math.exp(rng.uniform(p.min, p.max))
    if d == "log_uniform_values":
        return math.exp(rng.uniform(math.log(p.min), math.log(p.max)))
    if d == "q_log_uniform_values":
        return _round_q(math.exp(rng.uniform(math.log(p.min), math.log(p.max))), p.q)
    if d == "normal":
        return rng.gauss(p.mu, p.sigma)
    if d == "q_normal":
        return _round_q(rng.gauss(p.mu, p.sigma), p.q)
    raise AssertionError(d)


def expand(spec: SweepSpec, count: int | None = None, seed: int = 0,
           method: str | None = None) -> list[dict]:
    """The runs of a sweep: a list of ``{param name: value}`` in launch order.

    grid: every combination (first parameter slowest), the first ``count`` if given.
    random: ``count`` draws (or ``run_cap``), deterministic for a given ``seed``.
    """
    method = method or spec.method
    if method not in METHODS:
        raise UserError(f"--method {method}: choose one of {list(METHODS)}")
    if method == "grid":
        for p in spec.params:
            if p.distribution not in GRID_DISTRIBUTIONS:
                raise UserError(f"{spec.path}: parameters.{p.name}: distribution {p.distribution} "
                                "cannot be enumerated by a grid")
        names = [p.name for p in spec.params]
        points = [dict(zip(names, combo, strict=True))
                  for combo in itertools.product(*(_grid_values(p) for p in spec.params))]
        return points[:count] if count else points
    count = count or spec.run_cap
    if not count:
        raise UserError(f"{spec.path}: method random needs --count N (or run_cap in the file)")
    rng = random.Random(seed)
    return [{p.name: sample_value(p, rng) for p in spec.params} for _ in range(count)]


def to_overrides(point: dict) -> list[str]:
    """``key=value`` exactly as ``wandb agent`` renders ``${args_no_hyphens}``."""
    return [f"{k}={v}" for k, v in point.items()]
