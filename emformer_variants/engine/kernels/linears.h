// The engine's small-batch linear kernels, shared by the extension's source files.
#pragma once

#include <torch/extension.h>

// y = x @ W^T + bias, W packed (P, K, 16) in fp32, fp16 or bf16; fp32 compute (packed_linear.cpp).
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed, c10::optional<torch::Tensor> bias,
                            int64_t N);

// y = x @ W^T + bias with int8 weights (P, K/4, 16, 4) and each row of x quantised to 7 bits
// on the fly: integer products, int32 sums (int8_linear.cpp).
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor colsum,
                          torch::Tensor scale, c10::optional<torch::Tensor> bias, int64_t N);
