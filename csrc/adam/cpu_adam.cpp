// Torch binding of CPU Adam: checks every tensor (naming it), computes each tensor's bias
// corrections, and hands all tensors to the SIMD kernel library in one call.
#include <cmath>
#include <vector>

#include "binding.h"

namespace zerolib {
namespace {

abi::AdamCoefficients make_coefficients(int64_t step, double lr, double beta1, double beta2, double eps,
                                        double weight_decay, bool adamw_mode, bool bias_correction) {
  const double bc1 = bias_correction ? 1.0 - std::pow(beta1, static_cast<double>(step)) : 1.0;
  const double bc2 = bias_correction ? 1.0 - std::pow(beta2, static_cast<double>(step)) : 1.0;
  return abi::AdamCoefficients{
      static_cast<float>(beta1), static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
      static_cast<float>(1.0 - beta2), static_cast<float>(eps),
      adamw_mode ? 0.f : static_cast<float>(weight_decay),
      adamw_mode ? static_cast<float>(1.0 - lr * weight_decay) : 1.f,
      static_cast<float>(-lr / bc1), static_cast<float>(1.0 / std::sqrt(bc2))};
}

void check_tensor(const at::Tensor& t, const char* what, size_t index, int64_t numel,
                  std::initializer_list<at::ScalarType> dtypes) {
  TORCH_CHECK(t.device().is_cpu(), "adam_step: ", what, "[", index, "] is on ", t.device(), ", expected cpu");
  TORCH_CHECK(t.is_contiguous(), "adam_step: ", what, "[", index, "] is not contiguous");
  TORCH_CHECK(t.numel() == numel, "adam_step: ", what, "[", index, "] has ", t.numel(),
              " elements but params[", index, "] has ", numel);
  bool ok = false;
  for (auto dtype : dtypes) ok = ok || t.scalar_type() == dtype;
  TORCH_CHECK(ok, "adam_step: ", what, "[", index, "] has dtype ", t.scalar_type(), ", which is not supported here");
}

void adam_step(int64_t kernels, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList param_copies, at::IntArrayRef steps, double lr,
               double beta1, double beta2, double eps, double weight_decay, bool adamw_mode, bool bias_correction) {
  const auto& table = kernel_table<abi::AdamKernelTable>(kernels, "adam_step");
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n,
              "adam_step: got ", n, " params, ", grads.size(), " grads, ", exp_avgs.size(), " exp_avgs, ",
              exp_avg_sqs.size(), " exp_avg_sqs; the lists must have equal lengths");
  TORCH_CHECK(param_copies.empty() || param_copies.size() == n, "adam_step: got ", param_copies.size(),
              " param_copies for ", n, " params (pass none or one per param)");
  TORCH_CHECK(steps.size() == 1 || steps.size() == n, "adam_step: got ", steps.size(), " steps for ", n,
              " params (pass one or one per param)");
  std::vector<abi::AdamTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    check_tensor(params[i], "params", i, numel, {at::kFloat});
    check_tensor(grads[i], "grads", i, numel, {at::kFloat, at::kBFloat16, at::kHalf});
    check_tensor(exp_avgs[i], "exp_avgs", i, numel, {at::kFloat, at::kBFloat16});
    check_tensor(exp_avg_sqs[i], "exp_avg_sqs", i, numel, {exp_avgs[i].scalar_type()});
    const bool has_copy = !param_copies.empty();
    if (has_copy) check_tensor(param_copies[i], "param_copies", i, numel, {at::kBFloat16, at::kHalf});
    const int64_t step = steps.size() == 1 ? steps[0] : steps[i];
    TORCH_CHECK(step >= 1, "adam_step: step for params[", i, "] is ", step, "; steps count from 1");
    tensors[i] = abi::AdamTensor{
        params[i].data_ptr<float>(), grads[i].const_data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr(),
        has_copy ? param_copies[i].data_ptr() : nullptr, numel, abi_dtype(grads[i]), abi_dtype(exp_avgs[i]),
        has_copy ? abi_dtype(param_copies[i]) : abi::kAbsent,
        make_coefficients(step, lr, beta1, beta2, eps, weight_decay, adamw_mode, bias_correction)};
  }
  table.step(tensors.data(), static_cast<int64_t>(n), at::get_num_threads());
}

std::string simd_path(int64_t kernels) { return kernel_table<abi::AdamKernelTable>(kernels, "simd_path").simd_path; }

}  // namespace
}  // namespace zerolib

ZEROLIB_LIBRARY(zerolib_cpu_adam, m) {
  m.def("adam_step(int kernels, Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] param_copies, int[] steps, float lr, float beta1, float beta2, "
        "float eps, float weight_decay, bool adamw_mode, bool bias_correction) -> ()",
        &zerolib::adam_step);
  m.def("simd_path(int kernels) -> str", &zerolib::simd_path);
}
