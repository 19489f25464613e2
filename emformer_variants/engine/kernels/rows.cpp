// Small row operations of the fused paths without ATen's per-op cost (dispatch, a
// TensorIterator, output allocation), each giving the same values as the ATen op it stands for:
//   * layer_norm_rows: ATen's CPU layer norm (at::native::layer_norm_cpu, the function
//     at::layer_norm reaches through the dispatcher), called directly: the same bits;
//   * concat_rows: at::cat along dim 1 of (N, ·, D) pieces whose last dimension is
//     contiguous, as row copies: the same values;
//   * ring_pieces, ring_push: the streaming cache's left context kept as a ring, so a chunk
//     writes its own rows only instead of copying the whole context.
#include "linears.h"

#include <ATen/ops/native_layer_norm_native.h>

#include <algorithm>
#include <cstring>

torch::Tensor layer_norm_rows(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              double eps) {
  return std::get<0>(at::native::layer_norm_cpu(x, {x.size(-1)}, weight, bias, eps));
}

torch::Tensor concat_rows(const std::vector<RowPiece>& pieces) {
  TORCH_CHECK(!pieces.empty(), "concat_rows: no pieces");
  const auto& first = pieces.front().t;
  const int64_t n = first.size(0), d = first.size(2);
  int64_t total = 0;
  for (const auto& p : pieces) {
    TORCH_CHECK(p.t.dim() == 3 && p.t.size(0) == n && p.t.size(2) == d && (p.t.stride(2) == 1 || d == 0) &&
                    p.t.scalar_type() == torch::kFloat && p.start >= 0 && p.count >= 0 &&
                    p.start + p.count <= p.t.size(1),
                "concat_rows: pieces must be fp32 (N, T, D) with a contiguous last dimension");
    total += p.count;
  }
  auto out = torch::empty({n, total, d}, first.options());
  if (d == 0) return out;
  float* dst = out.data_ptr<float>();
  for (int64_t b = 0; b < n; ++b)
    for (const auto& p : pieces) {
      const float* src = p.t.data_ptr<float>() + b * p.t.stride(0) + p.start * p.t.stride(1);
      if (p.t.stride(1) == d) {
        std::memcpy(dst, src, p.count * d * sizeof(float));
      } else {
        for (int64_t i = 0; i < p.count; ++i) std::memcpy(dst + i * d, src + i * p.t.stride(1), d * sizeof(float));
      }
      dst += p.count * d;
    }
  return out;
}

std::vector<RowPiece> ring_pieces(const torch::Tensor& ring, int64_t lo, int64_t head) {
  const int64_t left = ring.size(1), start = left ? (head + lo) % left : 0, count = left - lo;
  if (start + count <= left) return {{ring, start, count}};
  return {{ring, start, left - start}, {ring, 0, start + count - left}};
}

void ring_push(torch::Tensor& ring, const torch::Tensor& src, int64_t start, int64_t count, int64_t head) {
  const int64_t left = ring.size(1), n = ring.size(0), d = ring.size(2);
  if (left == 0) return;
  TORCH_CHECK(ring.dim() == 3 && src.dim() == 3 && src.size(0) == n && src.size(2) == d &&
                  ring.scalar_type() == torch::kFloat && src.scalar_type() == torch::kFloat &&
                  (d == 0 || (ring.stride(2) == 1 && src.stride(2) == 1)) && 0 <= start && 0 <= count &&
                  start + count <= src.size(1) && 0 <= head && head < left,
              "ring_push: ring (N, L, D) and rows (N, T, D), fp32, contiguous last dimension");
  if (d > 0) {
    float* dst = ring.data_ptr<float>();
    const float* from = src.data_ptr<float>();
    // only the last L rows survive a push of more than L
    for (int64_t i = std::max<int64_t>(0, count - left); i < count; ++i) {
      const int64_t slot = (head + i) % left;
      for (int64_t b = 0; b < n; ++b)
        std::memcpy(dst + b * ring.stride(0) + slot * ring.stride(1),
                    from + b * src.stride(0) + (start + i) * src.stride(1), d * sizeof(float));
    }
  }
}
