// Torch binding of the CUDA quantizer: the CPU binding's op names and arguments, minus the
// kernel table (quantize.cpp). Re-quantizing a sum stores the fp32 sum first (two launches).
#include <c10/cuda/CUDAStream.h>

#include "quantize_checks.h"
#include "quantize_cuda.h"

namespace zerolib {
namespace {

void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(status));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& x, int64_t bits, int64_t block_size,
                                                        bool symmetric, const std::optional<at::Tensor>& data_out,
                                                        const std::optional<at::Tensor>& scales_out,
                                                        const std::optional<at::Tensor>& zero_points_out) {
  const abi::QuantFormat format = checked_format(bits, block_size, symmetric);
  TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "quantize: the input must be a contiguous CUDA tensor");
  TORCH_CHECK(abi_dtype(x) != abi::kAbsent, "quantize: input dtype ", x.scalar_type(),
              " is not supported (fp32, bf16, fp16)");
  auto [data, scales, zero_points] =
      quantize_outputs(x.numel(), format, x.options(), data_out, scales_out, zero_points_out);
  check_launch(cuda::launch_quantize(x.const_data_ptr(), abi_dtype(x), x.numel(), format,
                                     buffers(data, scales, zero_points, symmetric),
                                     c10::cuda::getCurrentCUDAStream(x.device().index())),
               "quantize");
  if (data_out.has_value()) {
    auto none = at::empty({0}, x.options().dtype(at::kFloat));
    return {none.to(at::kByte), none, none};
  }
  return {data, scales, zero_points};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dequantize_reduce(
    at::TensorList data, at::TensorList scales, at::TensorList zero_points, int64_t numel, int64_t bits,
    int64_t block_size, bool symmetric, bool requantize, const std::optional<at::Tensor>& out) {
  const abi::QuantFormat format = checked_format(bits, block_size, symmetric);
  std::vector<abi::QuantBuffers> inputs = checked_inputs(data, scales, zero_points, numel, format);
  TORCH_CHECK(data[0].is_cuda(), "dequantize_reduce: inputs must be CUDA tensors");
  TORCH_CHECK(!(out.has_value() && requantize), "dequantize_reduce: out= and requantize=True exclude each other");
  if (out.has_value()) check_out(*out, numel);
  auto sum = out.has_value() ? *out : at::empty({numel}, data[0].options().dtype(at::kFloat));
  const auto stream = c10::cuda::getCurrentCUDAStream(data[0].device().index());
  check_launch(cuda::launch_dequantize_reduce(inputs.data(), static_cast<int64_t>(inputs.size()), numel, format,
                                              sum.data_ptr<float>(), stream),
               "dequantize_reduce");
  if (!requantize) {
    auto none = at::empty({0}, data[0].options());
    return {out.has_value() ? none.to(at::kFloat) : sum, none, none.to(at::kFloat), none.to(at::kFloat)};
  }
  auto [out_data, out_scales, out_zero] = quantize(sum, bits, block_size, symmetric, {}, {}, {});
  return {at::empty({0}, sum.options()), out_data, out_scales, out_zero};
}

at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scales, const at::Tensor& zero_points, int64_t numel,
                      int64_t bits, int64_t block_size, bool symmetric, const std::optional<at::Tensor>& out) {
  return std::get<0>(
      dequantize_reduce({data}, {scales}, {zero_points}, numel, bits, block_size, symmetric, false, out));
}

}  // namespace
}  // namespace zerolib

ZEROLIB_LIBRARY(zerolib_quantizer_cuda, m) {
  m.def("quantize(Tensor x, int bits, int block_size, bool symmetric, Tensor(a!)? data=None, "
        "Tensor(b!)? scales=None, Tensor(c!)? zero_points=None) -> (Tensor, Tensor, Tensor)",
        &zerolib::quantize);
  m.def("dequantize(Tensor data, Tensor scales, Tensor zero_points, int numel, int bits, int block_size, "
        "bool symmetric, Tensor(a!)? out=None) -> Tensor",
        &zerolib::dequantize);
  m.def("dequantize_reduce(Tensor[] data, Tensor[] scales, Tensor[] zero_points, int numel, int bits, "
        "int block_size, bool symmetric, bool requantize, Tensor(a!)? out=None) -> (Tensor, Tensor, Tensor, Tensor)",
        &zerolib::dequantize_reduce);
}
