// Input checks and output allocation shared by the CPU and CUDA quantizer bindings.
#pragma once

#include <ATen/ops/empty.h>

#include <optional>
#include <tuple>
#include <vector>

#include "binding.h"

namespace zerolib {

inline abi::QuantFormat checked_format(int64_t bits, int64_t block_size, bool symmetric) {
  TORCH_CHECK(bits == 8 || bits == 4, "quantize: bits must be 8 or 4, got ", bits);
  TORCH_CHECK(block_size >= 2 && block_size % 2 == 0, "quantize: block_size must be even and >= 2, got ", block_size);
  return abi::QuantFormat{bits, block_size, symmetric ? 1 : 0};
}

inline int64_t quant_blocks(int64_t numel, const abi::QuantFormat& f) { return (numel + f.block_size - 1) / f.block_size; }
inline int64_t quant_data_bytes(int64_t numel, const abi::QuantFormat& f) {
  return quant_blocks(numel, f) * f.block_size * f.bits / 8;
}

// data, scales, zero_points (empty when symmetric) for numel values, on `options`' device.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_quantized(int64_t numel, const abi::QuantFormat& f,
                                                                      const at::TensorOptions& options) {
  const int64_t blocks = quant_blocks(numel, f);
  return {at::empty({quant_data_bytes(numel, f)}, options.dtype(at::kByte)),
          at::empty({blocks}, options.dtype(at::kFloat)),
          at::empty({f.symmetric ? 0 : blocks}, options.dtype(at::kFloat))};
}

// The caller's output tensors when given (checked against numel and the format), else new ones.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_outputs(int64_t numel, const abi::QuantFormat& f,
                                                                       const at::TensorOptions& options,
                                                                       const std::optional<at::Tensor>& data,
                                                                       const std::optional<at::Tensor>& scales,
                                                                       const std::optional<at::Tensor>& zero_points) {
  if (!data.has_value()) return empty_quantized(numel, f, options);
  const int64_t blocks = quant_blocks(numel, f), bytes = quant_data_bytes(numel, f);
  TORCH_CHECK(data->scalar_type() == at::kByte && data->is_contiguous() && data->numel() == bytes,
              "quantize: data out must be contiguous uint8 of ", bytes, " bytes, got ", data->numel());
  TORCH_CHECK(scales.has_value() && scales->scalar_type() == at::kFloat && scales->is_contiguous() &&
                  scales->numel() == blocks,
              "quantize: scales out must be contiguous fp32 of ", blocks, " blocks");
  const bool zero_ok = f.symmetric || (zero_points.has_value() && zero_points->scalar_type() == at::kFloat &&
                                       zero_points->is_contiguous() && zero_points->numel() == blocks);
  TORCH_CHECK(zero_ok, "quantize: asymmetric zero_points out must be contiguous fp32 of ", blocks, " blocks");
  return {*data, *scales, f.symmetric ? at::empty({0}, options.dtype(at::kFloat)) : *zero_points};
}

inline abi::QuantBuffers buffers(at::Tensor& data, at::Tensor& scales, at::Tensor& zero_points, bool symmetric) {
  return {data.data_ptr<uint8_t>(), scales.data_ptr<float>(), symmetric ? nullptr : zero_points.data_ptr<float>()};
}

inline void check_out(const at::Tensor& out, int64_t numel) {
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.numel() == numel,
              "dequantize: out must be a contiguous fp32 tensor of ", numel, " elements, got ", out.scalar_type(),
              " of ", out.numel());
}

// Checks every input against the sizes numel and the format imply; returns their raw buffers.
inline std::vector<abi::QuantBuffers> checked_inputs(at::TensorList data, at::TensorList scales,
                                                     at::TensorList zero_points, int64_t numel,
                                                     const abi::QuantFormat& f) {
  TORCH_CHECK(!data.empty() && scales.size() == data.size() && zero_points.size() == data.size(),
              "dequantize: needs one or more inputs with data, scales and zero_points each");
  const int64_t blocks = quant_blocks(numel, f), bytes = quant_data_bytes(numel, f);
  std::vector<abi::QuantBuffers> inputs;
  for (size_t k = 0; k < data.size(); ++k) {
    TORCH_CHECK(data[k].scalar_type() == at::kByte && data[k].is_contiguous() && data[k].numel() == bytes,
                "dequantize: input ", k, ": data must be contiguous uint8 of ", bytes, " bytes for numel=", numel,
                ", got ", data[k].scalar_type(), " of ", data[k].numel());
    TORCH_CHECK(scales[k].scalar_type() == at::kFloat && scales[k].is_contiguous() && scales[k].numel() == blocks,
                "dequantize: input ", k, ": scales must be contiguous fp32 of ", blocks, " blocks, got ",
                scales[k].numel());
    const bool zero_ok = f.symmetric || (zero_points[k].scalar_type() == at::kFloat &&
                                         zero_points[k].numel() == blocks && zero_points[k].is_contiguous());
    TORCH_CHECK(zero_ok, "dequantize: input ", k, ": asymmetric zero_points must be contiguous fp32 of ", blocks,
                " blocks");
    TORCH_CHECK(data[k].device() == data[0].device() && scales[k].device() == data[0].device(),
                "dequantize: input ", k, " is on ", data[k].device(), ", input 0 on ", data[0].device());
    inputs.push_back({const_cast<uint8_t*>(data[k].const_data_ptr<uint8_t>()),
                      const_cast<float*>(scales[k].const_data_ptr<float>()),
                      f.symmetric ? nullptr : const_cast<float*>(zero_points[k].const_data_ptr<float>())});
  }
  return inputs;
}

}  // namespace zerolib
