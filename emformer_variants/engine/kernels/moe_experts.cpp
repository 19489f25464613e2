// MoE FFNs in C++ (``engine.moe.PackedMoE``): the experts of a layer in one call, and the
// whole routed FFN (router, top-k, grouping, experts, weighted sum) for the fused layer stack.
// The same ATen ops and kernels, in the same order, as PackedMoE / ``surgery.moe.combine``.
#include "linears.h"

// grouped: (M, D) fp32 rows grouped by expert, sizes[e] rows for expert e (0 = skipped).
// params: 8 tensors per expert, its two linears as ``kernel_args`` (4 each); hidden[e]: the
// first linear's output features; out_dim: the second's. Returns (M, out_dim).
torch::Tensor moe_experts_ptr(const torch::Tensor& grouped, const int64_t* sizes, int64_t experts,
                              const torch::Tensor* params, const int64_t* hidden, int64_t out_dim,
                              int64_t activation) {
  auto x = grouped.contiguous();
  auto y = at::empty({x.size(0), out_dim}, x.options());
  int64_t row = 0;
  for (int64_t e = 0; e < experts; ++e) {
    if (sizes[e] == 0) continue;
    auto h = ffn_activation(kernel_linear(x.narrow(0, row, sizes[e]), params + 8 * e, hidden[e]),
                            activation);
    y.narrow(0, row, sizes[e]).copy_(kernel_linear(h, params + 8 * e + 4, out_dim));
    row += sizes[e];
  }
  TORCH_CHECK(row == x.size(0), "moe_experts: sizes do not add up to the rows");
  return y;
}

torch::Tensor moe_experts(torch::Tensor grouped, std::vector<int64_t> sizes,
                          std::vector<torch::Tensor> params, std::vector<int64_t> hidden,
                          int64_t out_dim, int64_t activation) {
  TORCH_CHECK(params.size() == 8 * sizes.size() && hidden.size() == sizes.size(),
              "moe_experts: 8 tensors and one width per expert");
  return moe_experts_ptr(grouped, sizes.data(), static_cast<int64_t>(sizes.size()), params.data(),
                         hidden.data(), out_dim, activation);
}

// x (M, D) normalised rows -> (M, out_dim): router logits = x W^T + b (fp32), softmax, top-k
// renormalised, assignments grouped by expert (stable sort), experts, weighted index_add.
// router: weight, bias (empty = none); params/hidden as moe_experts.
torch::Tensor moe_ffn(const torch::Tensor& x, const torch::Tensor* router, int64_t experts, int64_t top_k,
                      const torch::Tensor* params, const int64_t* hidden, int64_t out_dim,
                      int64_t activation) {
  auto logits = router[1].numel() ? at::linear(x, router[0], router[1]) : at::linear(x, router[0]);
  auto probs = logits.softmax(-1);
  auto top = probs.topk(top_k, -1);
  auto top_p = std::get<0>(top);
  auto weights = top_p / top_p.sum(-1, true);
  auto flat = std::get<1>(top).reshape(-1);
  auto order = at::argsort(flat, /*stable=*/true);
  auto token = at::div(order, top_k, "floor");
  auto counts = at::bincount(flat, {}, experts).contiguous();
  auto y = moe_experts_ptr(x.index_select(0, token), counts.data_ptr<int64_t>(), experts, params, hidden,
                           out_dim, activation);
  y = y * weights.reshape(-1).index_select(0, order).unsqueeze(1);
  return at::zeros({x.size(0), y.size(1)}, y.options()).index_add_(0, token, y);
}
