// Torch binding of the CPU quantizer: checks inputs (naming them), allocates outputs, and calls
// the SIMD kernel library. Layout: csrc/quantization/quantize_kernels.cpp and docs/ops.md.
#include <ATen/ops/empty.h>

#include <tuple>
#include <vector>

#include "binding.h"
#include "quantize_checks.h"

namespace zerolib {
namespace {

using Table = abi::QuantKernelTable;

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(int64_t kernels, const at::Tensor& x, int64_t bits,
                                                        int64_t block_size, bool symmetric) {
  const auto& table = kernel_table<Table>(kernels, "quantize");
  const abi::QuantFormat format = checked_format(bits, block_size, symmetric);
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "quantize: the input must be a contiguous CPU tensor");
  TORCH_CHECK(abi_dtype(x) != abi::kAbsent, "quantize: input dtype ", x.scalar_type(),
              " is not supported (fp32, bf16, fp16)");
  auto [data, scales, zero_points] = empty_quantized(x.numel(), format, x.options());
  table.quantize(x.const_data_ptr(), abi_dtype(x), x.numel(), format, buffers(data, scales, zero_points, symmetric),
                 at::get_num_threads());
  return {data, scales, zero_points};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dequantize_reduce(
    int64_t kernels, at::TensorList data, at::TensorList scales, at::TensorList zero_points, int64_t numel,
    int64_t bits, int64_t block_size, bool symmetric, bool requantize) {
  const auto& table = kernel_table<Table>(kernels, "dequantize_reduce");
  const abi::QuantFormat format = checked_format(bits, block_size, symmetric);
  std::vector<abi::QuantBuffers> inputs = checked_inputs(data, scales, zero_points, numel, format);
  auto options = data[0].options();
  auto sum = at::empty({requantize ? 0 : numel}, options.dtype(at::kFloat));
  auto [out_data, out_scales, out_zero] = empty_quantized(requantize ? numel : 0, format, options);
  table.dequantize_reduce(inputs.data(), static_cast<int64_t>(inputs.size()), numel, format,
                          requantize ? nullptr : sum.data_ptr<float>(),
                          buffers(out_data, out_scales, out_zero, symmetric), at::get_num_threads());
  return {sum, out_data, out_scales, out_zero};
}

at::Tensor dequantize(int64_t kernels, const at::Tensor& data, const at::Tensor& scales,
                      const at::Tensor& zero_points, int64_t numel, int64_t bits, int64_t block_size, bool symmetric) {
  return std::get<0>(
      dequantize_reduce(kernels, {data}, {scales}, {zero_points}, numel, bits, block_size, symmetric, false));
}

std::string simd_path(int64_t kernels) { return kernel_table<Table>(kernels, "simd_path").simd_path; }

}  // namespace
}  // namespace zerolib

ZEROLIB_LIBRARY(zerolib_quantizer, m) {
  m.def("quantize(int kernels, Tensor x, int bits, int block_size, bool symmetric) -> (Tensor, Tensor, Tensor)",
        &zerolib::quantize);
  m.def("dequantize(int kernels, Tensor data, Tensor scales, Tensor zero_points, int numel, int bits, "
        "int block_size, bool symmetric) -> Tensor",
        &zerolib::dequantize);
  m.def("dequantize_reduce(int kernels, Tensor[] data, Tensor[] scales, Tensor[] zero_points, int numel, int bits, "
        "int block_size, bool symmetric, bool requantize) -> (Tensor, Tensor, Tensor, Tensor)",
        &zerolib::dequantize_reduce);
  m.def("simd_path(int kernels) -> str", &zerolib::simd_path);
}
