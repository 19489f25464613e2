// The kernels' instruction set, chosen at run time from the CPU's flags (cpuid, and xgetbv for
// whether the OS saves the wider registers), never from the build machine's.
#include "isa.h"

#include <atomic>

#include <cpuid.h>

namespace {

uint64_t xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuFlags detect() {
  CpuFlags f{};
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  const bool fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
  const uint64_t xcr = osxsave ? xcr0() : 0;
  const bool ymm_state = (xcr & 0x6) == 0x6;     // SSE and AVX state
  const bool zmm_state = (xcr & 0xe6) == 0xe6;   // plus opmask, ZMM0-15 upper halves, ZMM16-31
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool ymm = avx && ymm_state;
  f.avx2 = ymm && (b & (1u << 5));
  f.fma = ymm && fma;
  f.f16c = ymm && f16c;
  const bool zmm = ymm && zmm_state;
  f.avx512f = zmm && (b & (1u << 16));
  f.avx512dq = zmm && (b & (1u << 17));
  f.avx512bw = zmm && (b & (1u << 30));
  f.avx512vl = zmm && (b & (1u << 31));
  f.avx512vnni = zmm && (c & (1u << 11));
  const bool tile_state = (xcr & 0x60000) == 0x60000;  // XTILECFG and XTILEDATA
  f.amx_tile = tile_state && (d & (1u << 24));
  f.amx_int8 = f.amx_tile && (d & (1u << 25));
  f.amx_bf16 = f.amx_tile && (d & (1u << 22));
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512bf16 = zmm && (a & (1u << 5));
  return f;
}

std::atomic<int> active{-1};  // -1: not chosen yet

}  // namespace

const CpuFlags& cpu_flags() {
  static const CpuFlags flags = detect();
  return flags;
}

Isa best_isa() {
  const CpuFlags& f = cpu_flags();
  if (!(f.avx2 && f.fma && f.f16c)) return Isa::none;
  if (avx512_built() && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512vnni) {
    if (amx_built() && f.amx_int8 && amx_permitted()) return Isa::amx;
    return Isa::avx512;
  }
  return Isa::avx2;
}

Isa active_isa() {
  int level = active.load(std::memory_order_relaxed);
  if (level < 0) {
    level = static_cast<int>(best_isa());
    active.store(level, std::memory_order_relaxed);
  }
  return static_cast<Isa>(level);
}

bool set_active_isa(Isa level) {
  if (level == Isa::none || static_cast<int>(level) > static_cast<int>(best_isa())) return false;
  active.store(static_cast<int>(level), std::memory_order_relaxed);
  return true;
}

const char* isa_name(Isa level) {
  switch (level) {
    case Isa::amx: return "amx";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "none";
  }
}
