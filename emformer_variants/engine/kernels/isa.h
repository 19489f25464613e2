// Run-time choice of the kernels' instruction set (isa.cpp), and the AVX-512 kernels
// (avx512.cpp). No torch headers here: avx512.cpp includes this file, and code it compiles
// for AVX-512 must not include inline functions other files share (the linker keeps one copy
// of each, which could then be the AVX-512 one on a CPU without AVX-512).
#pragma once

#include <cstdint>

// Levels, in order. avx2 needs AVX2, FMA and F16C; avx512 needs AVX-512 F, BW, DQ, VL and
// VNNI (Ice Lake, Zen 4 and later); amx is avx512 plus AMX-TILE and AMX-INT8 with the OS's
// grant of the tile state (Sapphire Rapids and later): the int8 linear's sums run on tiles,
// everything else on the avx512 path. Every file but avx512.cpp is built with -mavx2 -mfma
// -mf16c, so the extension needs at least avx2 to be loaded (engine/packed.py checks first).
enum class Isa : int { none = 0, avx2 = 1, avx512 = 2, amx = 3 };

struct CpuFlags {
  bool avx2, fma, f16c, avx512f, avx512bw, avx512dq, avx512vl, avx512vnni, avx512bf16;
  bool amx_tile, amx_int8, amx_bf16;  // cpuid, and XCR0 enabling the tile state
};

// What cpuid and xgetbv report (xgetbv: whether the OS saves the AVX / AVX-512 registers).
const CpuFlags& cpu_flags();
// The best level this CPU and this build support.
Isa best_isa();
// The level every kernel call uses now (initially best_isa()).
Isa active_isa();
// Use ``level`` from now on; false (and no change) when this CPU or build cannot.
bool set_active_isa(Isa level);
const char* isa_name(Isa level);

// ---- AVX-512 kernels (avx512.cpp); call only when active_isa() == Isa::avx512.

// Whether the compiler could build them (else avx512 is never chosen).
bool avx512_built();

// packed_linear's panels [begin, end) with AVX-512F: the same FMA chain per output as the
// AVX2 code, so the same bits. dtype: 0 fp32, 1 fp16, 2 bf16 (w points at P x K x 16 of it).
void packed_panels_avx512(const float* x, int64_t M, int64_t K, const void* w, int dtype,
                          const float* bias, float* y, int64_t N, int64_t begin, int64_t end);

// int8_linear's exact int32 sums for ``mr`` (1..kVnniRows) rows of xq (row stride ldx) and one
// panel (K4 x 16 x 4 int8) with AVX-512 VNNI: sums[i * 16 + j].
constexpr int kVnniRows = 12;
void int8_sums_vnni(const uint8_t* xq, int64_t ldx, int64_t K4, const int8_t* panel, int mr,
                    int32_t* sums);

// int4_linear's fp32 accumulators for ``mr`` (1..kVnni4Rows) rows of xq and one panel (K8 x 64
// bytes, two 4-k steps per 64 as nibbles q + 8; ``groups`` groups of g8 steps, scales (groups,
// 16); xsum[i * groups + g] the row's activation bytes summed over the group):
// acc[i * 16 + j] = sum_g scales[g, j] * (exact int32 sum of the group).
constexpr int kVnni4Rows = 12;
void int4_acc_vnni(const uint8_t* xq, int64_t ldx, const int32_t* xsum, int64_t groups, int64_t g8,
                   const uint8_t* panel, const float* scales, int mr, float* acc);

// ---- AMX kernel (amx.cpp); call only when active_isa() == Isa::amx.

// Whether the compiler could build it (else amx is never chosen).
bool amx_built();
// Whether Linux lets this process use the tile data (asked once, for the whole process).
bool amx_permitted();
// int8_linear's exact int32 sums on tiles for ``blocks`` blocks of 16 rows of xq (row stride
// ldx; rows past M zero) and panels [begin, end) of w (P x K4 x 16 x 4 int8, K4 a multiple of
// 16). Panels go in groups of amx_group_panels(K4); for each pair of row blocks b, b + 1 and
// group [p0, p1) it calls done(ctx, 16 * b, p0, p1, sums) with
// sums[((p - p0) * 32 + r) * 16 + j] for row 16 * b + r (r < 32) and column 16 * p + j.
// sums holds amx_group_panels(K4) * 32 * 16 int32.
using AmxPanelsDone = void (*)(void* ctx, int64_t row0, int64_t p0, int64_t p1, const int32_t* sums);
void int8_panels_amx(const uint8_t* xq, int64_t ldx, int64_t blocks, int64_t K4, const int8_t* w,
                     int64_t begin, int64_t end, int32_t* sums, AmxPanelsDone done, void* ctx);
// Panels per group: an even number whose weights take at most 256 KB (2 to 64).
int64_t amx_group_panels(int64_t K4);
