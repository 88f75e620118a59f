// Benchmark-only: the memory traffic of an fp32 Adam step (read p, g, m, v; write p, m, v) with
// almost no arithmetic. Its GB/s is the ceiling an Adam kernel can reach on this machine. Plain
// loops left to the compiler's vectoriser, with CPU Adam's flags and threading.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "simd.h"

namespace zerolib {
namespace {

void adam_shaped_copy(at::Tensor p, const at::Tensor& g, at::Tensor m, at::Tensor v) {
  TORCH_CHECK(p.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat && m.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat,
              "adam_shaped_copy: every tensor must be fp32");
  TORCH_CHECK(g.numel() == p.numel() && m.numel() == p.numel() && v.numel() == p.numel(),
              "adam_shaped_copy: tensors differ in size");
  float* pp = p.data_ptr<float>();
  const float* gp = g.const_data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  const int64_t n = p.numel();
#pragma omp parallel for simd schedule(static) num_threads(at::get_num_threads())
  for (int64_t i = 0; i < n; ++i) {
    const float grad = gp[i];
    mp[i] = 0.5f * mp[i] + grad;
    vp[i] = 0.5f * vp[i] + grad;
    pp[i] = pp[i] - 1e-3f * grad;
  }
}

}  // namespace
}  // namespace zerolib

ZEROLIB_LIBRARY(m) {
  m.def("adam_shaped_copy(Tensor(a!) p, Tensor g, Tensor(b!) m, Tensor(c!) v) -> ()", &zerolib::adam_shaped_copy);
}
