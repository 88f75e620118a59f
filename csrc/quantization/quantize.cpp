// Torch binding of the CPU quantizer: checks inputs (naming them), allocates outputs, and calls
// the SIMD kernel library. Layout: csrc/quantization/quantize_kernels.cpp and docs/ops.md.
#include <ATen/ops/empty.h>

#include <optional>
#include <tuple>
#include <vector>

#include "binding.h"
#include "quantize_checks.h"

namespace zerolib {
namespace {

using Table = abi::QuantKernelTable;

// With data/scales/zero_points given (e.g. views into a wire buffer) the codes are written there
// and empty tensors are returned, so no returned tensor aliases an argument.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(int64_t kernels, const at::Tensor& x, int64_t bits,
                                                        int64_t block_size, bool symmetric,
                                                        const std::optional<at::Tensor>& data_out,
                                                        const std::optional<at::Tensor>& scales_out,
                                                        const std::optional<at::Tensor>& zero_points_out) {
  const auto& table = kernel_table<Table>(kernels, "quantize");
  const abi::QuantFormat format = checked_format(bits, block_size, symmetric);
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "quantize: the input must be a contiguous CPU tensor");
  TORCH_CHECK(abi_dtype(x) != abi::kAbsent, "quantize: input dtype ", x.scalar_type(),
              " is not supported (fp32, bf16, fp16)");
  auto [data, scales, zero_points] =
      quantize_outputs(x.numel(), format, x.options(), data_out, scales_out, zero_points_out);
  table.quantize(x.const_data_ptr(), abi_dtype(x), x.numel(), format, buffers(data, scales, zero_points, symmetric),
                 at::get_num_threads());
  if (data_out.has_value()) {
    auto none = at::empty({0}, x.options().dtype(at::kFloat));
    return {none.to(at::kByte), none, none};
  }
  return {data, scales, zero_points};
}

// With `out` (fp32, numel, contiguous) the sum is written there and an empty tensor returned:
// writing into an existing buffer avoids the page faults of a fresh allocation.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dequantize_reduce(
    int64_t kernels, at::TensorList data, at::TensorList scales, at::TensorList zero_points, int64_t numel,
    int64_t bits, int64_t block_size, bool symmetric, bool requantize, const std::optional<at::Tensor>& out) {
  const auto& table = kernel_table<Table>(kernels, "dequantize_reduce");
  const abi::QuantFormat format = checked_format(bits, block_size, symmetric);
  std::vector<abi::QuantBuffers> inputs = checked_inputs(data, scales, zero_points, numel, format);
  auto options = data[0].options();
  TORCH_CHECK(!(out.has_value() && requantize), "dequantize_reduce: out= and requantize=True exclude each other");
  if (out.has_value()) check_out(*out, numel);
  auto sum = out.has_value() ? *out : at::empty({requantize ? 0 : numel}, options.dtype(at::kFloat));
  auto [out_data, out_scales, out_zero] = empty_quantized(requantize ? numel : 0, format, options);
  table.dequantize_reduce(inputs.data(), static_cast<int64_t>(inputs.size()), numel, format,
                          requantize ? nullptr : sum.data_ptr<float>(),
                          buffers(out_data, out_scales, out_zero, symmetric), at::get_num_threads());
  return {out.has_value() ? at::empty({0}, options.dtype(at::kFloat)) : sum, out_data, out_scales, out_zero};
}

at::Tensor dequantize(int64_t kernels, const at::Tensor& data, const at::Tensor& scales,
                      const at::Tensor& zero_points, int64_t numel, int64_t bits, int64_t block_size, bool symmetric,
                      const std::optional<at::Tensor>& out) {
  return std::get<0>(
      dequantize_reduce(kernels, {data}, {scales}, {zero_points}, numel, bits, block_size, symmetric, false, out));
}

std::string simd_path(int64_t kernels) { return kernel_table<Table>(kernels, "simd_path").simd_path; }

}  // namespace
}  // namespace zerolib

ZEROLIB_LIBRARY(zerolib_quantizer, m) {
  m.def("quantize(int kernels, Tensor x, int bits, int block_size, bool symmetric, Tensor(a!)? data=None, "
        "Tensor(b!)? scales=None, Tensor(c!)? zero_points=None) -> (Tensor, Tensor, Tensor)",
        &zerolib::quantize);
  m.def("dequantize(int kernels, Tensor data, Tensor scales, Tensor zero_points, int numel, int bits, "
        "int block_size, bool symmetric, Tensor(a!)? out=None) -> Tensor",
        &zerolib::dequantize);
  m.def("dequantize_reduce(int kernels, Tensor[] data, Tensor[] scales, Tensor[] zero_points, int numel, int bits, "
        "int block_size, bool symmetric, bool requantize, Tensor(a!)? out=None) -> (Tensor, Tensor, Tensor, Tensor)",
        &zerolib::dequantize_reduce);
  m.def("simd_path(int kernels) -> str", &zerolib::simd_path);
}
