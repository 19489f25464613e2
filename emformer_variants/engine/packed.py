"""Packed small-batch linears: C++ kernels for the engine's few-row matmuls.

The engine multiplies 1-20 rows at a time (one chunk of frames, one beam of hypotheses).
At that size MKL and oneDNN reach 10-23 GFLOP/s on this CPU (a large fp32 matmul: 73), and
every call streams the whole weight from memory anyway. ``kernels/packed_linear.cpp`` stores
a weight in panels of 16 output columns, keeps a block of outputs in registers and
streams each panel once: on ``emformer_base``'s linears it is 2.0-2.7x faster than
``F.linear`` at fp32 (``python scripts/bench_linears.py``). Weights may also be kept as fp16
or bf16 and widened to fp32 in registers, which halves the bytes streamed; activations and
accumulation stay fp32.

``Int8Linear`` (``kernels/int8_linear.cpp``) is dynamic int8: int8 weights, each row of x
quantised to 7 bits per call, exact integer sums. On AVX2 an integer multiply-add
instruction does 32 products where an fp32 FMA does 8, so it is 1.7x the fp16 kernel on the
base's encoder linears and 7.4x ``F.linear`` (``scripts/bench_linears.py``).

Instruction set (``isa()``): each kernel has an AVX2 path and an AVX-512 path (AVX-512
F/BW/DQ/VL with VNNI; ``kernels/avx512.cpp``), and on CPUs with AMX-INT8 (Sapphire Rapids and
later, the OS granting the tile state) the ``amx`` level runs the int8 linear's sums on tiles
for 16 rows or more and K a multiple of 64 (``kernels/amx.cpp``; many streams), the rest as
``avx512``. The level is chosen at run time from the CPU's flags; all give the same bits (see
``kernels/avx512.cpp``, ``kernels/amx.cpp``). ``EMFORMER_VARIANTS_KERNEL_ISA=amx|avx512|avx2|none``
forces one (``none``: the torch fallback); ``use_isa`` switches between them in a process.

The kernels are compiled on first use with ``torch.utils.cpp_extension`` (g++ and ninja;
about a minute, cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``,
in a directory per checkout and environment).
Without AVX2, without a compiler, or with ``EMFORMER_VARIANTS_PACKED=0`` (or ``..._KERNEL_ISA=none``),
``PackedLinear`` computes the same thing with ``F.linear`` on the widened weight (a warning says
why once).

Shapes: ``PackedLinear(weight (N, K), bias (N,) | None, dtype)``; ``(..., K) -> (..., N)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

PANEL = 16
KERNELS = Path(__file__).with_name("kernels")
SOURCES = sorted(KERNELS.glob("*.cpp"))
# One build directory per checkout and environment: torch's build file names the source path
# and the venv's include paths, so two checkouts sharing one name would rebuild in turn.
EXTENSION = "emformer_variants_packed_linear_" + hashlib.sha1(
    f"{KERNELS.resolve()}|{sys.prefix}".encode()).hexdigest()[:10]
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ISA_ENV = "EMFORMER_VARIANTS_KERNEL_ISA"
ISAS = ("amx", "avx512", "avx2", "none")  # best first; "none" = the torch fallback

_KERNEL: object | None = None
_TRIED = False
_FLOPS: list[int] | None = None  # set by ``counting_flops``


@contextmanager
def counting_flops() -> Iterator[list[int]]:
    """Count the floating-point operations (2 per multiply-add) of every ``PackedLinear``
    call in the block: yields a one-element list holding the running total."""
    global _FLOPS
    outer, _FLOPS = _FLOPS, [0]
    counter = _FLOPS
    try:
        yield counter
    finally:
        _FLOPS = outer
        if outer is not None:
            outer[0] += counter[0]


def count_flops(flops: int) -> None:
    """Add work done outside ``PackedLinear.__call__`` (a fused kernel) to ``counting_flops``."""
    if _FLOPS is not None:
        _FLOPS[0] += flops


def run(op: str, *args, label: str | None = None):
    """``kernel().<op>(*args)``, profiled as ``call`` does (label default ``op``). Needs the kernel."""
    return call(getattr(_KERNEL, op), *args, label=label or op)


def call(fn, *args, label: str):
    """``fn(*args)``; under torch.profiler inside a range named ``label``, since a pybind
    call is invisible to the profiler."""
    if torch.autograd._profiler_enabled():
        with torch.profiler.record_function(label):
            return fn(*args)
    return fn(*args)


def _forced_isa() -> str | None:
    value = os.environ.get(ISA_ENV, "").strip().lower()
    if value and value not in ISAS:
        raise ValueError(f"{ISA_ENV}={value!r}: choose one of {', '.join(ISAS)}")
    return value or None


def _cpu_has_avx2() -> bool:
    """AVX2 from the CPU itself (torch's cpuinfo), not from ``get_cpu_capability``, which
    ``ATEN_CPU_CAPABILITY`` can lower; the extension is built with -mavx2, so this gates loading it."""
    probe = getattr(torch.cpu, "_is_avx2_supported", None)
    if probe is not None:
        return bool(probe())
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _unavailable_reason() -> str | None:
    if os.environ.get("EMFORMER_VARIANTS_PACKED", "1") == "0":
        return "EMFORMER_VARIANTS_PACKED=0"
    if _forced_isa() == "none":
        return f"{ISA_ENV}=none"
    if not _cpu_has_avx2():
        return "this CPU has no AVX2"
    return None


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the pip package's binary may not be on it (venv not
    activated)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def kernel():
    """The compiled extension module, or None when it cannot be used here. The first call
    also picks the instruction set: ``EMFORMER_VARIANTS_KERNEL_ISA`` if set and this CPU has
    it (else a warning and the best it has), otherwise the best."""
    global _KERNEL, _TRIED
    if _TRIED:
        return _KERNEL
    forced = _forced_isa()  # a typo raises here, on every call, before anything is decided
    _TRIED = True
    reason = _unavailable_reason()
    if reason is None:
        try:
            # importing cpp_extension warns that no CUDA runtime exists: irrelevant for a CPU kernel
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils.cpp_extension import load

            _put_ninja_on_path()

            # -mavx2 for every file; kernels/avx512.cpp sets its own target per function
            _KERNEL = load(EXTENSION, [str(p) for p in SOURCES],
                           extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c"], verbose=False)
        except Exception as err:  # noqa: BLE001 - any build failure means "use the fallback"
            reason = f"build failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    if reason is None and _KERNEL.best_isa() == "none":
        reason, _KERNEL = f"CPU flags {_KERNEL.cpu_flags()} (needs AVX2, FMA and F16C)", None
    if reason is not None:
        log.warning("packed linear kernel not used: %s; falling back to F.linear (slower)", reason)
        return _KERNEL
    if forced and not _KERNEL.set_isa(forced):
        log.warning("%s=%s: this CPU (or compiler) lacks it; using %s (CPU flags: %s)", ISA_ENV, forced,
                    _KERNEL.isa(), _flag_text(_KERNEL))
    return _KERNEL


def _flag_text(k) -> str:
    return " ".join(name for name, on in k.cpu_flags().items() if on) or "none of avx2/avx512"


def isa() -> str:
    """The instruction set the kernels run on now: ``amx`` (``avx512`` plus AMX-INT8 tiles for the
    int8 linears), ``avx512`` (AVX-512 F/BW/DQ/VL with VNNI),
    ``avx2`` (AVX2, FMA, F16C) or ``none`` (no kernel: the torch fallback)."""
    k = kernel()
    return "none" if k is None else k.isa()


def available_isas() -> list[str]:
    """The instruction sets usable here, best first (always ending with ``none``)."""
    k = kernel()
    if k is None:
        return ["none"]
    return list(ISAS[ISAS.index(k.best_isa()):])


def cpu_name() -> str:
    """The CPU's model name and x86 family/model from /proc/cpuinfo (Linux), else platform's."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not line.strip():
                break
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    import platform

    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def isa_report() -> str:
    """One line for benchmark headers: the instruction set in use, the best this CPU offers,
    the CPU and its flags."""
    k = kernel()
    if k is None:
        return f"kernels: none (torch fallback); CPU {cpu_name()}"
    return f"kernels: {k.isa()} (best here: {k.best_isa()}); CPU {cpu_name()}: {_flag_text(k)}"


@contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run the kernels with ``name`` (``avx2``, ``avx512`` or ``amx``) inside the block, for comparing
    paths in one process; ValueError if the kernel or this CPU cannot. Linears built inside or
    outside the block work with either: both paths share the packed layouts."""
    k = kernel()
    if k is None or name not in available_isas() or name == "none":
        raise ValueError(f"use_isa({name!r}): available here: {', '.join(available_isas())} "
                         "('none' is chosen when the kernel loads, by the environment)")
    before = k.isa()
    k.set_isa(name)
    try:
        yield
    finally:
        k.set_isa(before)


def pack(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, K) -> (ceil(N / 16), K, 16) in ``dtype``, zero-padded columns."""
    n, k = weight.shape
    panels = -(-n // PANEL)
    padded = torch.zeros(panels * PANEL, k, dtype=weight.dtype)
    padded[:n] = weight.detach()
    return padded.view(panels, PANEL, k).transpose(1, 2).contiguous().to(dtype)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (N, K) -> (int8 (N, K), fp32 scale (N,)), with
    ``weight ~= q * scale[:, None]`` and each row's largest magnitude mapped to 127."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale.contiguous()


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack`` (in the packed dtype): (P, K, 16) -> (N, K)."""
    return packed.transpose(1, 2).reshape(-1, packed.shape[1])[:n]


class _FewRowLinear:  # plain callable: the engine calls it, nothing trains it
    """The call path shared by the kernels' linears: count the work, then either the torch
    path on ``x`` as given (no kernel here) or the kernel on ``x`` as fp32 rows (M, K).
    Subclasses set ``in_features``, ``out_features``, ``uses_kernel`` and implement
    ``_torch(x)`` and ``_kernel(flat)``."""

    in_features: int
    out_features: int
    uses_kernel: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) -> (..., N), fp32."""
        count_flops(2 * (x.numel() // self.in_features) * self.in_features * self.out_features)
        if not self.uses_kernel:
            return self._torch(x)
        flat = x.reshape(-1, x.shape[-1])
        if flat.dtype != torch.float32:
            flat = flat.float()
        return self._kernel(flat).reshape(*x.shape[:-1], self.out_features)

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _kernel(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PackedLinear(_FewRowLinear):
    """``x @ W^T + b`` with W stored packed in ``dtype`` (fp32, fp16 or bf16), fp32 compute."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.float32):
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"PackedLinear: weight dtype {dtype} not in {WEIGHT_DTYPES}")
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.packed = pack(weight.float(), dtype)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.uses_kernel = kernel() is not None
        self._fallback = None if self.uses_kernel else self.weight()

    def weight(self) -> torch.Tensor:
        """The weight as the kernel sees it, widened to fp32: (N, K)."""
        return unpack(self.packed, self.out_features).float()

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._fallback, self.bias)

    def _kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return run("packed_linear", flat, self.packed, self.bias, self.out_features,
                   label=f"packed_linear[{self.dtype}]")


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """int8 (N, K) -> (ceil(N / 16), ceil(K / 4), 16, 4): panels of 16 output rows, 4
    consecutive k per row, zero-padded (the layout of ``kernels/int8_linear.cpp``)."""
    n, k = q.shape
    panels, quads = -(-n // PANEL), -(-k // 4)
    padded = torch.zeros(panels * PANEL, quads * 4, dtype=torch.int8)
    padded[:n, :k] = q
    return padded.view(panels, PANEL, quads, 4).permute(0, 2, 1, 3).contiguous()


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of x (M, K) to 0..127 as the int8 kernel does: (xq, scale (M,), zero (M,)),
    asymmetric with 0 exact, ``x ~= (xq - zero) * scale``."""
    lo = x.amin(dim=1).clamp(max=0)
    hi = x.amax(dim=1).clamp(min=0)
    scale = (hi - lo) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale)
    xq = (torch.round(x / scale[:, None]) + zero[:, None]).clamp_(0, 127)
    return xq, scale, zero


class Int8Linear(_FewRowLinear):
    """``x @ W^T + b`` with int8 weights (``quantize_rows``) and each row of x quantised to 7
    bits per call; integer products summed exactly (``kernels/int8_linear.cpp``). Without the
    kernel, ``reference`` computes the same numbers in torch (float64 sums of integers)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.out_features, self.in_features = weight.shape
        self.q, self.scale = quantize_rows(weight)
        self.packed = pack_int8(self.q)
        colsum = torch.zeros(self.packed.shape[0] * PANEL, dtype=torch.int32)
        colsum[:self.out_features] = self.q.sum(dim=1, dtype=torch.int32)
        self.colsum = colsum
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.uses_kernel = kernel() is not None

    def weight(self) -> torch.Tensor:
        """The dequantised weight (N, K), fp32."""
        return self.q.float() * self.scale[:, None]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """(M, K) -> (M, N): the kernel's arithmetic in torch."""
        xq, sx, zx = quantize_activations(x.float())
        colsum = self.colsum[:self.out_features].double()
        sums = xq.double() @ self.q.double().T - zx.double()[:, None] * colsum
        y = sums.float() * (sx[:, None] * self.scale[None, :])
        return y if self.bias is None else y + self.bias

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)

    def _kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return run("int8_linear", flat, self.packed, self.colsum, self.scale, self.bias, self.out_features)


INT4_GROUP = 64  # k per int4 weight scale (engine.precision's int4)
# the fractions of a group's largest magnitude tried as its int4 range: 1.0, 0.975, .., 0.5
INT4_CLIPS = tuple(round(1.0 - 0.025 * i, 3) for i in range(21))


def quantize_groups(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 in groups of ``group`` consecutive k per output row: (N, K) -> (int8
    (N, Kpad) in -7..7, fp32 scales (N, Kpad / group)), K zero-padded to whole groups. Each
    group's scale maps a fraction of its largest magnitude (``INT4_CLIPS``) to 7, the one with
    the least squared error: clipping a rare large weight keeps the steps of the others fine."""
    if group % 8 or group <= 0:
        raise ValueError(f"quantize_groups: group={group} must be a positive multiple of 8")
    w = weight.detach().float()
    n, k = w.shape
    groups = -(-k // group)
    padded = torch.zeros(n, groups * group)
    padded[:, :k] = w
    wg = padded.view(n, groups, group)
    amax = wg.abs().amax(dim=2)
    amax = torch.where(amax > 0, amax, torch.full_like(amax, 7.0))  # an all-zero group stays zero
    best_q = best_s = best_err = None
    for clip in INT4_CLIPS:
        scale = amax * clip / 7
        q = torch.round(wg / scale[..., None]).clamp_(-7, 7)
        err = ((q * scale[..., None] - wg) ** 2).sum(dim=2)
        if best_q is None:
            best_q, best_s, best_err = q, scale, err
        else:
            better = err < best_err
            best_q = torch.where(better[..., None], q, best_q)
            best_s = torch.where(better, scale, best_s)
            best_err = torch.where(better, err, best_err)
    return best_q.view(n, -1).to(torch.int8), best_s.contiguous()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 (N, K) in -8..7, K a multiple of 8 -> uint8 (ceil(N / 16), K / 8, 64): ``pack_int8``'s
    layout with each pair of its 4-k steps in one 64-byte step as q + 8 (0..15), the first in the
    low nibbles and the second in the high ones (the layout of ``kernels/int4_linear.cpp``;
    padded columns hold q = 0, stored as 8)."""
    if q.shape[1] % 8:
        raise ValueError(f"pack_int4: K={q.shape[1]} must be a multiple of 8")
    steps = pack_int8(q).view(-(-q.shape[0] // PANEL), q.shape[1] // 8, 2, 64).to(torch.int16) + 8
    return (steps[:, :, 0] | (steps[:, :, 1] << 4)).to(torch.uint8).contiguous()


class Int4Linear(_FewRowLinear):
    """``x @ W^T + b`` with int4 weights in groups of k (``quantize_groups``) and each row of x
    quantised to 7 bits per call as for ``Int8Linear``; integer sums per group, exact, then
    scaled (``kernels/int4_linear.cpp``). Half the weight bytes of int8 (plus a scale per
    group): for the single-stream case, where every call streams the weights from memory.
    Without the kernel, ``reference`` computes the same numbers in torch."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group: int = INT4_GROUP):
        self.out_features, self.in_features = weight.shape
        self.group = group
        self.q, self.group_scale = quantize_groups(weight, group)
        self.packed = pack_int4(self.q)
        panels, groups = self.packed.shape[0], self.group_scale.shape[1]
        scales = torch.zeros(panels * PANEL, groups)
        scales[:self.out_features] = self.group_scale
        self.scales = scales.view(panels, PANEL, groups).transpose(1, 2).contiguous()
        group_sums = self.q.view(self.out_features, groups, group).sum(dim=2, dtype=torch.int32)
        zc = torch.zeros(panels * PANEL, dtype=torch.float32)
        zc[:self.out_features] = (self.group_scale.double() * group_sums.double()).sum(dim=1).float()
        self.zc = zc
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.uses_kernel = kernel() is not None

    def weight(self) -> torch.Tensor:
        """The dequantised weight (N, K), fp32."""
        groups = self.group_scale.shape[1]
        w = self.q.float().view(self.out_features, groups, self.group) * self.group_scale[..., None]
        return w.view(self.out_features, -1)[:, :self.in_features].contiguous()

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """(M, K) -> (M, N): the kernel's arithmetic in torch (float64 group sums)."""
        xq, sx, zx = quantize_activations(x.float())
        groups = self.group_scale.shape[1]
        xg = torch.zeros(x.shape[0], groups * self.group, dtype=torch.float64)
        xg[:, :self.in_features] = xq.double()
        sums = torch.einsum("mgk,ngk->mng", xg.view(-1, groups, self.group),
                            self.q.double().view(self.out_features, groups, self.group))
        acc = (sums * self.group_scale.double()[None]).sum(dim=2)
        zc = self.zc[:self.out_features].double()
        y = ((acc - zx.double()[:, None] * zc) * sx.double()[:, None]).float()
        return y if self.bias is None else y + self.bias

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)

    def _kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return run("int4_linear", flat, self.packed, self.zc, self.scales, self.bias, self.out_features)
