"""variant=moe: each Emformer layer's FFN becomes a top-k Mixture-of-Experts.

The dense ``pos_ff`` (LayerNorm -> Linear(D, F) -> act -> Dropout -> Linear(F, D) ->
Dropout) becomes ``Sequential(LayerNorm, MoEFeedForward, Dropout)``: the same LayerNorm
and outer Dropout modules, the inner Dropout moved into every expert.

Router: Linear(D, E) -> softmax in fp32 -> top-K -> the K weights renormalised to sum
to 1, so with identical experts the MoE computes exactly the dense FFN (the equivalence
test). Each expert is Linear(D, H) -> act -> Linear(H, D) with the dense FFN's activation.

Inits (``MoEConfig.init``):
  upcycle   sparse upcycling (Komatsuzaki et al. 2022): H == F copies the dense FFN into
            every expert; H < F gives expert e the e-th block of H neurons of a seeded
            random permutation of the F dense neurons (blocks wrap around, so every
            neuron is used when H*E >= F). Router: small random (Switch init). When H < F
            each expert holds a part of the FFN, and the renormalised top-K weights would
            average K parts: the experts' second layer is scaled by ``output_scale``
            (default K, so the K chosen parts add up as MoEfication's experts do; on the
            shipped base's test split this alone took the upcycled seeds' configuration
            from 50.9% to 36.1% WER straight after surgery, docs/results.md).
  partition MoEfication (Zhang et al. 2022): the F neurons are clustered into E equal
            groups by co-activation on calibration audio (balanced k-means on the
            L2-normalised per-neuron activation columns, seeded, deterministic). Expert e
            holds its group; when H > F/E it is padded with the H - |group| other neurons
            whose activation patterns are closest to its centroid (experts then overlap).
            H*E < F would drop neurons and is rejected. The router is fitted by ridge
            least squares to predict each expert's output-contribution norm per token,
            then a temperature and one output scale (applied to the experts' second
            layer) are chosen on the same calibration rows to minimise the MoE's error
            vs. the dense FFN (the renormalised top-K weights average the K chosen
            experts, MoEfication sums them).
  shared    a shared core plus MoEfication (for H > F / E, where experts must overlap): every
            expert holds the same S most important dense neurons (mean |activation| x output
            column norm on calibration audio), S = (E H - F) // (E - 1), and a co-activation
            group of the others (``partition_neurons``), so each neuron is in some expert and
            the neurons that matter most to every token are always computed (E H < F: no
            core, and only the E H most important neurons are kept). The router is
            fitted as for partition; the groups' second layer is scaled by K (the renormalised
            K weights average the chosen groups), the core's is not.
  random    fresh init (nn.Linear's per expert; Switch router).

``d_ff`` (H): an explicit width, else ``round(d_ff_ratio * F)`` (default 0.375: 768 for
F = 2048). The parameter-neutral split is ``d_ff_ratio = 1 / num_experts`` (see
conf/variant/moe_neutral.yaml).

Losses (read by the LightningModule through ``collect_moe_losses``): Switch/GShard load
balancing ``E * sum_e f_e P_e`` (f_e fraction of the N*K assignments routed to e, P_e
mean router probability; 1 at uniform routing) and the ST-MoE router z-loss
``mean(logsumexp(logits)^2)``. Every frame the FFN sees counts, padding included (the
Emformer layer does not pass its mask to ``pos_ff``).

Legend: N tokens (frames x batch), D model dim, F dense FFN dim, H expert FFN dim (d_ff),
E experts, K active experts per token.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from emformer_variants.errors import UserError
from emformer_variants.surgery.registry import (
    Surgery,
    SurgeryReport,
    Telemetry,
    register_surgery,
    spec_from_config,
)
from emformer_variants.surgery.swap import swap_modules_
from emformer_variants.surgery.weights import dense_bias, dense_weight

INITS = ("upcycle", "partition", "shared", "random")
CALIBRATED_INITS = ("partition", "shared")  # built from FFN activations on calibration audio
CALIBRATION_ROWS = 4096  # per layer; bounds memory of collected FFN inputs (N x D each)
_LAYER_RE = re.compile(r"emformer_layers\.(\d+)$")


@dataclass(frozen=True)
class MoEConfig:
    """Settings of ``variant=moe``; see the module docstring for the inits."""

    num_experts: int = 8
    top_k: int = 2
    d_ff: int | None = None  # None -> round(d_ff_ratio * dense FFN dim)
    d_ff_ratio: float = 0.375  # used only when d_ff is None
    init: str = "upcycle"  # upcycle | partition | shared | random
    output_scale: float | None = None  # upcycle: experts' second layer x this (None: K when H < F, else 1)
    aux_loss_weight: float = 0.01  # load balancing (Switch / GShard)
    z_loss_weight: float = 1e-3  # router z-loss (ST-MoE)
    router_jitter: float = 0.0  # multiplicative router-input noise while training (Switch)
    layers: tuple[int, ...] | None = None  # Emformer layer indices; None = all
    calibration_batches: int = 8  # calibration batches used by init=partition / shared (and error report)
    seed: int = 0  # permutations, k-means start, router init

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.num_experts) or self.num_experts < 1:
            raise ValueError(f"num_experts={self.num_experts!r} must be an integer >= 1")
        if not is_int(self.top_k) or self.top_k < 1:
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 1")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}; "
                             "each token picks top_k distinct experts")
        if self.d_ff is not None and (not is_int(self.d_ff) or self.d_ff < 1):
            raise ValueError(f"d_ff={self.d_ff!r} must be null or an integer >= 1")
        if not is_num(self.d_ff_ratio) or self.d_ff_ratio <= 0:
            raise ValueError(f"d_ff_ratio={self.d_ff_ratio!r} must be a number > 0")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r} must be one of {list(INITS)}")
        if self.output_scale is not None and (not is_num(self.output_scale) or self.output_scale <= 0):
            raise ValueError(f"output_scale={self.output_scale!r} must be null or a number > 0")
        for name in ("aux_loss_weight", "z_loss_weight"):
            v = getattr(self, name)
            if not is_num(v) or v < 0:
                raise ValueError(f"{name}={v!r} must be a number >= 0")
        if not is_num(self.router_jitter) or not 0 <= self.router_jitter < 1:
            raise ValueError(f"router_jitter={self.router_jitter!r} must be in [0, 1)")
        if self.layers is not None:
            layers = tuple(self.layers) if not isinstance(self.layers, (str, bytes)) else None
            if (not layers or not all(is_int(i) and i >= 0 for i in layers)
                    or len(set(layers)) != len(layers)):
                raise ValueError(f"layers={self.layers!r} must be null or a non-empty list of "
                                 "distinct layer indices >= 0")
            object.__setattr__(self, "layers", layers)
        if not is_int(self.calibration_batches) or self.calibration_batches < 1:
            raise ValueError(f"calibration_batches={self.calibration_batches!r} must be an integer >= 1")
        if not is_int(self.seed):
            raise ValueError(f"seed={self.seed!r} must be an integer")

    def resolve_d_ff(self, ffn_dim: int) -> int:
        """Expert hidden width H for a dense FFN of width ``ffn_dim``."""
        return self.d_ff if self.d_ff is not None else max(1, round(self.d_ff_ratio * ffn_dim))

    def upcycle_scale(self, ffn_dim: int) -> float:
        """The upcycle init's scale of the experts' second layer (``output_scale``)."""
        if self.output_scale is not None:
            return float(self.output_scale)
        return 1.0 if self.resolve_d_ff(ffn_dim) >= ffn_dim else float(self.top_k)


def check_fits_model(config: MoEConfig, ffn_dim: int) -> int:
    """Model-dependent checks (UserError naming the field); returns the resolved d_ff."""
    h = config.resolve_d_ff(ffn_dim)
    field = "variant.d_ff" if config.d_ff is not None else f"variant.d_ff_ratio={config.d_ff_ratio} -> d_ff"
    if config.init in ("upcycle", "partition", "shared") and h > ffn_dim:
        raise UserError(f"{field}={h} exceeds the dense FFN width {ffn_dim}; init={config.init} "
                        f"builds experts from dense neurons: use d_ff <= {ffn_dim} or init=random")
    if config.init == "partition" and h * config.num_experts < ffn_dim:
        raise UserError(f"{field}={h} x variant.num_experts={config.num_experts} < dense FFN width "
                        f"{ffn_dim}: init=partition would drop neurons; use d_ff >= "
                        f"{math.ceil(ffn_dim / config.num_experts)} (d_ff_ratio >= 1/num_experts)")
    return h


# ---------------------------------------------------------------- module


def top_k_weights(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (N, E) fp32 -> weights (N, K) summing to 1, experts (N, K) long, probs (N, E):
    softmax, the K most probable experts, their probabilities renormalised (so identical
    experts give the dense FFN exactly)."""
    probs = logits.softmax(dim=-1)
    top_p, experts = probs.topk(top_k, dim=-1)
    return top_p / top_p.sum(dim=-1, keepdim=True), experts, probs


def combine(x: torch.Tensor, logits: torch.Tensor, top_k: int,
            run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MoE's routing and combination, for any expert storage (``RoutedFeedForward`` and
    the engine's ``PackedMoE``): x (N, D), router logits (N, E) fp32, ``run(grouped, sizes)``
    the experts on rows grouped by expert ((N*K, D), sizes[e] rows for expert e) -> (N*K, D)
    -> (out (N, D), probs (N, E), counts (E,) assignments per expert).

    The N*K (token, expert) assignments are grouped by expert (stable sort + index_select),
    each expert that got rows runs once on all of them (``per_expert``), and the weighted
    outputs are summed back per token with index_add (so FlopCounterMode counts only the K
    active experts)."""
    weights, experts, probs = top_k_weights(logits, top_k)
    flat = experts.reshape(-1)  # (N*K,) assignment j belongs to token j // K
    order = torch.argsort(flat, stable=True)
    token = order // top_k
    counts = torch.bincount(flat, minlength=logits.shape[1])
    y = run(x.index_select(0, token), counts.tolist())
    y = y * weights.reshape(-1)[order].to(y.dtype).unsqueeze(1)
    return y.new_zeros(x.shape[0], y.shape[1]).index_add_(0, token, y), probs, counts


def per_expert(expert):
    """``combine``'s ``run`` from ``expert(e, rows (n_e, D)) -> (n_e, D)``: each expert that got
    rows, once, outputs in the grouped order."""
    def run(grouped: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        return torch.cat([expert(e, xe) for e, xe in enumerate(grouped.split(sizes)) if sizes[e]])
    return run


class RoutedFeedForward(nn.Module):
    """What every top-K MoE FFN shares, whatever holds its experts: the router, ``combine``
    and the telemetry. Subclasses define ``expert(e, x)``, ``expert_linears()`` and
    ``expert_param_count()``. (..., D) -> (..., D).

    After each forward: ``last_aux_loss``, ``last_z_loss`` (tensors, in the graph when
    training), ``last_load`` (E,) fraction of assignments per expert, ``last_entropy``
    mean router entropy in nats (detached). ``observers``: callables ``f(module)`` called
    after the telemetry is set (``RouterTelemetry``); the engine's packed MoE, which does
    not run ``forward``, sets the telemetry and calls them too.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int,
                 activation: nn.Module | None = None, dropout: float = 0.0,
                 aux_loss_weight: float = 0.01, z_loss_weight: float = 1e-3,
                 router_jitter: float = 0.0):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        self.d_model, self.d_ff, self.num_experts, self.top_k = d_model, d_ff, num_experts, top_k
        self.aux_loss_weight, self.z_loss_weight = aux_loss_weight, z_loss_weight
        self.router_jitter = router_jitter
        self.router = nn.Linear(d_model, num_experts)
        self.activation = activation if activation is not None else nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.layer_index: int | None = None  # set by apply_moe_, names telemetry
        self.observers: list[Callable[[RoutedFeedForward], None]] = []
        self.clear_telemetry()

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}")

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on its tokens: (n_e, D) -> (n_e, D)."""
        raise NotImplementedError

    def expert_linears(self) -> list[tuple[nn.Module, nn.Module]]:
        """Per expert its (first, second) linear as modules computing ``x @ W^T + b``."""
        raise NotImplementedError

    def expert_param_count(self) -> int:
        raise NotImplementedError

    @torch.no_grad()
    def reset_router(self, generator: torch.Generator | None = None) -> None:
        """Switch init: truncated normal, std sqrt(0.1 / D), zero bias."""
        std = math.sqrt(0.1 / self.d_model)
        w = torch.randn(self.router.weight.shape, generator=generator).clamp_(-2, 2) * std
        self.router.weight.copy_(w)
        self.router.bias.zero_()

    def clear_telemetry(self) -> None:
        self.last_aux_loss: torch.Tensor | None = None
        self.last_z_loss: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None
        self.last_entropy: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        # Telemetry of a training forward holds graph tensors, which cannot be deep-copied
        # or pickled (copy.deepcopy of the model for a teacher/EMA, DDP spawn).
        # Observers belong to whoever watches this module, not to a copy of it.
        state = self.__dict__.copy()
        for key in ("last_aux_loss", "last_z_loss", "last_load", "last_entropy"):
            state[key] = None
        state["observers"] = []
        return state

    def active_param_count(self) -> int:
        """Parameters one token uses: the router plus K experts."""
        return sum(p.numel() for p in self.router.parameters()) + self.top_k * self.expert_param_count()

    # ---- forward
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (N, D) -> weights (N, K) fp32 summing to 1, experts (N, K) long,
        probs (N, E) fp32, logits (N, E) fp32."""
        logits = self.router_logits(x)
        return (*top_k_weights(logits, self.top_k), logits)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> (N, E) fp32 (with the training-time jitter of the input)."""
        h = x
        if self.training and self.router_jitter > 0:
            h = h * torch.empty_like(h).uniform_(1 - self.router_jitter, 1 + self.router_jitter)
        # fp32 router even under autocast: softmax/top-k ties and z-loss need the range.
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = dense_bias(self.router)
            return F.linear(h.float(), dense_weight(self.router).float(),
                            None if bias is None else bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.d_model)
        if x.shape[0] == 0:
            self.clear_telemetry()
            return x.new_zeros(shape)
        logits = self.router_logits(x)
        out, probs, counts = combine(x, logits, self.top_k, per_expert(self.expert))
        self.record(probs, logits, counts)
        return out.reshape(shape)

    def record(self, probs: torch.Tensor, logits: torch.Tensor, counts: torch.Tensor) -> None:
        """Set the telemetry of one forward from its router probs/logits (N, E) and counts (E,)."""
        load = counts.to(probs.dtype) / (probs.shape[0] * self.top_k)
        self.last_aux_loss = self.num_experts * (load * probs.mean(dim=0)).sum()
        self.last_z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.last_load = load.detach()
        self.last_entropy = -torch.special.xlogy(probs, probs).sum(-1).mean().detach()
        for observe in self.observers:
            observe(self)


class MoEFeedForward(RoutedFeedForward):
    """Top-K MoE FFN for training: (..., D) -> (..., D).

    Parameters: ``router`` Linear(D, E); stacked experts ``w1`` (E, D, H), ``b1`` (E, H),
    ``w2`` (E, H, D), ``b2`` (E, D). ``combine`` runs one matmul pair per expert that got
    tokens.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int,
                 activation: nn.Module | None = None, dropout: float = 0.0,
                 aux_loss_weight: float = 0.01, z_loss_weight: float = 1e-3,
                 router_jitter: float = 0.0):
        super().__init__(d_model, d_ff, num_experts, top_k, activation, dropout, aux_loss_weight,
                         z_loss_weight, router_jitter)
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.b1 = nn.Parameter(torch.empty(num_experts, d_ff))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Experts as nn.Linear's default (U(+-1/sqrt(fan_in))); router as Switch."""
        def uniform_(t, fan_in):
            bound = 1 / math.sqrt(fan_in)
            t.copy_(torch.rand(t.shape, generator=generator) * 2 * bound - bound)

        uniform_(self.w1, self.d_model)
        uniform_(self.b1, self.d_model)
        uniform_(self.w2, self.d_ff)
        uniform_(self.b2, self.d_ff)
        self.reset_router(generator)

    def expert_param_count(self) -> int:
        return self.w1[0].numel() + self.b1[0].numel() + self.w2[0].numel() + self.b2[0].numel()

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        h = self.activation(torch.addmm(self.b1[e], x, self.w1[e]))
        return torch.addmm(self.b2[e], self.dropout(h), self.w2[e])

    @torch.no_grad()
    def expert_linears(self) -> list[tuple[nn.Linear, nn.Linear]]:
        """New ``nn.Linear`` pairs holding copies of each expert's slices of the stacked weights."""
        def linear(w, b):  # w (in, out) as stacked
            lin = nn.Linear(*w.shape, device=w.device, dtype=w.dtype)
            lin.weight.copy_(w.t())
            lin.bias.copy_(b)
            return lin.train(self.training)

        return [(linear(self.w1[e], self.b1[e]), linear(self.w2[e], self.b2[e]))
                for e in range(self.num_experts)]

    # ---- conversion
    @torch.no_grad()
    def load_dense_neurons(self, linear1: nn.Linear, linear2: nn.Linear, neurons: torch.Tensor,
                           scale: float = 1.0) -> None:
        """Expert e <- dense neurons ``neurons[e]`` ((E, H) indices into F); the second
        layer is multiplied by ``scale``."""
        w1, b1, w2 = linear1.weight, linear1.bias, linear2.weight  # (F, D), (F,), (D, F)
        for e in range(self.num_experts):
            idx = neurons[e]
            self.w1[e].copy_(w1[idx].t())
            self.b1[e].copy_(b1[idx] if b1 is not None else 0)
            self.w2[e].copy_(w2[:, idx].t() * scale)
            self.b2[e].copy_(linear2.bias if linear2.bias is not None else 0)

    @classmethod
    def from_dense(cls, linear1: nn.Linear, linear2: nn.Linear, activation: nn.Module,
                   config: MoEConfig, init: str | None = None,
                   calibration_acts: torch.Tensor | None = None, *, dropout: float = 0.0,
                   generator: torch.Generator | None = None) -> MoEFeedForward:
        """Build from a dense FFN ``linear2(act(linear1(x)))``.

        ``init``: upcycle | partition | shared | random (default ``config.init``);
        ``calibration_acts``: (N, D) inputs of ``linear1`` on calibration audio, required
        by partition and shared. The result has linear1's device and dtype.
        """
        init = init or config.init
        if init not in INITS:
            raise ValueError(f"init={init!r} must be one of {list(INITS)}")
        d, f = linear1.in_features, linear1.out_features
        h = check_fits_model(dataclasses.replace(config, init=init), f)
        moe = cls(d, h, config.num_experts, config.top_k, copy.deepcopy(activation), dropout,
                  config.aux_loss_weight, config.z_loss_weight, config.router_jitter)
        moe.reset_parameters(generator)
        moe.to(device=linear1.weight.device, dtype=linear1.weight.dtype)
        if init == "upcycle":
            moe.load_dense_neurons(linear1, linear2, upcycle_neurons(f, h, config.num_experts, generator),
                                   config.upcycle_scale(f))
        elif init in CALIBRATED_INITS:
            if calibration_acts is None or calibration_acts.shape[0] == 0:
                raise UserError(f"variant.init={init} needs calibration audio (FFN activations)")
            x = calibration_acts.to(linear1.weight)
            with torch.no_grad():
                hidden = activation(linear1(x))
                if init == "partition":
                    neurons, core = partition_neurons(hidden, config.num_experts, h, generator), h
                else:
                    neurons, core = shared_neurons(hidden, linear2.weight, config.num_experts, h, generator)
                moe.load_dense_neurons(linear1, linear2, neurons)
                moe.w2[:, core:, :] *= config.top_k  # the K chosen groups add up; a core counts once
            fit_router_(moe, x, hidden, linear2)
        return moe


# ---------------------------------------------------------------- inits


def upcycle_neurons(ffn_dim: int, d_ff: int, num_experts: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(E, H) dense-neuron indices: all neurons in order when H == F (exact copies), else
    the e-th wrap-around block of H neurons of a seeded random permutation."""
    if d_ff == ffn_dim:
        return torch.arange(ffn_dim).expand(num_experts, ffn_dim).clone()
    perm = torch.randperm(ffn_dim, generator=generator)
    pos = torch.arange(num_experts)[:, None] * d_ff + torch.arange(d_ff)[None, :]
    return perm[pos % ffn_dim]


def _balanced_assign(sim: torch.Tensor, capacity: list[int]) -> torch.Tensor:
    """Greedy balanced assignment: (F, E) similarities -> (F,) cluster ids, cluster e
    getting exactly ``capacity[e]`` items (highest similarities first)."""
    n, k = sim.shape
    assign, left, todo = [-1] * n, list(capacity), n
    for flat in torch.argsort(sim.flatten(), descending=True, stable=True).tolist():
        i, e = divmod(flat, k)
        if assign[i] < 0 and left[e] > 0:
            assign[i], left[e], todo = e, left[e] - 1, todo - 1
            if todo == 0:
                break
    return torch.tensor(assign)


def partition_neurons(hidden: torch.Tensor, num_experts: int, d_ff: int,
                      generator: torch.Generator | None = None, iters: int = 25) -> torch.Tensor:
    """MoEfication split: hidden (N, F) activations -> (E, H) neuron indices.

    Balanced k-means (cosine) on the neurons' activation columns; groups of F // E (+1
    for the first F % E), each padded to H with the closest other neurons."""
    f = hidden.shape[1]
    feats = F.normalize(hidden.t().float(), dim=1)  # (F, N)
    capacity = [f // num_experts + (e < f % num_experts) for e in range(num_experts)]
    cent = feats[torch.randperm(f, generator=generator)[:num_experts]]
    assign = None
    for _ in range(iters):
        sim = feats @ cent.t()  # (F, E)
        new = _balanced_assign(sim, capacity)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        onehot = F.one_hot(assign, num_experts).to(feats.dtype)  # (F, E)
        cent = F.normalize(onehot.t() @ feats, dim=1)  # mean direction of each group
    sim = feats @ cent.t()
    rows = []
    for e in range(num_experts):
        mine = (assign == e).nonzero().squeeze(1)
        mine = mine[torch.argsort(sim[mine, e], descending=True, stable=True)]
        others = (assign != e).nonzero().squeeze(1)
        others = others[torch.argsort(sim[others, e], descending=True, stable=True)]
        rows.append(torch.cat([mine, others])[:d_ff])
    return torch.stack(rows)


@torch.no_grad()
def shared_neurons(hidden: torch.Tensor, w2: torch.Tensor, num_experts: int, d_ff: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Shared-core split: hidden (N, F) activations, w2 (D, F) the dense second layer ->
    ((E, H) neuron indices, S). Every expert starts with the same S most important neurons
    (mean |activation| x the norm of the neuron's output column), S = (E H - F) // (E - 1), the
    most for which the other F - S neurons still fit in E groups of H - S; those are split by
    ``partition_neurons`` (co-activation), so each neuron is in at least one expert. When
    E H < F there is no core and only the E H most important neurons are kept."""
    f = hidden.shape[1]
    shared = (num_experts * d_ff - f) // (num_experts - 1) if num_experts > 1 else d_ff
    shared = max(0, min(shared, d_ff))
    importance = hidden.abs().float().mean(0) * w2.float().norm(dim=0)
    order = torch.argsort(importance, descending=True, stable=True)
    core, rest = order[:shared], order[shared:num_experts * d_ff - (num_experts - 1) * shared]
    if shared == d_ff:  # every neuron in every expert: identical experts
        return core.expand(num_experts, d_ff).clone(), shared
    groups = partition_neurons(hidden[:, rest], num_experts, d_ff - shared, generator)
    return torch.cat([core.expand(num_experts, shared), rest[groups]], dim=1), shared


@torch.no_grad()
def fit_router_(moe: MoEFeedForward, x: torch.Tensor, hidden: torch.Tensor, linear2: nn.Linear,
                temperatures: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)) -> dict:
    """Partition init of the router and expert output scale from calibration rows.

    x (N, D) FFN inputs, hidden (N, F) dense activations (before the second linear).
    Ridge least squares predicts each expert's contribution norm ||P_e(x)|| (P_e: the
    expert's neurons through the dense second layer, no bias); then for each temperature
    the K chosen experts' weighted mix M is scaled by the closed-form alpha minimising
    ||b2 + alpha M - Y||, and the best (temperature, alpha) is kept.
    """
    x, hidden = x.float(), hidden.float()
    e_count, k = moe.num_experts, moe.top_k
    b2 = moe.b2[0].float()
    y = hidden @ linear2.weight.float().t() + b2  # dense output (N, D)
    parts = torch.stack([moe.activation(torch.addmm(moe.b1[e].float(), x, moe.w1[e].float()))
                         @ moe.w2[e].float() for e in range(e_count)])  # (E, N, D)
    target = parts.norm(dim=-1).t()  # (N, E)
    xa = torch.cat([x, x.new_ones(len(x), 1)], dim=1)  # (N, D+1)
    gram = xa.t() @ xa
    ridge = 1e-3 * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    coef = torch.linalg.solve(gram + ridge * eye, xa.t() @ target)  # (D+1, E)
    pred = xa @ coef
    spread = (pred - pred.mean(dim=1, keepdim=True)).std().clamp_min(1e-12)
    best = None
    for t in temperatures:
        probs = (pred * (t / spread)).softmax(dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)
        w = torch.zeros_like(probs).scatter_(1, top_i, top_p / top_p.sum(-1, keepdim=True))
        mix = torch.einsum("ne,end->nd", w, parts)
        denom = mix.pow(2).sum()
        alpha = float((mix * (y - b2)).sum() / denom) if denom > 0 else 1.0
        err = float((b2 + alpha * mix - y).norm() / y.norm().clamp_min(1e-12))
        if best is None or err < best[0]:
            best = (err, t, alpha)
    err, t, alpha = best
    scale = t / float(spread)
    moe.router.weight.copy_((coef[:-1].t() * scale).to(moe.router.weight))
    moe.router.bias.copy_((coef[-1] * scale).to(moe.router.bias))
    moe.w2.mul_(alpha)
    return {"temperature": t, "alpha": alpha, "rel_error": err}


@torch.no_grad()
def relative_error(moe: MoEFeedForward, linear1: nn.Linear, activation: nn.Module,
                   linear2: nn.Linear, x: torch.Tensor) -> float:
    """||moe(x) - dense(x)|| / ||dense(x)|| for dense = linear2(act(linear1(x))), with
    the MoE in eval mode (no dropout, no jitter)."""
    was = moe.training
    moe.eval()
    ref = linear2(activation(linear1(x)))
    err = float((moe(x) - ref).norm() / ref.norm().clamp_min(1e-12))
    moe.train(was)
    moe.clear_telemetry()
    return err


# ---------------------------------------------------------------- surgery


def find_dense_ffns(model: nn.Module, layers: tuple[int, ...] | None) -> dict[str, tuple[int, nn.Sequential]]:
    """``{fqn of pos_ff: (layer index, pos_ff)}`` for the chosen Emformer layers whose FFN
    is still the dense Sequential(LayerNorm, Linear, act, Dropout, Linear, Dropout)."""
    found, num_layers = {}, 0
    for name, module in model.named_modules():
        m = _LAYER_RE.search(name)
        if m is None or not hasattr(module, "pos_ff"):
            continue
        num_layers += 1
        idx, ff = int(m.group(1)), module.pos_ff
        if layers is not None and idx not in layers:
            continue
        if (isinstance(ff, nn.Sequential) and len(ff) == 6 and isinstance(ff[1], nn.Linear)
                and isinstance(ff[4], nn.Linear)):
            found[f"{name}.pos_ff"] = (idx, ff)
    if layers is not None:
        bad = [i for i in layers if i >= num_layers]
        if bad:
            raise UserError(f"variant.layers={list(layers)}: {bad} out of range, the model has "
                            f"{num_layers} Emformer layers (0..{num_layers - 1})")
        missing = sorted(set(layers) - {i for i, _ in found.values()})
        if missing:
            raise UserError(f"variant.layers: Emformer layers {missing} have no dense FFN "
                            "(already converted?)")
    if not found:
        raise UserError("variant=moe: no dense Emformer FFN (emformer_layers.<i>.pos_ff) found "
                        "in the model; is a MoE already applied?")
    return found


@torch.no_grad()
def collect_ffn_inputs(model: nn.Module, linears: dict[str, nn.Linear], calibration,
                       max_rows: int = CALIBRATION_ROWS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Run calibration batches through ``model.transcribe``; return the inputs of each
    named first FFN linear, (N, D) with at most ``max_rows`` rows (seeded subsample)."""
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in linears}
    hooks = [lin.register_forward_hook(lambda _m, inp, _o, key=key: rows[key].append(
        inp[0].detach().reshape(-1, inp[0].shape[-1]).float().cpu()))
        for key, lin in linears.items()]
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for feats, lengths in calibration:
            model.transcribe(feats.to(device), lengths.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for key, chunks in rows.items():
        x = torch.cat(chunks)
        if len(x) > max_rows:
            x = x[torch.randperm(len(x), generator=gen)[:max_rows].sort().values]
        out[key] = x
    return out


def _generator(config: MoEConfig, layer: int) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 100_003 + layer)


def apply_moe_(rec, config: MoEConfig, init: str = "convert", calibration=None) -> SurgeryReport:
    """Replace each chosen Emformer FFN by ``Sequential(LayerNorm, MoEFeedForward, Dropout)``.

    ``report.extra``: ``d_ff``, ``encoder_flops_per_chunk_before/after`` (analytic,
    steady state), ``params_active_after``, ``resolved_spec`` (d_ff resolved), and when
    calibration is given with init="convert": ``calibration_rel_error`` {init: mean over
    layers of ||MoE - dense|| / ||dense||} for every feasible init (the applied one and
    the alternatives, for comparison), ``calibration_rel_error_per_layer``.
    """
    from emformer_variants.metrics.flops import analytic_emformer_rnnt_flops
    from emformer_variants.metrics.params import count_params

    if init not in ("convert", "empty"):
        raise UserError(f"surgery init={init!r}: choose 'convert' or 'empty'")
    model = rec.model
    targets = find_dense_ffns(model, config.layers)
    ffn_dims = {ff[1].out_features for _, ff in targets.values()}
    if len(ffn_dims) != 1:
        raise UserError(f"variant=moe: Emformer FFN widths differ across layers {sorted(ffn_dims)}")
    ffn_dim = ffn_dims.pop()
    d_ff = check_fits_model(config, ffn_dim)

    acts = None
    if init == "convert" and calibration:
        batches = list(calibration)[: config.calibration_batches]
        acts = collect_ffn_inputs(model, {fqn: ff[1] for fqn, (_, ff) in targets.items()},
                                  batches, seed=config.seed)
    elif init == "convert" and config.init in CALIBRATED_INITS:
        raise UserError(f"variant.init={config.init} needs calibration audio (FFN activations); none "
                        "was given: provide calibration batches or use variant.init=upcycle")

    new: dict[str, nn.Module] = {}
    errors: dict[str, list[float]] = {}
    for fqn, (idx, ff) in targets.items():
        ln, lin1, act, drop_in, lin2, drop_out = list(ff)
        if init == "empty":
            moe = MoEFeedForward(lin1.in_features, d_ff, config.num_experts, config.top_k,
                                 copy.deepcopy(act), drop_in.p, config.aux_loss_weight,
                                 config.z_loss_weight, config.router_jitter)
            moe.to(device=lin1.weight.device, dtype=lin1.weight.dtype)
        else:
            x = acts.get(fqn) if acts else None
            moe = MoEFeedForward.from_dense(lin1, lin2, act, config, calibration_acts=x,
                                            dropout=drop_in.p, generator=_generator(config, idx))
            if x is not None:
                for name in INITS:
                    try:
                        check_fits_model(dataclasses.replace(config, init=name), ffn_dim)
                    except UserError:
                        continue
                    other = moe if name == config.init else MoEFeedForward.from_dense(
                        lin1, lin2, act, config, init=name, calibration_acts=x,
                        dropout=drop_in.p, generator=_generator(config, idx))
                    errors.setdefault(name, []).append(
                        relative_error(other, lin1, act, lin2, x.to(lin1.weight)))
        moe.layer_index = idx
        new[fqn] = nn.Sequential(ln, moe, drop_out).train(ff.training)
    swap_modules_(model, new)

    resolved = spec_from_config("moe", dataclasses.replace(config, d_ff=d_ff))
    if resolved["layers"] is not None:
        resolved["layers"] = list(resolved["layers"])
    before = analytic_emformer_rnnt_flops(rec.arch)["encoder"]
    extra = {
        "d_ff": d_ff,
        "resolved_spec": resolved,
        "encoder_flops_per_chunk_before": before,
        "encoder_flops_per_chunk_after": before + analytic_encoder_flops_delta(
            rec.arch, dataclasses.replace(config, d_ff=d_ff), num_converted=len(new)),
        "params_active_after": count_params(model)[1],
    }
    if errors:
        extra["calibration_rel_error"] = {k: sum(v) / len(v) for k, v in errors.items()}
        extra["calibration_rel_error_per_layer"] = errors
    return SurgeryReport(name="moe", replaced=sorted(new), extra=extra)


def analytic_encoder_flops_delta(arch: dict, config: MoEConfig, num_converted: int | None = None) -> int:
    """Change in encoder FLOPs of one steady-state streaming chunk (batch 1) vs.
    ``analytic_emformer_rnnt_flops(arch)["encoder"]``: per converted layer the dense FFN
    (2 x 2 R' D F over R' = right context + segment frames after time reduction) becomes
    the router (2 R' D E) plus K experts (2 x 2 R' D H); the K-of-E dispatch computes
    exactly R' K expert rows. Gathers, sorts and the weighted sum are not matmuls.
    ``num_converted`` defaults to len(config.layers) or all layers."""
    stride = arch["time_reduction_stride"]
    rows = arch["segment_length"] // stride + arch["right_context_length"] // stride
    d = arch["time_reduction_input_dim"] * stride
    f = arch["transformer_ffn_dim"]
    h = config.resolve_d_ff(f)
    if num_converted is None:
        num_converted = len(config.layers) if config.layers else arch["transformer_num_layers"]
    per_layer = (2 * rows * d * config.num_experts + config.top_k * 2 * (2 * rows * d * h)
                 - 2 * (2 * rows * d * f))
    return num_converted * per_layer


# ---------------------------------------------------------------- training hooks


def moe_modules(model: nn.Module) -> list[RoutedFeedForward]:
    """Every MoE FFN of ``model``, whatever holds its experts."""
    return [m for m in model.modules() if isinstance(m, RoutedFeedForward)]


def collect_moe_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weighted auxiliary losses of the last forward, summed over MoE layers:
    ``{"moe_aux": sum aux_loss_weight * load-balance, "moe_z": sum z_loss_weight * z}``;
    ``{}`` when the model has no MoE layer or none has run. Add them to the loss."""
    aux, z = [], []
    for m in moe_modules(model):
        if m.last_aux_loss is not None:
            aux.append(m.aux_loss_weight * m.last_aux_loss)
            z.append(m.z_loss_weight * m.last_z_loss)
    if not aux:
        return {}
    return {"moe_aux": torch.stack(aux).sum(), "moe_z": torch.stack(z).sum()}


def collect_router_stats(model: nn.Module) -> dict[str, float]:
    """Router telemetry of the last forward: ``moe/layer{i}/load{e}`` (fraction of the
    N*K assignments sent to expert e; 1/E is balanced), ``moe/layer{i}/load_max`` and
    ``moe/layer{i}/entropy`` (mean router entropy, nats; log E is uniform)."""
    stats: dict[str, float] = {}
    for j, m in enumerate(moe_modules(model)):
        if m.last_load is None:
            continue
        key = f"moe/layer{m.layer_index if m.layer_index is not None else j}"
        for e, v in enumerate(m.last_load.tolist()):
            stats[f"{key}/load{e}"] = v
        stats[f"{key}/load_max"] = float(m.last_load.max())
        stats[f"{key}/entropy"] = float(m.last_entropy)
    return stats


def router_log_stats(model: nn.Module) -> dict[str, float]:
    """What training logs of ``collect_router_stats``: per layer ``load_max`` and ``entropy``
    (the per-expert loads only in evaluation's ``moe_load_per_layer``)."""
    return {k: v for k, v in collect_router_stats(model).items()
            if not k.split("/")[-1].startswith("load") or k.endswith("load_max")}


class RouterTelemetry:
    """Accumulates MoE router load (per layer, per expert) and entropy over every chunk
    decoded while active; ``summary()`` gives evaluation's flat keys."""

    def __init__(self, model: nn.Module):
        self.modules = moe_modules(model)
        self.load = [torch.zeros(0) for _ in self.modules]
        self.entropy = [0.0 for _ in self.modules]
        self.calls = 0
        self.observers = [self._observer(i) for i in range(len(self.modules))]
        for m, observe in zip(self.modules, self.observers, strict=True):
            m.observers.append(observe)

    def _observer(self, i: int):
        def observe(module: RoutedFeedForward) -> None:
            load = module.last_load.float()
            self.load[i] = load if self.load[i].numel() == 0 else self.load[i] + load
            self.entropy[i] += float(module.last_entropy)
            if i == 0:
                self.calls += 1
        return observe

    def close(self) -> None:
        for m, observe in zip(self.modules, self.observers, strict=True):
            m.observers.remove(observe)

    def summary(self) -> dict:
        if not self.modules or self.calls == 0:
            return {}
        loads = [(x / x.sum()) for x in self.load]
        return {
            "moe_load_max_mean": float(sum(x.max() for x in loads) / len(loads)),
            "moe_router_entropy_mean": sum(self.entropy) / (len(self.entropy) * self.calls),
            "moe_load_per_layer": [[round(float(v), 4) for v in x] for x in loads],
        }


register_surgery(Surgery(
    name="moe", config=MoEConfig, apply=apply_moe_,
    flops_delta=lambda arch, config, chunk_index: analytic_encoder_flops_delta(arch, config),
    touches=lambda config: {"ffn"},
    # Every init reads calibration audio when it has some: partition builds the experts from
    # it, the others report their error against the dense FFN on it.
    calibration=lambda config: config.calibration_batches,
    resolved_fields=frozenset({"d_ff"}),
    telemetry=Telemetry(losses=collect_moe_losses, train_stats=router_log_stats, evaluation=RouterTelemetry),
))
