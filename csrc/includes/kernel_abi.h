// The C interface between a torch binding and a kernel library (one per SIMD path).
// Plain structs and function pointers only: kernel libraries include no torch headers.
#pragma once

#include <cstdint>

#define ZEROLIB_EXPORT extern "C" __attribute__((visibility("default")))

namespace zerolib::abi {

enum Dtype : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kAbsent = 3 };

// ---- Adam ----
struct AdamCoefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float l2_decay;       // added to the gradient times p (Adam mode), else 0
  float param_scale;    // 1 - lr * weight_decay in AdamW mode, else 1
  float neg_step_size;  // -lr / bias_correction1
  float inv_sqrt_bc2;   // 1 / sqrt(bias_correction2)
};

struct AdamTensor {
  float* param;
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* param_copy;  // nullptr: no 16-bit copy
  int64_t numel;
  Dtype grad_dtype, moment_dtype, copy_dtype;
  AdamCoefficients k;
};

struct AdamKernelTable {
  void (*step)(const AdamTensor* tensors, int64_t count, int32_t num_threads);
  const char* simd_path;
};

// ---- block quantization ----
struct QuantFormat {
  int64_t bits, block_size;
  int32_t symmetric;
};

struct QuantBuffers {
  uint8_t* data;
  float* scales;
  float* zero_points;  // nullptr when symmetric
};

struct QuantKernelTable {
  void (*quantize)(const void* x, Dtype dtype, int64_t numel, QuantFormat format, QuantBuffers out,
                   int32_t num_threads);
  // Sums `count` quantized inputs into `sum` (fp32, numel), or, when `sum` is nullptr, quantizes
  // the sum into `requantized` block by block without storing it.
  void (*dequantize_reduce)(const QuantBuffers* inputs, int64_t count, int64_t numel, QuantFormat format,
                            float* sum, QuantBuffers requantized, int32_t num_threads);
  const char* simd_path;
};

// ---- benchmark-only memory ceiling ----
struct MemoryCeilingTable {
  void (*adam_shaped_copy)(float* p, const float* g, float* m, float* v, int64_t n, int32_t num_threads);
  const char* simd_path;
};

}  // namespace zerolib::abi
