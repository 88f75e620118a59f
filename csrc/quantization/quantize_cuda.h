// Host entry points of the CUDA quantizer (quantize_cuda.cu), called by quantize_cuda.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "kernel_abi.h"

namespace zerolib::cuda {

// The inputs of one dequantize-reduce launch, passed by value as a kernel argument.
struct InputBatch {
  static constexpr int kCapacity = 32;
  abi::QuantBuffers items[kCapacity];
};

cudaError_t launch_quantize(const void* x, abi::Dtype dtype, int64_t numel, abi::QuantFormat format,
                            abi::QuantBuffers out, cudaStream_t stream);

// sum (fp32, numel) = sum of the dequantized inputs; pointers are device pointers.
cudaError_t launch_dequantize_reduce(const abi::QuantBuffers* inputs, int64_t count, int64_t numel,
                                     abi::QuantFormat format, float* sum, cudaStream_t stream);

}  // namespace zerolib::cuda
