// The engine's C++ kernels: declarations shared by the extension's source files.
#pragma once

#include <torch/types.h>

#include <algorithm>
#include <utility>
#include <vector>

// y = x @ W^T + bias, W packed (P, K, 16) in fp32, fp16 or bf16; fp32 compute (packed_linear.cpp).
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed, c10::optional<torch::Tensor> bias,
                            int64_t N);

// y = x @ W^T + bias with int8 weights (P, K/4, 16, 4) and each row of x quantised to 7 bits
// on the fly: integer products, int32 sums (int8_linear.cpp).
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor colsum,
                          torch::Tensor scale, c10::optional<torch::Tensor> bias, int64_t N);

// y = x @ W^T + bias with int4 weights (P, K/8, 64) in groups of k with fp32 scales (P, groups, 16)
// and each row of x quantised to 7 bits on the fly: exact int32 sums per group (int4_linear.cpp).
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor zc, torch::Tensor scales,
                          c10::optional<torch::Tensor> bias, int64_t N);

// A linear's optional bias as the kernels take it: a contiguous fp32 (N,) tensor, held alive in
// ``keep``, or none (nullptr, also for an empty tensor); ``who`` names the kernel in the error.
inline const float* bias_data(const c10::optional<torch::Tensor>& bias, int64_t N, torch::Tensor& keep,
                              const char* who) {
  if (!bias.has_value() || !bias->defined() || !bias->numel()) return nullptr;
  keep = bias->contiguous();
  TORCH_CHECK(keep.scalar_type() == torch::kFloat && keep.numel() == N, who, ": bad bias");
  return keep.data_ptr<float>();
}

// The row blocks of a few-row kernel: (first row, rows) covering M rows, at most ``rows`` each;
// with ``even`` as equal as possible (13 rows at 12: 7 + 6), else full blocks and the rest last.
inline std::vector<std::pair<int64_t, int>> row_blocks(int64_t M, int rows, bool even) {
  std::vector<std::pair<int64_t, int>> out;
  for (int64_t m = 0; m < M;) {
    const int64_t blocks = (M - m + rows - 1) / rows;
    const int mr = static_cast<int>(even ? (M - m + blocks - 1) / blocks : std::min<int64_t>(rows, M - m));
    out.emplace_back(m, mr);
    m += mr;
  }
  return out;
}

// Reads every byte of buffer once in one thread; returns a checksum (packed_linear.cpp).
int64_t stream_read(torch::Tensor buffer);

// A linear given as 4 tensors (the engine's ``kernel_args``): packed weight, bias, and for
// int8 the weight scales and column sums, for int4 (a uint8 packed weight) the group scales and
// zero corrections, else two empty tensors (an empty bias = none).
// x: (M, K) fp32 -> (M, n) (kernel_linear.cpp).
torch::Tensor kernel_linear(const torch::Tensor& x, const torch::Tensor* p, int64_t n);

// tanh of every element of an fp32 tensor, within 1 ulp; a new contiguous tensor (elementwise.cpp).
torch::Tensor fast_tanh(const torch::Tensor& x);

// The FFN activation by code (``engine.encoder._activation_code``): 0 relu, 1 gelu, 2 gelu
// (tanh), 3 silu (kernel_linear.cpp).
torch::Tensor ffn_activation(const torch::Tensor& x, int64_t kind);

// Multi-head attention of a streaming chunk in one pass: q (N, T, D), k and v (N, K, D), mask
// (N, K) True = masked key (attention.cpp).
torch::Tensor stream_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const c10::optional<torch::Tensor>& mask, int64_t heads, double scaling);

// stream_attention with the keys [k rows 0..r, the ring's rows lo..L oldest first, k rows r..T]:
// k_ring and v_ring (N, L, D) hold the left context as a ring whose oldest row is at ``head``
// (attention.cpp).
torch::Tensor ring_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& k_ring, const torch::Tensor& v_ring, int64_t r, int64_t lo,
                             int64_t head, const c10::optional<torch::Tensor>& mask, int64_t heads,
                             double scaling);

// The routed FFN of a MoE layer on normalised rows (moe_experts.cpp).
torch::Tensor moe_ffn(const torch::Tensor& x, const torch::Tensor* router, int64_t experts, int64_t top_k,
                      const torch::Tensor* params, const int64_t* hidden, int64_t out_dim,
                      int64_t activation);

// The encoder's layers for one chunk (emformer_stack.cpp).
std::vector<torch::Tensor> emformer_stack(torch::Tensor x, int64_t r, int64_t lo, int64_t s, int64_t head,
                                          std::vector<torch::Tensor> keys,
                                          std::vector<torch::Tensor> values,
                                          c10::optional<torch::Tensor> mask,
                                          const std::vector<torch::Tensor>& params, const std::vector<int64_t>& plan,
                                          const std::vector<int64_t>& dims, const std::vector<double>& eps,
                                          int64_t heads, double scaling, int64_t activation);

// at::layer_norm over the last dimension through ATen's CPU kernel, without the op's dispatch
// and statistics outputs: the same bits (rows.cpp).
torch::Tensor layer_norm_rows(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              double eps);

// Rows [start, start + count) of a (N, T, D) tensor whose last dimension is contiguous.
struct RowPiece {
  const torch::Tensor& t;
  int64_t start, count;
};
// at::cat of the pieces along dim 1, as row copies: a new contiguous (N, sum of counts, D) (rows.cpp).
torch::Tensor concat_rows(const std::vector<RowPiece>& pieces);

// The left-context ring of a streaming cache (N, L, D), oldest row at ``head``: its rows lo..L
// in age order as at most two pieces, for concat_rows (rows.cpp).
std::vector<RowPiece> ring_pieces(const torch::Tensor& ring, int64_t lo, int64_t head);

// Rows [start, start + count) of src (N, T, D) enter the ring after its newest row: the oldest
// rows are overwritten, in place, and the oldest row is then at (head + count) mod L (rows.cpp).
void ring_push(torch::Tensor& ring, const torch::Tensor& src, int64_t start, int64_t count, int64_t head);

// FeatureExtractor.streaming for N windows: wave (N, S) -> normalised log-mel (N, T, F) (log_mel.cpp).
torch::Tensor log_mel(const torch::Tensor& wave, const torch::Tensor& window, const torch::Tensor& fb,
                      double gain, const torch::Tensor& mean, const torch::Tensor& invstd, int64_t hop);

// emformer_stack with the layers' weights and plan held once (built by engine.encoder._Stack),
// so a chunk's call converts only the activations and caches, not every weight tensor.
struct EmformerStackPlan {
  std::vector<torch::Tensor> params;
  std::vector<int64_t> plan, dims;
  std::vector<double> eps;
  int64_t heads;
  double scaling;
  int64_t activation;
  std::vector<torch::Tensor> run(torch::Tensor x, int64_t r, int64_t lo, int64_t s, int64_t head,
                                 std::vector<torch::Tensor> keys, std::vector<torch::Tensor> values,
                                 c10::optional<torch::Tensor> mask) const {
    return emformer_stack(std::move(x), r, lo, s, head, std::move(keys), std::move(values), std::move(mask), params,
                          plan, dims, eps, heads, scaling, activation);
  }
};

// One token step of the predictor (predictor_step.cpp).
std::vector<torch::Tensor> predictor_step(torch::Tensor tokens, torch::Tensor pgates, torch::Tensor c,
                                          torch::Tensor table0, std::vector<torch::Tensor> params,
                                          std::vector<double> eps, int64_t out_dim);
