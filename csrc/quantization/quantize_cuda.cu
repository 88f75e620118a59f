// Block-wise int8/int4 quantization on CUDA: the layout of csrc/quantization/quantize_kernels.cpp
// (docs/ops.md), so CPU and GPU ranks read each other's buffers. Plain CUDA (no torch headers):
// the torch binding is quantize_cuda.cpp; this file compiles on its own with nvcc -c.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernel_abi.h"
#include "quantize_cuda.h"

namespace zerolib::cuda {
namespace {

constexpr int kThreads = 256;

__device__ inline float to_float(const void* x, abi::Dtype dtype, int64_t i) {
  if (dtype == abi::kBFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
  if (dtype == abi::kFloat16) return __half2float(static_cast<const __half*>(x)[i]);
  return static_cast<const float*>(x)[i];
}

// Block-wide max of `value` (every thread gets the result).
__device__ float block_max(float value, float* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  value = lane < blockDim.x / 32 ? shared[lane] : -INFINITY;
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  __syncthreads();
  return value;
}

__device__ inline uint8_t code_of(float value, float zero_point, float inv_scale, float offset, float max_code) {
  return static_cast<uint8_t>(fminf(fmaxf(rintf((value - zero_point) * inv_scale) + offset, 0.f), max_code));
}

// One CUDA block per quantization block.
__global__ void quantize_kernel(const void* x, abi::Dtype dtype, int64_t numel, abi::QuantFormat f,
                                abi::QuantBuffers out) {
  __shared__ float shared[kThreads / 32];
  const int64_t block = blockIdx.x, begin = block * f.block_size;
  const int64_t valid = min(f.block_size, numel - begin);
  float hi = -INFINITY, neg_lo = -INFINITY;  // max of x (or |x|) and max of -x
  for (int64_t j = threadIdx.x; j < valid; j += blockDim.x) {
    const float value = to_float(x, dtype, begin + j);
    hi = fmaxf(hi, f.symmetric ? fabsf(value) : value);
    neg_lo = fmaxf(neg_lo, -value);
  }
  hi = block_max(hi, shared);
  const float lo = -block_max(neg_lo, shared);
  const float levels = f.symmetric ? float((1 << (f.bits - 1)) - 1) : float((1 << f.bits) - 1);
  const float scale = (f.symmetric ? hi : hi - lo) / levels;
  const float inv_scale = scale > 0.f ? 1.f / scale : 0.f, zero_point = f.symmetric ? 0.f : lo;
  const float offset = f.symmetric ? float(1 << (f.bits - 1)) : 0.f, max_code = float((1 << f.bits) - 1);
  if (threadIdx.x == 0) {
    out.scales[block] = scale;
    if (!f.symmetric) out.zero_points[block] = zero_point;
  }
  auto code = [&](int64_t j) {
    return j < valid ? code_of(to_float(x, dtype, begin + j), zero_point, inv_scale, offset, max_code)
                     : static_cast<uint8_t>(offset);  // padding decodes to 0
  };
  if (f.bits == 8) {
    for (int64_t j = threadIdx.x; j < f.block_size; j += blockDim.x) out.data[begin + j] = code(j);
  } else {
    for (int64_t k = threadIdx.x; k < f.block_size / 2; k += blockDim.x)
      out.data[begin / 2 + k] = code(2 * k) | (code(2 * k + 1) << 4);
  }
}

__device__ inline float decode(const abi::QuantBuffers& q, const abi::QuantFormat& f, int64_t i) {
  const int64_t block = i / f.block_size;
  const uint8_t byte = q.data[f.bits == 8 ? i : i / 2];
  const float code = f.bits == 8 ? byte : ((i % 2) ? byte >> 4 : byte & 0x0f);
  const float scale = q.scales[block];
  const float bias = f.symmetric ? -float(1 << (f.bits - 1)) * scale : q.zero_points[block];
  return fmaf(code, scale, bias);
}

// One thread per element, grid-stride; `accumulate` adds to what `sum` holds.
__global__ void dequantize_reduce_kernel(InputBatch inputs, int count, int64_t numel, abi::QuantFormat f, float* sum,
                                         bool accumulate) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x) {
    float total = accumulate ? sum[i] : 0.f;
    for (int k = 0; k < count; ++k) total += decode(inputs.items[k], f, i);
    sum[i] = total;
  }
}

}  // namespace

cudaError_t launch_quantize(const void* x, abi::Dtype dtype, int64_t numel, abi::QuantFormat format,
                            abi::QuantBuffers out, cudaStream_t stream) {
  const int64_t blocks = (numel + format.block_size - 1) / format.block_size;
  if (blocks > 0) quantize_kernel<<<blocks, kThreads, 0, stream>>>(x, dtype, numel, format, out);
  return cudaGetLastError();
}

cudaError_t launch_dequantize_reduce(const abi::QuantBuffers* inputs, int64_t count, int64_t numel,
                                     abi::QuantFormat format, float* sum, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  const int64_t grid = std::min<int64_t>((numel + kThreads - 1) / kThreads, 4096);
  // Kernel arguments are passed by value, so inputs go in batches of InputBatch::kCapacity.
  for (int64_t first = 0; first < count; first += InputBatch::kCapacity) {
    InputBatch batch{};
    const int n = static_cast<int>(std::min<int64_t>(InputBatch::kCapacity, count - first));
    for (int k = 0; k < n; ++k) batch.items[k] = inputs[first + k];
    dequantize_reduce_kernel<<<grid, kThreads, 0, stream>>>(batch, n, numel, format, sum, first > 0);
  }
  return cudaGetLastError();
}

}  // namespace zerolib::cuda
