// The Python module of the engine's kernels (``engine.packed.kernel()``).
#include "exact_search.h"
#include "linears.h"

#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear, "y = x @ W^T + b with W packed in 16-column panels");
  m.def("int8_linear", &int8_linear, "y = x @ W^T + b with W int8 and x quantised per row to 7 bits");
  m.def("emformer_stack", &emformer_stack, "one streaming chunk through packed Emformer layers");
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
      .def_readonly("fallback_topk", &ExactSearch::fallback_topk);
}
