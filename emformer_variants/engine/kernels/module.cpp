// The Python module of the engine's kernels (``engine.packed.kernel()``).
#include "linears.h"

#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("packed_linear", &packed_linear, "y = x @ W^T + b with W packed in 16-column panels");
  m.def("int8_linear", &int8_linear, "y = x @ W^T + b with W int8 and x quantised per row to 7 bits");
  m.def("emformer_stack", &emformer_stack, "one streaming chunk through packed Emformer layers");
  m.def("predictor_step", &predictor_step, "one token step of the RNN-T predictor, packed linears");
}
