// Adam / AdamW kernels for one SIMD path (the build picks it with -m flags; see simd.h).
//
// Per element, in fp32 whatever the storage types:
//   g = grad (+ l2_decay * p in Adam mode)
//   m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
//   p = p * param_scale - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// which is torch.optim.Adam/AdamW's order of operations. Grads may be fp32, bf16 or fp16; m and v
// may be stored in bf16 (the update uses the unrounded fp32 values); a bf16 or fp16 copy of the
// new parameter may be written in the same pass. All tensors of a call are cut into equal chunks
// and spread over OpenMP threads.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernel_abi.h"
#include "simd.h"

namespace zerolib {
namespace {

using abi::AdamCoefficients;
using simd::bf16;
using simd::fp16;

// Steps elements [begin, end) with vector type V; returns where it stopped (the tail for Scalar).
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
void adam_chunk(const abi::AdamTensor& t, int64_t begin, int64_t end) {
  auto* g = static_cast<const G*>(t.grad);
  auto* m = static_cast<M*>(t.exp_avg);
  auto* v = static_cast<M*>(t.exp_avg_sq);
  auto* copy = static_cast<C*>(t.param_copy);
  const int64_t tail = adam_range<simd::Native, G, M, C>(t.param, g, m, v, copy, begin, end, t.k);
  adam_range<simd::Scalar, G, M, C>(t.param, g, m, v, copy, tail, end, t.k);
}

using ChunkFn = void (*)(const abi::AdamTensor&, int64_t, int64_t);

template <class G, class M>
ChunkFn pick_copy(abi::Dtype copy) {
  if (copy == abi::kAbsent) return adam_chunk<G, M, void>;
  return copy == abi::kBFloat16 ? adam_chunk<G, M, bf16> : adam_chunk<G, M, fp16>;
}

template <class G>
ChunkFn pick_moment(abi::Dtype moment, abi::Dtype copy) {
  return moment == abi::kFloat32 ? pick_copy<G, float>(copy) : pick_copy<G, bf16>(copy);
}

// The binding has checked the dtypes: grads fp32/bf16/fp16, moments fp32/bf16, copies bf16/fp16.
ChunkFn pick_kernel(const abi::AdamTensor& t) {
  if (t.grad_dtype == abi::kFloat32) return pick_moment<float>(t.moment_dtype, t.copy_dtype);
  if (t.grad_dtype == abi::kBFloat16) return pick_moment<bf16>(t.moment_dtype, t.copy_dtype);
  return pick_moment<fp16>(t.moment_dtype, t.copy_dtype);
}

struct Chunk {
  int64_t tensor, begin, end;
  ChunkFn kernel;
};

// 64K elements: big enough that per-chunk overhead vanishes, small enough to balance threads
// over a few tensors. A multiple of every vector width, so only a tensor's last chunk has a tail.
constexpr int64_t kChunkElements = 1 << 16;

void adam_step(const abi::AdamTensor* tensors, int64_t count, int32_t num_threads) {
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < count; ++i) {
    const ChunkFn kernel = pick_kernel(tensors[i]);
    for (int64_t begin = 0; begin < tensors[i].numel; begin += kChunkElements)
      chunks.push_back({i, begin, std::min(tensors[i].numel, begin + kChunkElements), kernel});
  }
  const int64_t total = static_cast<int64_t>(chunks.size());
  // Static schedule: each thread streams one contiguous run of chunks.
#pragma omp parallel for schedule(static) num_threads(num_threads) if (total > 1)
  for (int64_t c = 0; c < total; ++c) chunks[c].kernel(tensors[chunks[c].tensor], chunks[c].begin, chunks[c].end);
}

constexpr abi::AdamKernelTable kTable{adam_step, simd::Native::kName};

}  // namespace
}  // namespace zerolib

ZEROLIB_EXPORT const zerolib::abi::AdamKernelTable* zerolib_cpu_adam_kernel_table() { return &zerolib::kTable; }
