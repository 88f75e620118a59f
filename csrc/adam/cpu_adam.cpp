// Adam / AdamW for the CPU: one call steps any number of flat tensors.
//
// Per element, in fp32 whatever the storage types:
//   g = grad (+ weight_decay * p when L2 mode)
//   m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
//   p = p * (1 - lr * weight_decay when AdamW mode) - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// which is torch.optim.Adam/AdamW's order of operations. Grads may be fp32, bf16 or fp16; m and v
// may be stored in bf16; a bf16 or fp16 copy of the new parameter may be written in the same pass.
// Work is split into equal chunks over all tensors and spread over OpenMP threads (as many as
// torch.get_num_threads()); each chunk runs the SIMD path this extension was compiled for.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "simd.h"

namespace zerolib {
namespace {

using simd::bf16;
using simd::fp16;

struct AdamCoefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float l2_decay;          // added to the gradient (Adam mode), else 0
  float param_scale;       // 1 - lr * weight_decay in AdamW mode, else 1
  float neg_step_size;     // -lr / bias_correction1
  float inv_sqrt_bc2;      // 1 / sqrt(bias_correction2)
};

AdamCoefficients make_coefficients(int64_t step, double lr, double beta1, double beta2, double eps,
                                   double weight_decay, bool adamw_mode, bool bias_correction) {
  const double bc1 = bias_correction ? 1.0 - std::pow(beta1, static_cast<double>(step)) : 1.0;
  const double bc2 = bias_correction ? 1.0 - std::pow(beta2, static_cast<double>(step)) : 1.0;
  return AdamCoefficients{
      static_cast<float>(beta1), static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
      static_cast<float>(1.0 - beta2), static_cast<float>(eps),
      adamw_mode ? 0.f : static_cast<float>(weight_decay),
      adamw_mode ? static_cast<float>(1.0 - lr * weight_decay) : 1.f,
      static_cast<float>(-lr / bc1), static_cast<float>(1.0 / std::sqrt(bc2))};
}

// Steps elements [begin, end) with vector type V (the caller hands V = Scalar the tail).
template <class V, class G, class M, class C>
inline int64_t adam_range(float* p, const G* g, M* m, M* v, C* copy, int64_t begin, int64_t end,
                          const AdamCoefficients& k) {
  const auto beta1 = V::set1(k.beta1), one_minus_beta1 = V::set1(k.one_minus_beta1);
  const auto beta2 = V::set1(k.beta2), one_minus_beta2 = V::set1(k.one_minus_beta2);
  const auto eps = V::set1(k.eps), l2_decay = V::set1(k.l2_decay), param_scale = V::set1(k.param_scale);
  const auto neg_step_size = V::set1(k.neg_step_size), inv_sqrt_bc2 = V::set1(k.inv_sqrt_bc2);
  int64_t i = begin;
  for (; i + V::kWidth <= end; i += V::kWidth) {
    auto param = V::load(p + i);
    auto grad = V::load(g + i);
    if (k.l2_decay != 0.f) grad = V::fmadd(param, l2_decay, grad);
    auto exp_avg = V::fmadd(beta1, V::load(m + i), V::mul(one_minus_beta1, grad));
    auto exp_avg_sq = V::fmadd(beta2, V::load(v + i), V::mul(V::mul(one_minus_beta2, grad), grad));
    V::store(m + i, exp_avg);
    V::store(v + i, exp_avg_sq);
    auto denom = V::fmadd(V::sqrt(exp_avg_sq), inv_sqrt_bc2, eps);
    param = V::fmadd(neg_step_size, V::div(exp_avg, denom), V::mul(param, param_scale));
    V::store(p + i, param);
    if constexpr (!std::is_same_v<C, void>) V::store(copy + i, param);
  }
  return i;
}

template <class G, class M, class C>
void adam_chunk(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                const at::Tensor* copy, int64_t begin, int64_t end, const AdamCoefficients& k) {
  auto* pp = p.data_ptr<float>();
  auto* gp = static_cast<const G*>(g.const_data_ptr());
  auto* mp = static_cast<M*>(m.data_ptr());
  auto* vp = static_cast<M*>(v.data_ptr());
  C* cp = nullptr;
  if constexpr (!std::is_same_v<C, void>) cp = static_cast<C*>(copy->data_ptr());
  const int64_t tail = adam_range<simd::Native, G, M, C>(pp, gp, mp, vp, cp, begin, end, k);
  adam_range<simd::Scalar, G, M, C>(pp, gp, mp, vp, cp, tail, end, k);
}

using ChunkFn = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor*, int64_t, int64_t, const AdamCoefficients&);

template <class G, class M>
ChunkFn pick_copy(const at::Tensor* copy) {
  if (copy == nullptr) return adam_chunk<G, M, void>;
  return copy->scalar_type() == at::kBFloat16 ? adam_chunk<G, M, bf16> : adam_chunk<G, M, fp16>;
}

template <class G>
ChunkFn pick_moment(at::ScalarType moment, const at::Tensor* copy) {
  return moment == at::kFloat ? pick_copy<G, float>(copy) : pick_copy<G, bf16>(copy);
}

ChunkFn pick_kernel(at::ScalarType grad, at::ScalarType moment, const at::Tensor* copy) {
  if (grad == at::kFloat) return pick_moment<float>(moment, copy);
  if (grad == at::kBFloat16) return pick_moment<bf16>(moment, copy);
  return pick_moment<fp16>(moment, copy);
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

struct Chunk {
  size_t tensor;
  int64_t begin, end;
};

// 64K elements: big enough that per-chunk overhead vanishes, small enough to balance two threads
// over a handful of tensors. A multiple of every vector width, so only a tensor's last chunk has a tail.
constexpr int64_t kChunkElements = 1 << 16;

void adam_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
               at::TensorList param_copies, at::IntArrayRef steps, double lr, double beta1, double beta2,
               double eps, double weight_decay, bool adamw_mode, bool bias_correction) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n,
              "adam_step: got ", n, " params, ", grads.size(), " grads, ", exp_avgs.size(), " exp_avgs, ",
              exp_avg_sqs.size(), " exp_avg_sqs; the lists must have equal lengths");
  TORCH_CHECK(param_copies.empty() || param_copies.size() == n, "adam_step: got ", param_copies.size(),
              " param_copies for ", n, " params (pass none or one per param)");
  TORCH_CHECK(steps.size() == 1 || steps.size() == n, "adam_step: got ", steps.size(), " steps for ", n,
              " params (pass one or one per param)");
  std::vector<ChunkFn> kernels(n);
  std::vector<AdamCoefficients> coefficients(n);
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    check_tensor(params[i], "params", i, numel, {at::kFloat});
    check_tensor(grads[i], "grads", i, numel, {at::kFloat, at::kBFloat16, at::kHalf});
    check_tensor(exp_avgs[i], "exp_avgs", i, numel, {at::kFloat, at::kBFloat16});
    check_tensor(exp_avg_sqs[i], "exp_avg_sqs", i, numel, {exp_avgs[i].scalar_type()});
    const at::Tensor* copy = param_copies.empty() ? nullptr : &param_copies[i];
    if (copy != nullptr) check_tensor(*copy, "param_copies", i, numel, {at::kBFloat16, at::kHalf});
    const int64_t step = steps.size() == 1 ? steps[0] : steps[i];
    TORCH_CHECK(step >= 1, "adam_step: step for params[", i, "] is ", step, "; steps count from 1");
    kernels[i] = pick_kernel(grads[i].scalar_type(), exp_avgs[i].scalar_type(), copy);
    coefficients[i] = make_coefficients(step, lr, beta1, beta2, eps, weight_decay, adamw_mode, bias_correction);
    for (int64_t begin = 0; begin < numel; begin += kChunkElements)
      chunks.push_back({i, begin, std::min(numel, begin + kChunkElements)});
  }
  const int64_t count = static_cast<int64_t>(chunks.size());
  // Static schedule: each thread streams one contiguous run of chunks.
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (count > 1)
  for (int64_t c = 0; c < count; ++c) {
    const Chunk& chunk = chunks[c];
    const size_t i = chunk.tensor;
    const at::Tensor* copy = param_copies.empty() ? nullptr : &param_copies[i];
    kernels[i](params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], copy, chunk.begin, chunk.end, coefficients[i]);
  }
}

std::string simd_path() { return simd::Native::kName; }

}  // namespace
}  // namespace zerolib

ZEROLIB_LIBRARY(m) {
  m.def("adam_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] param_copies, int[] steps, float lr, float beta1, float beta2, float eps, "
        "float weight_decay, bool adamw_mode, bool bias_correction) -> ()",
        &zerolib::adam_step);
  m.def("simd_path() -> str", &zerolib::simd_path);
}
