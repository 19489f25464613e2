// The experts of a MoE FFN in one call (``engine.moe.PackedMoE``): for each expert, its rows
// through its first packed linear, the activation, its second packed linear. The same ATen
// activation and kernels, in the same order, as PackedMoE's Python loop over experts.
#include "linears.h"

// grouped: (M, D) fp32 rows grouped by expert, sizes[e] rows for expert e (0 = skipped).
// params: 8 tensors per expert, its two linears as ``kernel_args`` (4 each); hidden[e]: the
// first linear's output features; out_dim: the second's. Returns (M, out_dim).
torch::Tensor moe_experts(torch::Tensor grouped, std::vector<int64_t> sizes,
                          std::vector<torch::Tensor> params, std::vector<int64_t> hidden,
                          int64_t out_dim, int64_t activation) {
  TORCH_CHECK(params.size() == 8 * sizes.size() && hidden.size() == sizes.size(),
              "moe_experts: 8 tensors and one width per expert");
  auto x = grouped.contiguous();
  auto y = at::empty({x.size(0), out_dim}, x.options());
  int64_t row = 0;
  for (size_t e = 0; e < sizes.size(); ++e) {
    if (sizes[e] == 0) continue;
    auto h = ffn_activation(kernel_linear(x.narrow(0, row, sizes[e]), &params[8 * e], hidden[e]),
                               activation);
    y.narrow(0, row, sizes[e]).copy_(kernel_linear(h, &params[8 * e + 4], out_dim));
    row += sizes[e];
  }
  TORCH_CHECK(row == x.size(0), "moe_experts: sizes do not add up to the rows");
  return y;
}
