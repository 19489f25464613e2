// The Python module of the engine's kernels (``engine.packed.kernel()``).
#include "exact_search.h"
#include "isa.h"
#include "modified_search.h"
#include "linears.h"

#include <torch/extension.h>

#include <map>
#include <string>

// The experts of a MoE FFN in one call (moe_experts.cpp).
torch::Tensor moe_experts(torch::Tensor grouped, std::vector<int64_t> sizes,
                          std::vector<torch::Tensor> params, std::vector<int64_t> hidden,
                          int64_t out_dim, int64_t activation);

namespace {

Isa parse_isa(const std::string& name) {
  if (name == "avx512") return Isa::avx512;
  if (name == "avx2") return Isa::avx2;
  TORCH_CHECK(false, "unknown instruction set ", name, " (avx512 or avx2)");
  return Isa::none;
}

std::map<std::string, bool> flags() {
  const CpuFlags& f = cpu_flags();
  return {{"avx2", f.avx2}, {"fma", f.fma}, {"f16c", f.f16c}, {"avx512f", f.avx512f},
          {"avx512bw", f.avx512bw}, {"avx512dq", f.avx512dq}, {"avx512vl", f.avx512vl},
          {"avx512_vnni", f.avx512vnni}, {"avx512_bf16", f.avx512bf16}};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear, "y = x @ W^T + b with W packed in 16-column panels");
  m.def("int8_linear", &int8_linear, "y = x @ W^T + b with W int8 and x quantised per row to 7 bits");
  m.def("cpu_flags", &flags, "the CPU's flags as cpuid and xgetbv report them");
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); }, "the best level this CPU and build support");
  m.def("isa", [] { return std::string(isa_name(active_isa())); }, "the level the kernels use now");
  m.def("avx512_built", &avx512_built, "whether the compiler built the AVX-512 kernels");
  m.def("set_isa", [](const std::string& name) { return set_active_isa(parse_isa(name)); },
        "use avx512 or avx2 from now on; False (no change) when this CPU or build cannot");
  m.def("stream_read", &stream_read, "read every byte of a tensor once, one thread (bandwidth floor)");
  m.def("emformer_stack", &emformer_stack, "one streaming chunk through packed Emformer layers");
  m.def("stream_attention", &stream_attention, "a chunk's multi-head attention in one pass over (N, K, D) keys");
  m.def("moe_experts", &moe_experts, "each MoE expert's two packed linears on its grouped rows");
  m.def("predictor_step", &predictor_step, "one token step of the RNN-T predictor, packed linears");
  py::class_<ExactSearch>(m, "ExactSearch", "exact mode's beam search and prefix cache (exact_search.cpp)")
      .def(py::init<torch::Tensor, std::vector<torch::Tensor>, std::vector<double>, int64_t,
                    std::vector<torch::Tensor>, std::vector<torch::Tensor>, int64_t, int64_t, double, int64_t,
                    int64_t, int64_t, int64_t>())
      .def("root", &ExactSearch::root)
      .def("live", &ExactSearch::live)
      .def("step", &ExactSearch::step)
      .def("prefixes", &ExactSearch::prefixes)
      .def("free_slots", &ExactSearch::free_slots)
      .def("capacity", &ExactSearch::capacity)
      .def_readonly("computed", &ExactSearch::computed)
      .def_readonly("hits", &ExactSearch::hits)
      .def_readonly("joiner_rows", &ExactSearch::joiner_rows)
      .def_readonly("predictor_rows", &ExactSearch::predictor_rows)
      .def_readonly("gate_rows", &ExactSearch::gate_rows)
      .def_readonly("fallback_topk", &ExactSearch::fallback_topk)
      .def_readonly("fallback_sort", &ExactSearch::fallback_sort);
  py::class_<ModifiedSearch>(m, "ModifiedSearch",
                             "modified beam search (greedy: beam 1) on exact mode's prefix cache (modified_search.cpp)")
      .def(py::init<torch::Tensor, std::vector<torch::Tensor>, std::vector<double>, int64_t,
                    std::vector<torch::Tensor>, std::vector<torch::Tensor>, int64_t, int64_t, double, int64_t,
                    int64_t, int64_t, int64_t>())
      .def("root", &ModifiedSearch::root)
      .def("live", &ModifiedSearch::live)
      .def("step", &ModifiedSearch::step)
      .def("prefixes", &ModifiedSearch::prefixes)
      .def("free_slots", &ModifiedSearch::free_slots)
      .def("capacity", &ModifiedSearch::capacity)
      .def_readonly("computed", &ModifiedSearch::computed)
      .def_readonly("hits", &ModifiedSearch::hits)
      .def_readonly("joiner_rows", &ModifiedSearch::joiner_rows)
      .def_readonly("predictor_rows", &ModifiedSearch::predictor_rows)
      .def_readonly("gate_rows", &ModifiedSearch::gate_rows)
      .def_readonly("fallback_select", &ModifiedSearch::fallback_select);
}
