// Dispatch a linear given as the engine's 4 tensors to the packed fp, int8 or int4 kernel.
#include "linears.h"

namespace {

c10::optional<torch::Tensor> maybe(const torch::Tensor& t) {
  return t.numel() ? c10::optional<torch::Tensor>(t) : c10::nullopt;
}

}  // namespace

torch::Tensor kernel_linear(const torch::Tensor& x, const torch::Tensor* p, int64_t n) {
  if (!p[3].numel()) return packed_linear(x, p[0], maybe(p[1]), n);
  return p[0].scalar_type() == torch::kByte ? int4_linear(x, p[0], p[3], p[2], maybe(p[1]), n)
                                            : int8_linear(x, p[0], p[3], p[2], maybe(p[1]), n);
}

torch::Tensor ffn_activation(const torch::Tensor& x, int64_t kind) {
  switch (kind) {
    case 0: return at::relu(x);
    case 1: return at::gelu(x);
    case 2: return at::gelu(x, "tanh");
    default: return at::silu(x);
  }
}
