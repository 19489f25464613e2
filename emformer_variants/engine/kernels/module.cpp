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
  if (name == "amx") return Isa::amx;
  if (name == "avx512") return Isa::avx512;
  if (name == "avx2") return Isa::avx2;
  TORCH_CHECK(false, "unknown instruction set ", name, " (amx, avx512 or avx2)");
  return Isa::none;
}

std::map<std::string, bool> flags() {
  const CpuFlags& f = cpu_flags();
  return {{"avx2", f.avx2}, {"fma", f.fma}, {"f16c", f.f16c}, {"avx512f", f.avx512f},
          {"avx512bw", f.avx512bw}, {"avx512dq", f.avx512dq}, {"avx512vl", f.avx512vl},
          {"avx512_vnni", f.avx512vnni}, {"avx512_bf16", f.avx512bf16},
          {"amx_tile", f.amx_tile}, {"amx_int8", f.amx_int8}, {"amx_bf16", f.amx_bf16}};
}

// A search on the prefix cache of exact_search.h (ExactSearch or a search derived from it):
// its constructor, chunk step, cache inspection and statistics.
template <class T>
py::class_<T> bind_search(py::module& m, const char* name, const char* doc) {
  return py::class_<T>(m, name, doc)
      .def(py::init<torch::Tensor, std::vector<torch::Tensor>, std::vector<double>, int64_t,
                    std::vector<torch::Tensor>, std::vector<torch::Tensor>, int64_t, int64_t, double, int64_t,
                    int64_t, int64_t, int64_t>())
      .def("root", &T::root)
      .def("live", &T::live)
      .def("step", &T::step)
      .def("prefixes", &T::prefixes)
      .def("free_slots", &T::free_slots)
      .def("capacity", &T::capacity)
      .def_readonly("computed", &T::computed)
      .def_readonly("hits", &T::hits)
      .def_readonly("joiner_rows", &T::joiner_rows)
      .def_readonly("predictor_rows", &T::predictor_rows)
      .def_readonly("gate_rows", &T::gate_rows);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear, "y = x @ W^T + b with W packed in 16-column panels");
  m.def("log_mel", &log_mel, "FeatureExtractor.streaming: wave (N, S) -> normalised log-mel (N, T, F)");
  m.def("int8_linear", &int8_linear, "y = x @ W^T + b with W int8 and x quantised per row to 7 bits");
  m.def("int4_linear", &int4_linear, "y = x @ W^T + b with W int4 in groups of k and x quantised per row to 7 bits");
  m.def("cpu_flags", &flags, "the CPU's flags as cpuid and xgetbv report them");
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); }, "the best level this CPU and build support");
  m.def("isa", [] { return std::string(isa_name(active_isa())); }, "the level the kernels use now");
  m.def("avx512_built", &avx512_built, "whether the compiler built the AVX-512 kernels");
  m.def("amx_built", &amx_built, "whether the compiler built the AMX int8 kernel");
  m.def("amx_permitted", &amx_permitted, "whether Linux granted this process the AMX tile state");
  m.def("set_isa", [](const std::string& name) { return set_active_isa(parse_isa(name)); },
        "use amx, avx512 or avx2 from now on; False (no change) when this CPU or build cannot");
  m.def("fast_tanh", &fast_tanh, "tanh of every element, fp32, within 1 ulp (elementwise.cpp)");
  m.def("stream_read", &stream_read, "read every byte of a tensor once, one thread (bandwidth floor)");
  m.def("emformer_stack", &emformer_stack, "one streaming chunk through packed Emformer layers");
  py::class_<EmformerStackPlan>(m, "EmformerStackPlan", "emformer_stack's static arguments, held once")
      .def(py::init<std::vector<torch::Tensor>, std::vector<int64_t>, std::vector<int64_t>, std::vector<double>,
                    int64_t, double, int64_t>())
      .def("run", &EmformerStackPlan::run, "emformer_stack(x, r, lo, s, head, keys, values, mask, <the held arguments>)");
  m.def("stream_attention", &stream_attention, "a chunk's multi-head attention in one pass over (N, K, D) keys");
  m.def("ring_attention", &ring_attention, "stream_attention with the left context read from a cache ring");
  m.def("moe_experts", &moe_experts, "each MoE expert's two packed linears on its grouped rows");
  m.def("predictor_step", &predictor_step, "one token step of the RNN-T predictor, packed linears");
  bind_search<ExactSearch>(m, "ExactSearch", "exact mode's beam search and prefix cache (exact_search.cpp)")
      .def_readonly("fallback_topk", &ExactSearch::fallback_topk)
      .def_readonly("fallback_sort", &ExactSearch::fallback_sort)
      .def_readonly("heap_topk", &ExactSearch::heap_topk);
  bind_search<ModifiedSearch>(m, "ModifiedSearch",
                              "modified beam search (greedy: beam 1) on exact mode's prefix cache (modified_search.cpp)")
      .def("set_lm", &ModifiedSearch::set_lm)
      .def_readonly("fallback_select", &ModifiedSearch::fallback_select);
  m.def(
      "ngram_fusion",
      [](const std::vector<torch::Tensor>& tables, int64_t vocab, int64_t order, double weight, double bonus,
         const std::vector<std::vector<int64_t>>& histories) {
        NgramFusion lm(tables, vocab, order, weight, bonus);
        auto probs = torch::empty({static_cast<int64_t>(histories.size()), vocab}, torch::kFloat64);
        auto rows = torch::empty({static_cast<int64_t>(histories.size()), vocab + 1}, torch::kFloat32);
        for (size_t r = 0; r < histories.size(); ++r) {
          lm.probs(histories[r], probs.data_ptr<double>() + r * vocab);
          lm.fusion(histories[r], rows.data_ptr<float>() + r * (vocab + 1));
        }
        return std::make_tuple(probs, rows);
      },
      "an n-gram LM's probabilities and fusion rows per history (ngram_lm.cpp; for tests)");
  m.def(
      "top_k_heap",
      [](torch::Tensor logp, torch::Tensor scores, int64_t k) -> py::object {
        TORCH_CHECK(logp.dim() == 2 && logp.scalar_type() == torch::kFloat && logp.is_contiguous() &&
                        scores.dim() == 1 && scores.scalar_type() == torch::kFloat && scores.is_contiguous() &&
                        scores.size(0) == logp.size(0),
                    "top_k_heap: logp (R, V) and scores (R,), contiguous fp32");
        std::vector<Scored> top;
        if (!top_k_heap(logp.data_ptr<float>(), logp.size(1), scores.data_ptr<float>(), logp.size(0),
                        logp.size(1), k, top))
          return py::none();
        auto values = torch::empty({static_cast<int64_t>(top.size())}, torch::kFloat32);
        auto index = torch::empty({static_cast<int64_t>(top.size())}, torch::kInt64);
        for (size_t j = 0; j < top.size(); ++j) {
          values[j] = top[j].first;
          index[j] = top[j].second;
        }
        return py::make_tuple(values, index);
      },
      "the k largest of scores[r] + logp[r, v], flat, as at::topk orders ties, or None where "
      "at::topk would not take its partial sort (exact_search.cpp; for tests)");
}
