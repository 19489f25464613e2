// The int8 linear's integer sums on Intel AMX (Sapphire Rapids and later): TDPBUSD multiplies
// a 16-row x 64-byte tile of u8 activations by a 16 x 64-byte tile of s8 weights and adds the
// 16 x 16 int32 sums, 16,384 multiply-adds per instruction, where AVX-512 VNNI's vpdpbusd does
// 64. The weight's packed layout (P, K4, 16, 4) is already AMX's "VNNI" B layout: 16 rows of
// K4 hold 4 consecutive k for each of 16 output columns, so a panel's 16 k4-rows are one tile.
// Same exact int32 sums as the AVX2 and VNNI paths (u8 x s8 products, no saturation), so
// int8_linear.cpp's shared finish gives the same bits.
//
// Compiled per function with target attributes, like avx512.cpp, and called only when
// active_isa() == Isa::amx: the CPU reports AMX-TILE and AMX-INT8, XCR0 enables the tile
// state, and Linux granted this process the tile data (arch_prctl ARCH_REQ_XCOMP_PERM).
// The tile configuration is per thread and other libraries (oneDNN) use it too, so every call
// loads its own and releases the tiles before returning. Panels go in groups whose weights
// fit in L2; for each pair of row blocks the group's sums go to the caller's finish (which
// uses no tiles), so y is written 32 rows x the group's columns at a time, not one 16-column
// strip down all M rows per panel (a page per row: on 320 rows x 4097 outputs that cost more
// than the products).
#include "isa.h"

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#if !defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11 && defined(__x86_64__)
#define EV_AMX 1
#define EV_AMX_TARGET __attribute__((target("amx-tile,amx-int8")))
#else
#define EV_AMX 0
#endif

#if EV_AMX

namespace {

// The 64-byte operand of LDTILECFG: palette 1, then per tile its bytes per row and its rows.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Tiles: 0-3 sums (row blocks a, b x panels 0, 1), 4-5 activations (a, b), 6-7 weights (0, 1).
constexpr int kTiles = 8;

}  // namespace

bool amx_built() { return true; }

int64_t amx_group_panels(int64_t K4) {
  const int64_t g = (256 * 1024) / (K4 * 64);
  return g < 2 ? 2 : g > 64 ? 64 : g / 2 * 2;
}

bool amx_permitted() {
  // ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18): without it the first tile
  // instruction raises SIGILL. Asked once per process; the grant covers every thread.
  static const bool granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return granted;
}

EV_AMX_TARGET void int8_panels_amx(const uint8_t* xq, int64_t ldx, int64_t blocks, int64_t K4,
                                   const int8_t* w, int64_t begin, int64_t end, int32_t* sums,
                                   AmxPanelsDone done, void* ctx) {
  TileConfig cfg;
  for (int t = 0; t < kTiles; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  const int64_t kb = K4 / 16, panel_bytes = K4 * 64;
  const int64_t group = amx_group_panels(K4);
  for (int64_t g0 = begin; g0 < end; g0 += group) {
    const int64_t g1 = g0 + group < end ? g0 + group : end;
    // each pair of row blocks over the group's panels, whose weights stay in cache: the
    // caller then writes 32 rows x the group's columns of y, near each other
    for (int64_t b = 0; b < blocks; b += 2) {
      const bool two = b + 1 < blocks;
      const uint8_t* xa = xq + b * 16 * ldx;
      const uint8_t* xb = xa + 16 * ldx;
      for (int64_t p = g0; p < g1; p += 2) {
        const bool pair = p + 1 < g1;
        const int8_t* p0 = w + p * panel_bytes;
        const int8_t* p1 = p0 + (pair ? panel_bytes : 0);
        int32_t* s0 = sums + (p - g0) * 32 * 16;  // panel p: 32 rows x 16 int32
        int32_t* s1 = s0 + 32 * 16;               // panel p + 1
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t k = 0; k < kb; ++k) {
          _tile_loadd(4, xa + k * 64, ldx);
          _tile_loadd(6, p0 + k * 1024, 64);
          _tile_dpbusd(0, 4, 6);
          if (pair) {
            _tile_loadd(7, p1 + k * 1024, 64);
            _tile_dpbusd(1, 4, 7);
          }
          if (two) {
            _tile_loadd(5, xb + k * 64, ldx);
            _tile_dpbusd(2, 5, 6);
            if (pair) _tile_dpbusd(3, 5, 7);
          }
        }
        _tile_stored(0, s0, 64);
        if (pair) _tile_stored(1, s1, 64);
        if (two) {
          _tile_stored(2, s0 + 256, 64);
          if (pair) _tile_stored(3, s1 + 256, 64);
        }
      }
      done(ctx, b * 16, g0, g1, sums);  // no tile instructions there
    }
  }
  _tile_release();
}

#else  // a compiler without the AMX targets: never chosen

bool amx_built() { return false; }
int64_t amx_group_panels(int64_t) { return 2; }
bool amx_permitted() { return false; }
void int8_panels_amx(const uint8_t*, int64_t, int64_t, int64_t, const int8_t*, int64_t, int64_t, int32_t*,
                     AmxPanelsDone, void*) {}

#endif
