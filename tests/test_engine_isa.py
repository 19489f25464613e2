"""The kernels' instruction sets: chosen from the CPU's flags, forced by the environment, and
the same results on every path this machine has.

What is bit-exact and what is compared with a tolerance, and why:
- AVX2 vs AVX-512 vs AMX, every precision: **bit for bit**. All paths use the same packed layouts.
  fp32/fp16/bf16 weights: each output is one fp32 FMA chain over k in order, then the same
  bias add, whatever the vector width (the fp16/bf16 widening is exact). int8: the integer
  sums are exact on both (vpmaddubsw + vpmaddwd on AVX2, vpdpbusd on AVX-512 VNNI; 7-bit
  inputs never saturate; AMX's tdpbusd on 16-row tiles alike), and quantising x and scaling
  the sums is the same shared code. AMX runs only the int8 sums of 16 rows or more with K a
  multiple of 64; the shapes below include such cases. int4: the same exact integer sums per
  group of k (two nibbles unpacked to int8, then as int8), and each group's sums turned to fp32
  by the same fused multiply-add in the same order; it has no tile path (amx runs its VNNI code).
  The fused paths (encoder stack, predictor step, exact search) call these kernels and
  ATen's ops, so they are bit for bit too.
- A kernel vs the torch fallback: **tolerance**. ``F.linear`` (MKL) sums in another order;
  the int8 and int4 references sum in float64 and scale in another order, so only the last
  fp32 steps differ (their integers are the same).
Paths this CPU lacks are skipped, with the reason (``pytest -rs`` lists them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from emformer_variants.engine import packed
from emformer_variants.engine.packed import Int4Linear, Int8Linear, PackedLinear
from tests.conftest import ROOT, make_tiny_rec

pytestmark = pytest.mark.usefixtures("one_thread")

KERNEL_ISAS = ("avx2", "avx512", "amx")
AVX512_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni")
AMX_FLAGS = (*AVX512_FLAGS, "amx_tile", "amx_int8")


def require(*isas: str) -> None:
    """Skip, saying why, unless the kernel runs here with every one of ``isas``."""
    if packed.kernel() is None:
        pytest.skip("no kernel here (see the log's warning): only the torch fallback runs")
    for isa in isas:
        if isa not in packed.available_isas():
            k = packed.kernel()
            needed = {"avx512": AVX512_FLAGS, "amx": AMX_FLAGS}.get(isa, ())
            missing = [f for f in needed if not k.cpu_flags().get(f)]
            why = f"CPU lacks {' '.join(missing)}" if missing else "the compiler did not build it"
            if not missing and isa == "amx" and k.amx_built() and not k.amx_permitted():
                why = "the OS did not grant the AMX tile state (arch_prctl)"
            pytest.skip(f"{isa} path skipped: {why} ({packed.cpu_name()})")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)  # compares -0.0 and NaN payloads too


def faster_paths() -> list[str]:
    """The paths above AVX2 this machine has, each compared with AVX2; skips when there is none."""
    require("avx2", "avx512")
    return [isa for isa in KERNEL_ISAS[1:] if isa in packed.available_isas()]


def run_in(isa: str, fn, *args):
    """``fn(*args)`` with the kernels on ``isa``."""
    with packed.use_isa(isa):
        return fn(*args)


# ---------------------------------------------------------------- choice of the path

def test_flags_come_from_the_cpu_and_the_best_path_is_chosen():
    require()
    k = packed.kernel()
    flags = k.cpu_flags()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the kernel's cpuid agrees with the OS's view
        listed = set(next(line for line in cpuinfo.read_text().splitlines()
                          if line.startswith("flags")).split(":")[1].split())
        assert {f for f, on in flags.items() if on} == {f for f in flags if f in listed}
    has512 = all(flags[f] for f in AVX512_FLAGS) and k.avx512_built()
    has_amx = has512 and all(flags[f] for f in AMX_FLAGS) and k.amx_built() and k.amx_permitted()
    assert k.best_isa() == ("amx" if has_amx else "avx512" if has512 else "avx2")
    assert packed.available_isas() == list(packed.ISAS[packed.ISAS.index(k.best_isa()):])
    forced = packed._forced_isa()
    assert packed.isa() == (forced if forced in packed.available_isas() else k.best_isa())
    assert packed.isa() in packed.isa_report() and packed.cpu_name() in packed.isa_report()


def test_use_isa_switches_and_restores_and_rejects_what_is_missing():
    require("avx2")
    before = packed.isa()
    with packed.use_isa("avx2"):
        assert packed.isa() == "avx2"
    assert packed.isa() == before
    for name in ("none", "avx9"):
        with pytest.raises(ValueError, match="available here"):
            with packed.use_isa(name):
                pass
    for name in ("avx512", "amx"):
        if name not in packed.available_isas():
            with pytest.raises(ValueError, match="available here"):
                with packed.use_isa(name):
                    pass


def _isa_in_subprocess(value: str) -> subprocess.CompletedProcess:
    code = "from emformer_variants.engine import packed; print(packed.isa())"
    env = {k: v for k, v in __import__("os").environ.items() if k != "EMFORMER_VARIANTS_PACKED"}
    env["EMFORMER_VARIANTS_KERNEL_ISA"] = value
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("value", ["avx2", "avx512", "amx", "none"])
def test_environment_forces_the_path(value):
    if value != "none":
        require(value)
    out = _isa_in_subprocess(value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == value
    if value == "none":
        assert "EMFORMER_VARIANTS_KERNEL_ISA=none" in out.stderr  # the fallback says why


def test_environment_typo_is_an_error():
    out = _isa_in_subprocess("avx-512")
    assert out.returncode != 0 and "EMFORMER_VARIANTS_KERNEL_ISA='avx-512'" in out.stderr


# ---------------------------------------------------------------- linears

SHAPES = [(1, 1), (17, 33), (64, 16), (300, 97), (1024, 257)]  # (K, N)
ROWS = (0, 1, 4, 5, 6, 7, 11, 12, 13, 16, 25, 33, 40)  # AMX: 16 rows and more


@pytest.mark.parametrize("kind", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_every_path_gives_the_same_bits_as_avx2(kind):
    paths = faster_paths()
    g = torch.Generator().manual_seed(21)
    for k, n in SHAPES:
        w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        if kind == "int8":
            lins = [Int8Linear(w, b), Int8Linear(w, None)]
        elif kind == "int4":
            lins = [Int4Linear(w, b), Int4Linear(w, None, group=8)]
        else:
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[kind]
            lins = [PackedLinear(w, b, dtype), PackedLinear(w, None, dtype)]
        for m in ROWS:
            x = torch.randn(m, k, generator=g) * 3
            for lin in lins:
                ref = bits(run_in("avx2", lin, x))
                for isa in paths:
                    assert torch.equal(ref, bits(run_in(isa, lin, x))), (kind, isa, k, n, m)


@pytest.mark.parametrize("isa", KERNEL_ISAS)
def test_each_path_matches_torch_within_rounding(isa):
    """Against ``F.linear`` on the stored weight (fp) and the float64 reference (int8); rows
    are independent of the batch on every path. The fp tolerance grows like sqrt(K): K
    products summed in another order."""
    require(isa)
    g = torch.Generator().manual_seed(22)
    for k, n in SHAPES:
        w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        int8, int4 = Int8Linear(w, b), Int4Linear(w, b)
        for dtype in packed.WEIGHT_DTYPES:
            lin = PackedLinear(w, b, dtype)
            for m in ROWS:
                x = torch.randn(m, k, generator=g)
                torch.testing.assert_close(run_in(isa, lin, x), F.linear(x, lin.weight(), b),
                                           rtol=1e-5, atol=4e-6 * k ** 0.5)
        for m in ROWS:
            x = torch.randn(m, k, generator=g) * 3
            for lin in (int8, int4):
                y = run_in(isa, lin, x)
                torch.testing.assert_close(y, lin.reference(x), rtol=1e-5, atol=1e-5 * max(1, k / 64))
                if m > 3:
                    assert torch.equal(bits(y[2:4]), bits(run_in(isa, lin, x[2:4])))


# ---------------------------------------------------------------- fused paths

@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_fused_encoder_and_exact_search_give_the_same_bits_on_every_path(precision):
    """The whole engine (fused layer stack, predictor step, exact search with its prefix cache)
    on two streams, one restarted, run once per path: every chunk's encoder output and beam
    (tokens and fp32 scores) is identical."""
    from emformer_variants.engine.encoder import StreamingEncoder
    from emformer_variants.engine.exact import ExactBeamSearch
    from emformer_variants.engine.precision import apply_precision_

    paths = ["avx2", *faster_paths()]
    rec = make_tiny_rec(7)
    apply_precision_(rec, precision)
    runs = {}
    for isa in paths:
        enc = StreamingEncoder(rec.model)
        search = ExactBeamSearch(rec.model, rec.blank, 8)
        assert enc.stack is not None and search.fused is not None
        g = torch.Generator().manual_seed(8)
        state, beams, trace = enc.init(2), [None, None], []
        with packed.use_isa(isa), torch.inference_mode():
            for chunk in range(8):
                if chunk == 5:
                    enc.reset(state, 1)
                    beams[1] = None
                out, state = enc.step(torch.randn(2, 21, 80, generator=g), state)
                beams = search.step(out * 4, beams)  # sharper logits: more tokens per frame
                trace.append((bits(out), [search.hypotheses(b) for b in beams]))
        runs[isa] = trace
    for isa in paths[1:]:
        for (ya, ha), (yb, hb) in zip(runs["avx2"], runs[isa], strict=True):
            assert torch.equal(ya, yb) and ha == hb, isa
    assert len(runs["avx2"][-1][1][0][0][0]) > 3  # tokens were emitted


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_fused_predictor_step_gives_the_same_bits_on_every_path(precision):
    from emformer_variants.engine.precision import apply_precision_
    from emformer_variants.engine.predictor import PredictorStep

    paths = faster_paths()
    rec = make_tiny_rec(9)
    apply_precision_(rec, precision)
    step = PredictorStep(rec.model.predictor)
    assert step.fused is not None
    g = torch.Generator().manual_seed(10)
    for m in (1, 13, 30):  # 30 rows: several 12-row VNNI blocks
        tokens = torch.randint(0, step.table0.shape[0], (m,), generator=g)
        h, c = (torch.randn(step.num_layers, m, step.hidden, generator=g) for _ in range(2))
        with torch.inference_mode():
            a = run_in("avx2", step, tokens, run_in("avx2", step.recurrent_gates, h), c)
            for isa in paths:
                b = run_in(isa, step, tokens, run_in(isa, step.recurrent_gates, h), c)
                assert all(torch.equal(bits(u), bits(v)) for u, v in zip(a, b, strict=True)), isa
