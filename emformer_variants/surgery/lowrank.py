"""variant=lowrank: replace chosen linears W (out x in) by two thinner ones, W ~ B A with
A (r x in) and B (out x r).

Methods (how the factors are chosen; all exact at r = min(in, out)):
  ``svd``     truncated SVD of W (Eckart-Young: best rank r in Frobenius norm of W).
  ``asvd``    SVD of W S with S = diag(mean|x|)^alpha from calibration inputs, then
              W ~ (W S)_r S^-1 (ASVD, Yuan et al. 2023): input channels that carry large
              activations keep more of their weight.
  ``whiten``  SVD of W L with L L^T = E[x x^T] (Cholesky of the input second moment),
              then W ~ (W L)_r L^-1 (SVD-LLM, Wang et al. 2024): the discarded singular
              values of W L are exactly the output error sqrt(E||(W - W_r) x||^2).

Rank selection (one of): ``rank`` (same r everywhere), ``ratio`` (of min(in, out)),
``energy`` (smallest r keeping that fraction of sum sigma^2 of the matrix the method
factorises), ``budget`` (one global budget of params or FLOPs over all targets, ranks
allocated greedily by normalised sigma^2 per unit of cost, cf. SVD-LLM / rank allocation).
The chosen per-layer ranks are stored in the recorded spec (``ranks``), so a checkpoint
rebuilds the same shapes with init="empty" and without calibration data.

Legend: N calibration rows (frames), r rank, S segment / R right-context frames and M
memory vectors per streaming chunk after time reduction (see metrics/flops.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from emformer_variants.errors import UserError
from emformer_variants.metrics.flops import analytic_emformer_rnnt_flops
from emformer_variants.surgery.registry import Surgery, SurgeryReport, register_surgery, spec_from_config
from emformer_variants.surgery.swap import swap_modules_

NAME = "lowrank"
METHODS = ("svd", "asvd", "whiten")
BUDGET_METRICS = ("params", "flops")

# Target groups: regexes over fqns relative to ``rec.model`` (a torchaudio RNNT).
_LAYER = r"transcriber\.transformer\.emformer_layers\.\d+"
GROUPS: dict[str, str] = {
    "ffn": _LAYER + r"\.pos_ff\.\d+",
    "attention": _LAYER + r"\.attention\.(emb_to_query|emb_to_key_value|out_proj)",
    "encoder_io": r"transcriber\.(input_linear|output_linear)",
    "predictor": r"predictor\.linear",
    # _CustomLSTM calls x2g / p2g as plain modules, so they factorise like any linear.
    "lstm": r"predictor\.lstm_layers\.\d+\.(x2g|p2g)",
    "joiner": r"joiner\.linear",
}
_GLOB_CHARS = set("*?[.")


def _is_pattern(target: str) -> bool:
    return bool(_GLOB_CHARS & set(target))


@dataclass(frozen=True)
class LowRankConfig:
    """See the module docstring. ``targets``: group names (``GROUPS``) or fnmatch globs over
    fqns relative to ``rec.model`` (e.g. ``transcriber.transformer.emformer_layers.1*.pos_ff.4``).
    ``ranks``: resolved ``{fqn: rank}`` of the factorised layers; filled in by the surgery
    (recorded in checkpoints); when set it decides the shapes and rank/ratio/energy/budget
    are kept only as a record of how they were chosen."""

    targets: list[str] = field(default_factory=lambda: ["ffn", "attention"])
    rank: int | None = None
    ratio: float | None = None
    energy: float | None = None
    budget: float | None = None
    budget_metric: str = "flops"
    method: str = "svd"
    alpha: float = 0.5
    min_rank: int = 1
    skip_if_not_smaller: bool = True
    ranks: dict[str, int] | None = None

    def __post_init__(self):
        targets = [self.targets] if isinstance(self.targets, str) else list(self.targets or [])
        object.__setattr__(self, "targets", [str(t) for t in targets])
        if not self.targets:
            raise ValueError("variant.targets is empty; give groups "
                             f"{sorted(GROUPS)} or fqn glob patterns")
        for t in self.targets:
            if t not in GROUPS and not _is_pattern(t):
                raise ValueError(
                    f"variant.targets: unknown group {t!r}; groups are {sorted(GROUPS)}, or give an "
                    "fqn glob pattern such as 'transcriber.transformer.emformer_layers.*.pos_ff.1'")
        chosen = [k for k in ("rank", "ratio", "energy", "budget") if getattr(self, k) is not None]
        if self.ranks is None and len(chosen) != 1:
            raise ValueError("variant: set exactly one of rank, ratio, energy, budget "
                             f"(got {chosen or 'none'})")
        if self.ranks is not None and len(chosen) > 1:
            raise ValueError(f"variant: set at most one of rank, ratio, energy, budget (got {chosen})")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank < 1):
            raise ValueError(f"variant.rank={self.rank!r} must be an integer >= 1")
        for key in ("ratio", "energy", "budget"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ValueError(f"variant.{key}={v!r} must be a number in (0, 1]")
        if self.budget_metric not in BUDGET_METRICS:
            raise ValueError(f"variant.budget_metric={self.budget_metric!r}: choose one of "
                             f"{list(BUDGET_METRICS)}")
        if self.method not in METHODS:
            raise ValueError(f"variant.method={self.method!r}: choose one of {list(METHODS)}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ValueError(f"variant.alpha={self.alpha!r} must be a number >= 0")
        if isinstance(self.min_rank, bool) or not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ValueError(f"variant.min_rank={self.min_rank!r} must be an integer >= 1")
        if not isinstance(self.skip_if_not_smaller, bool):
            raise ValueError(f"variant.skip_if_not_smaller={self.skip_if_not_smaller!r} must be "
                             "true or false")
        if self.ranks is not None:
            ranks = dict(self.ranks)
            for k, v in ranks.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"variant.ranks[{k!r}]={v!r} must be an integer >= 1")
            object.__setattr__(self, "ranks", {str(k): int(v) for k, v in ranks.items()})


# ---------------------------------------------------------------- the module

@dataclass
class CalibStats:
    """Input statistics of one linear over N calibration rows: ``abs_mean`` (in,) = mean|x|,
    ``gram`` (in, in) = X^T X / N (float64)."""

    abs_mean: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    rows: int = 0


@dataclass
class Factorisation:
    """W = u diag(s) right exactly (float64): u (out, k), s (k,) descending, right (k, in)."""

    u: torch.Tensor
    s: torch.Tensor
    right: torch.Tensor

    def energy_kept(self, rank: int) -> float:
        e = self.s.square()
        return float(e[:rank].sum() / e.sum().clamp_min(1e-300))


def _cholesky_damped(gram: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """L with L L^T = gram + damp I. The damping (GPTQ-style fraction of the mean diagonal)
    keeps L^-1 bounded in directions the calibration rows never visit (N < in)."""
    mean_diag = gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    for _ in range(6):
        chol, info = torch.linalg.cholesky_ex(gram + percdamp * mean_diag * eye)
        if int(info) == 0:
            return chol
        percdamp *= 10
    raise UserError("variant.method=whiten: the calibration input covariance is not positive "
                    "definite even after damping; use more calibration data or method=svd")


def factorise(weight: torch.Tensor, method: str = "svd", calib_stats: CalibStats | None = None,
              alpha: float = 0.5) -> Factorisation:
    """Full SVD of W (out, in), of W S (asvd) or of W L (whiten), mapped back to W's input."""
    w = weight.detach().to(torch.float64).cpu()
    if method == "svd":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return Factorisation(u, s, vh)
    if calib_stats is None:
        raise UserError(f"variant.method={method} needs calibration statistics (activations)")
    if method == "asvd":
        scale = calib_stats.abs_mean.to(torch.float64).cpu().pow(alpha)
        scale = scale.clamp_min(scale.max().clamp_min(1e-30) * 1e-6)  # dead channels
        u, s, vh = torch.linalg.svd(w * scale, full_matrices=False)
        return Factorisation(u, s, vh / scale)
    if method == "whiten":
        chol = _cholesky_damped(calib_stats.gram.to(torch.float64).cpu())
        u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
        # vh L^-1 = (L^-T vh^T)^T: one triangular solve instead of an inverse.
        right = torch.linalg.solve_triangular(chol.T, vh.T, upper=True).T
        return Factorisation(u, s, right)
    raise ValueError(f"unknown method {method!r}")


class LowRankLinear(nn.Module):
    """x (..., in) -> up(down(x)) (..., out): ``down`` Linear(in, r, no bias), ``up``
    Linear(r, out) with the original bias. Params r (in + out) (+ out) vs in x out."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def linear_chain(self) -> list[nn.Linear]:
        """``forward`` as linears applied in order (the streaming engine runs each in its kernel)."""
        return [self.down, self.up]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @classmethod
    def empty_like(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        return cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                   device=linear.weight.device, dtype=linear.weight.dtype)

    @classmethod
    def from_factors(cls, linear: nn.Linear, fact: Factorisation, rank: int) -> LowRankLinear:
        """Keep the top ``rank`` singular triplets, sqrt(sigma) on each side (balanced
        factors train better than putting all the scale on one)."""
        new = cls.empty_like(linear, rank)
        root = fact.s[:rank].sqrt()
        with torch.no_grad():
            new.down.weight.copy_(root[:, None] * fact.right[:rank])
            new.up.weight.copy_(fact.u[:, :rank] * root[None, :])
            if linear.bias is not None:
                new.up.bias.copy_(linear.bias)
        return new

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, method: str = "svd",
                    calib_stats: CalibStats | None = None, alpha: float = 0.5) -> LowRankLinear:
        k = min(linear.in_features, linear.out_features)
        if not 1 <= rank <= k:
            raise ValueError(f"rank {rank} must be in [1, {k}] for {linear}")
        return cls.from_factors(linear, factorise(linear.weight, method, calib_stats, alpha), rank)


# ---------------------------------------------------------------- geometry and FLOPs

@dataclass(frozen=True)
class LinearGeom:
    """A linear of the RNN-T: sizes and the rows it processes per steady-state streaming
    chunk (encoder only; None for predictor/joiner, which run per token / per hypothesis)."""

    in_features: int
    out_features: int
    rows_per_chunk: int | None


def linear_geometry(arch: dict) -> dict[str, LinearGeom]:
    """Every nn.Linear of ``emformer_rnnt_model(**arch)`` by fqn (relative to the RNNT), with
    the per-chunk row counts ``analytic_emformer_rnnt_flops`` uses (steady state)."""
    stride = arch["time_reduction_stride"]
    d_tr = arch["time_reduction_input_dim"]
    d, ffn, enc = d_tr * stride, arch["transformer_ffn_dim"], arch["encoding_dim"]
    seg, rc = arch["segment_length"] // stride, arch["right_context_length"] // stride
    mems = arch["transformer_max_memory_size"]
    queries = rc + seg + (1 if mems > 0 else 0)  # right context + segment + summary vector
    geo = {"transcriber.input_linear": LinearGeom(arch["input_dim"], d_tr,
                                                  arch["segment_length"] + arch["right_context_length"]),
           "transcriber.output_linear": LinearGeom(d, enc, seg)}
    for i in range(arch["transformer_num_layers"]):
        p = f"transcriber.transformer.emformer_layers.{i}."
        geo[p + "attention.emb_to_query"] = LinearGeom(d, d, queries)
        geo[p + "attention.emb_to_key_value"] = LinearGeom(d, 2 * d, mems + rc + seg)
        geo[p + "attention.out_proj"] = LinearGeom(d, d, queries)
        geo[p + "pos_ff.1"] = LinearGeom(d, ffn, rc + seg)
        geo[p + "pos_ff.4"] = LinearGeom(ffn, d, rc + seg)
    emb = arch["symbol_embedding_dim"]
    for i in range(arch["num_lstm_layers"]):
        geo[f"predictor.lstm_layers.{i}.x2g"] = LinearGeom(emb, 4 * emb, None)
        geo[f"predictor.lstm_layers.{i}.p2g"] = LinearGeom(emb, 4 * emb, None)
    geo["predictor.linear"] = LinearGeom(emb, enc, None)
    if arch.get("num_symbols") is not None:
        geo["joiner.linear"] = LinearGeom(enc, arch["num_symbols"], None)
    return geo


def _matches(target: str, fqn: str) -> bool:
    if target in GROUPS:
        return re.fullmatch(GROUPS[target], fqn) is not None
    return fnmatch.fnmatchcase(fqn, target)


def _not_smaller(rank: int, n_in: int, n_out: int) -> bool:
    return rank * (n_in + n_out) >= n_in * n_out


def _shape_rank(config: LowRankConfig, n_in: int, n_out: int) -> int:
    """Rank from ``rank`` or ``ratio`` (shape only)."""
    k = min(n_in, n_out)
    if config.rank is not None:
        return config.rank
    return min(k, max(config.min_rank, round(config.ratio * k)))


def analytic_encoder_flops_delta(arch: dict, ranks: dict[str, int] | LowRankConfig) -> int:
    """Change of encoder FLOPs per steady-state streaming chunk (one ``transcriber.infer``)
    vs. ``analytic_emformer_rnnt_flops(arch)["encoder"]`` when the linears in ``ranks``
    (fqn -> rank) are factorised: each goes from 2 N in out to 2 N r (in + out) FLOPs for
    its N rows per chunk. Predictor/joiner entries do not change the encoder and are ignored.

    A ``LowRankConfig`` is accepted when its ranks follow from shapes alone (``ranks`` set,
    or ``rank`` / ``ratio``); ``energy`` / ``budget`` depend on the weights: pass the
    ``report.extra["ranks"]`` of the surgery instead.
    """
    geo = linear_geometry(arch)
    if isinstance(ranks, LowRankConfig):
        ranks = _ranks_from_shapes(ranks, {k: (g.in_features, g.out_features) for k, g in geo.items()})
    delta = 0
    for fqn, r in ranks.items():
        g = geo.get(fqn)
        if g is None:
            raise ValueError(f"{fqn!r} is not a linear of this architecture")
        if g.rows_per_chunk is not None:
            n_in, n_out = g.in_features, g.out_features
            delta += 2 * g.rows_per_chunk * (r * (n_in + n_out) - n_in * n_out)
    return delta


def _ranks_from_shapes(config: LowRankConfig, shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
    if config.ranks is not None:
        return dict(config.ranks)
    if config.rank is None and config.ratio is None:
        raise ValueError("energy/budget ranks depend on the weights; pass the surgery's resolved ranks")
    out = {}
    for fqn, (n_in, n_out) in shapes.items():
        if any(_matches(t, fqn) for t in config.targets):
            r = _shape_rank(config, n_in, n_out)
            if not (config.skip_if_not_smaller and _not_smaller(r, n_in, n_out)):
                out[fqn] = r
    return out


# ---------------------------------------------------------------- calibration

@torch.no_grad()
def collect_calibration_stats(model: nn.Module, targets: dict[str, nn.Linear], calibration,
                              need_abs: bool, need_gram: bool) -> dict[str, CalibStats]:
    """Run every ``(features (B, T, F), lengths (B,))`` batch through ``model.transcribe``
    (eval mode) and accumulate each target's input statistics with forward hooks."""
    sums = {k: CalibStats() for k in targets}
    acc_abs: dict[str, torch.Tensor] = {}
    acc_gram: dict[str, torch.Tensor] = {}

    def hook(fqn):
        def fn(module, inputs, output):
            x = inputs[0].detach().reshape(-1, module.in_features).to(torch.float64).cpu()
            sums[fqn].rows += x.shape[0]
            if need_abs:
                acc_abs[fqn] = acc_abs.get(fqn, 0) + x.abs().sum(0)
            if need_gram:
                acc_gram[fqn] = acc_gram.get(fqn, 0) + x.T @ x
        return fn

    handles = [m.register_forward_hook(hook(k)) for k, m in targets.items()]
    was_training = model.training
    model.eval()
    try:
        for features, lengths in calibration:
            model.transcribe(features, lengths)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for k, st in sums.items():
        if st.rows:
            st.abs_mean = acc_abs[k] / st.rows if need_abs else None
            st.gram = acc_gram[k] / st.rows if need_gram else None
    return sums


# ---------------------------------------------------------------- rank allocation

def allocate_budget(facts: dict[str, Factorisation], shapes: dict[str, tuple[int, int]],
                    unit_rows: dict[str, int], budget: float, min_rank: int,
                    skip_if_not_smaller: bool) -> dict[str, int | None]:
    """Greedy global rank allocation under one budget: cost of a layer at rank r is
    rows x r (in + out) (rows = 1 for params, rows per chunk for FLOPs); dense cost
    rows x in x out; keep sum(cost) <= budget x sum(dense cost). Each next singular
    value is scored by its share of the layer's energy per unit of cost, so layers whose
    spectra decay fast give up rank first. With ``skip_if_not_smaller`` a layer whose
    factorised cost would reach its dense cost stays dense (returned as None)."""
    dense = {k: unit_rows[k] * shapes[k][0] * shapes[k][1] for k in facts}
    unit = {k: unit_rows[k] * sum(shapes[k]) for k in facts}
    full = {k: min(shapes[k]) for k in facts}

    def cost(k, r):
        if r is None:
            return dense[k]
        return r * unit[k]

    ranks: dict[str, int | None] = {k: min(min_rank, full[k]) for k in facts}
    for k in facts:
        if skip_if_not_smaller and _not_smaller(ranks[k], *shapes[k]):
            ranks[k] = None
    target = budget * sum(dense.values())
    spent = sum(cost(k, r) for k, r in ranks.items())
    if spent > target:
        raise UserError(f"variant.budget={budget}: even min_rank={min_rank} everywhere keeps "
                        f"{spent / sum(dense.values()):.3f} of the targeted cost; raise the budget")
    cands = []
    for k, f in facts.items():
        e = f.s.square()
        share = (e / e.sum().clamp_min(1e-300)).tolist()
        cands += [(-share[i] / unit[k], k, i) for i in range(ranks[k] or full[k], full[k])]
    cands.sort()
    for _, k, i in cands:
        r = ranks[k]
        if r is None or r != i:  # already dense, or an earlier step of this layer did not fit
            continue
        nxt = None if skip_if_not_smaller and _not_smaller(r + 1, *shapes[k]) else r + 1
        step = cost(k, nxt) - cost(k, r)
        if spent + step <= target:
            ranks[k], spent = nxt, spent + step
    return ranks


# ---------------------------------------------------------------- the surgery

def _find_targets(model: nn.Module, config: LowRankConfig) -> dict[str, nn.Linear]:
    inside_lowrank = [n for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
    linears = {n: m for n, m in model.named_modules()
               if type(m) is nn.Linear and not any(n.startswith(p + ".") for p in inside_lowrank)}
    found: dict[str, nn.Linear] = {}
    for t in config.targets:
        hits = {n: m for n, m in linears.items() if _matches(t, n)}
        if not hits:
            raise UserError(f"variant.targets: {t!r} matches no nn.Linear of the model "
                            "(fqns relative to rec.model, e.g. 'transcriber.transformer."
                            "emformer_layers.0.pos_ff.1')")
        found.update(hits)
    return dict(sorted(found.items(), key=lambda kv: list(linears).index(kv[0])))


def check_fits_model(rec, config: LowRankConfig, init: str = "convert") -> dict[str, nn.Linear]:
    """Checks that depend on the model (UserError naming the field), before anything
    changes; returns the target linears. Also run at compose time on a meta-device model."""
    if init not in ("convert", "empty"):
        raise UserError(f"init={init!r}: choose 'convert' or 'empty'")
    targets = _find_targets(rec.model, config)
    shapes = {k: (m.in_features, m.out_features) for k, m in targets.items()}
    geo = linear_geometry(rec.arch)
    if config.ranks is not None:
        unknown = sorted(set(config.ranks) - set(targets))
        if unknown:
            raise UserError(f"variant.ranks: {unknown[:3]} are not among the linears matched by "
                            f"variant.targets={config.targets}")
        for k, r in config.ranks.items():
            if r > min(shapes[k]):
                raise UserError(f"variant.ranks[{k!r}]={r} exceeds its full rank {min(shapes[k])}")
    if config.rank is not None and config.ranks is None:
        too_big = {k: min(s) for k, s in shapes.items() if config.rank > min(s)}
        if too_big:
            k = min(too_big, key=too_big.get)
            raise UserError(f"variant.rank={config.rank} exceeds the full rank min(in, out) of "
                            f"{len(too_big)} target(s), e.g. {k}; max is {too_big[k]}")
    needs_weights = config.ranks is None and (config.energy is not None or config.budget is not None)
    if init == "empty" and needs_weights:
        raise UserError("variant.energy/budget choose ranks from the weights; init='empty' needs the "
                        "resolved variant.ranks (as recorded in checkpoints)")
    if config.budget is not None and config.ranks is None and config.budget_metric == "flops":
        no_rows = [k for k in targets if k not in geo or geo[k].rows_per_chunk is None]
        if no_rows:
            raise UserError(f"variant.budget_metric=flops counts encoder FLOPs per chunk, but {no_rows[:3]} "
                            "are not encoder linears; use budget_metric=params or drop them from "
                            "variant.targets")
    return targets


def apply_lowrank_(rec, config: LowRankConfig, init: str = "convert", calibration=None) -> SurgeryReport:
    """Factorise ``config.targets`` of ``rec.model`` in place; see the module docstring.

    report.extra: ``ranks`` {fqn: r} of the factorised layers, ``skipped`` {fqn: reason},
    ``layers`` {fqn: rank, sizes, params and (encoder) FLOPs per chunk before/after,
    retained energy}, ``encoder_flops_per_chunk_before/_after`` (analytic, steady state),
    ``resolved_spec`` (the spec with ``ranks`` filled in, recorded in checkpoints).
    """
    targets = check_fits_model(rec, config, init)
    model = rec.model
    shapes = {k: (m.in_features, m.out_features) for k, m in targets.items()}
    geo = linear_geometry(rec.arch)
    convert = init == "convert"
    stats: dict[str, CalibStats] = {}
    if convert and config.method in ("asvd", "whiten"):
        if not calibration:
            raise UserError(f"variant.method={config.method} needs calibration batches (features, "
                            "lengths); none were given: pass calibration data or use method=svd")
        stats = collect_calibration_stats(model, targets, calibration,
                                          need_abs=config.method == "asvd",
                                          need_gram=config.method == "whiten")
        unseen = [k for k, st in stats.items() if st.rows == 0]
        if unseen:
            raise UserError(f"variant.method={config.method} needs activations of {unseen[:3]}, which "
                            "rec.model.transcribe never runs (predictor/joiner); use method=svd or drop "
                            "them from variant.targets")

    # --- factorise and choose ranks (no module changed yet)
    facts = ({k: factorise(m.weight, config.method, stats.get(k), config.alpha) for k, m in targets.items()}
             if convert else {})
    skipped: dict[str, str] = {}
    chosen: dict[str, int] = {}
    if config.ranks is not None:
        chosen = {k: config.ranks[k] for k in targets if k in config.ranks}
        skipped = {k: "not in variant.ranks" for k in targets if k not in config.ranks}
    elif config.budget is not None:
        rows = {k: 1 if config.budget_metric == "params" else geo[k].rows_per_chunk for k in targets}
        alloc = allocate_budget(facts, shapes, rows, config.budget, config.min_rank,
                                config.skip_if_not_smaller)
        for k, r in alloc.items():
            if r is None:
                skipped[k] = "budget allocation keeps it dense (factorised would not be smaller)"
            else:
                chosen[k] = r
    else:
        for k, (n_in, n_out) in shapes.items():
            if config.energy is not None:
                e = facts[k].s.square()
                cum = torch.cumsum(e, 0) / e.sum().clamp_min(1e-300)
                r = int(torch.searchsorted(cum, torch.tensor(config.energy - 1e-12, dtype=cum.dtype))) + 1
                r = min(min(n_in, n_out), max(config.min_rank, r))
            else:
                r = _shape_rank(config, n_in, n_out)
            if config.skip_if_not_smaller and _not_smaller(r, n_in, n_out):
                skipped[k] = (f"rank {r}: r*(in+out)={r * (n_in + n_out)} >= in*out={n_in * n_out}, "
                              "not smaller")
            else:
                chosen[k] = r

    new_modules = {k: (LowRankLinear.from_factors(targets[k], facts[k], r) if convert
                       else LowRankLinear.empty_like(targets[k], r)) for k, r in chosen.items()}
    swap_modules_(model, new_modules)

    # --- report
    layers = {}
    for k, (n_in, n_out) in shapes.items():
        r = chosen.get(k)
        bias = 0 if targets[k].bias is None else n_out
        rows = geo[k].rows_per_chunk if k in geo else None
        layers[k] = {
            "in": n_in, "out": n_out, "full_rank": min(n_in, n_out), "rank": r,
            "params_before": n_in * n_out + bias,
            "params_after": (r * (n_in + n_out) if r else n_in * n_out) + bias,
            "flops_per_chunk_before": None if rows is None else 2 * rows * n_in * n_out,
            "flops_per_chunk_after": (None if rows is None else
                                      2 * rows * (r * (n_in + n_out) if r else n_in * n_out)),
            "energy_kept": facts[k].energy_kept(r) if (convert and r) else None,
        }
    before = analytic_emformer_rnnt_flops(rec.arch)["encoder"]
    resolved = dataclasses.replace(config, ranks=dict(chosen))
    return SurgeryReport(name=NAME, replaced=list(new_modules), extra={
        "method": config.method,
        "ranks": dict(chosen),
        "skipped": skipped,
        "layers": layers,
        "encoder_flops_per_chunk_before": before,
        "encoder_flops_per_chunk_after": before + analytic_encoder_flops_delta(
            rec.arch, {k: r for k, r in chosen.items() if k in geo}),
        "resolved_spec": spec_from_config(NAME, resolved),
    })


def _touches(config: LowRankConfig) -> set[str]:
    """Attention or FFN when a factorised linear lies inside one, else the linear itself."""
    return {"attention" if ".attention." in fqn else "ffn" if ".pos_ff." in fqn else fqn
            for fqn in (config.ranks or {})}


def _shapes_from_weights(config: LowRankConfig) -> bool:
    """energy / budget choose the ranks from the singular values (unless already resolved)."""
    return config.ranks is None and (config.energy is not None or config.budget is not None)


register_surgery(Surgery(
    name=NAME, config=LowRankConfig, apply=apply_lowrank_,
    flops_delta=lambda arch, config, chunk_index: analytic_encoder_flops_delta(arch, config),
    touches=_touches,
    calibration=lambda config: 0 if config.method in ("asvd", "whiten") else None,
    resolved_fields=frozenset({"ranks"}),
    shapes_from_weights=_shapes_from_weights,
    check=lambda rec, config: check_fits_model(rec, config, init="convert"),
))
