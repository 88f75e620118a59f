// Benchmark-only: the memory traffic of an fp32 Adam step (read p, g, m, v; write p, m, v) with
// almost no arithmetic. Its GB/s is the ceiling an Adam kernel can reach on this machine. Plain
// loops left to the compiler's vectoriser, built with CPU Adam's kernel flags and threading.
#include "kernel_abi.h"
#include "simd.h"

namespace zerolib {
namespace {

void adam_shaped_copy(float* p, const float* g, float* m, float* v, int64_t n, int32_t num_threads) {
#pragma omp parallel for simd schedule(static) num_threads(num_threads)
  for (int64_t i = 0; i < n; ++i) {
    const float grad = g[i];
    m[i] = 0.5f * m[i] + grad;
    v[i] = 0.5f * v[i] + grad;
    p[i] = p[i] - 1e-3f * grad;
  }
}

constexpr abi::MemoryCeilingTable kTable{adam_shaped_copy, simd::Native::kName};

}  // namespace
}  // namespace zerolib

ZEROLIB_EXPORT const zerolib::abi::MemoryCeilingTable* zerolib_adam_memory_ceiling_kernel_table() {
  return &zerolib::kTable;
}
