// Block-wise int8/int4 quantization kernels for one SIMD path (plain C++, no torch headers).
//
// Layout (docs/ops.md): numel elements form ceil(numel / block_size) blocks; the last is padded.
//   data:        uint8 [blocks * block_size * bits / 8]; int4 packs element 2k in the low nibble
//   scales:      fp32 [blocks]
//   zero_points: fp32 [blocks] for asymmetric (the block minimum), none for symmetric
// Codes are unsigned: symmetric code = round(x / scale) + 2^(bits-1), so x ~ (code - 2^(bits-1)) * scale
// with scale = max|x| / (2^(bits-1) - 1); asymmetric code = round((x - min) / scale), so
// x ~ code * scale + min with scale = (max - min) / (2^bits - 1). Padding codes decode to 0 (symmetric).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernel_abi.h"
#include "simd.h"

namespace zerolib {
namespace {

using simd::bf16;
using simd::fp16;

// Codes are produced and consumed in tiles of this many elements: a multiple of every vector
// width, small enough to live in registers/L1 between the quantize and pack steps.
constexpr int64_t kTile = 64;

// The binding has checked: bits is 8 or 4, block_size is even and >= 2.
struct Format {
  int64_t bits, block_size;
  bool symmetric;
  explicit Format(abi::QuantFormat f) : bits(f.bits), block_size(f.block_size), symmetric(f.symmetric != 0) {}
  int64_t blocks(int64_t numel) const { return (numel + block_size - 1) / block_size; }
  float offset() const { return symmetric ? static_cast<float>(1 << (bits - 1)) : 0.f; }
  float max_code() const { return static_cast<float>((1 << bits) - 1); }
};

struct BlockParams {
  float scale, inv_scale, zero_point;
};

template <class T>
BlockParams block_params(const T* x, int64_t n, const Format& f) {
  using V = simd::Native;
  using S = simd::Scalar;
  auto vmax = V::set1(-INFINITY), vmin = V::set1(INFINITY);
  float smax = -INFINITY, smin = INFINITY;
  int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    auto value = V::load(x + i);
    if (f.symmetric) value = V::abs(value);
    vmax = V::max(vmax, value);
    vmin = V::min(vmin, value);
  }
  for (; i < n; ++i) {
    float value = S::load(x + i);
    if (f.symmetric) value = std::fabs(value);
    smax = std::max(smax, value);
    smin = std::min(smin, value);
  }
  const float hi = std::max(smax, V::reduce_max(vmax)), lo = std::min(smin, V::reduce_min(vmin));
  const float levels = f.symmetric ? static_cast<float>((1 << (f.bits - 1)) - 1) : f.max_code();
  const float range = f.symmetric ? hi : hi - lo;
  const float scale = range / levels;
  return {scale, scale > 0.f ? 1.f / scale : 0.f, f.symmetric ? 0.f : lo};
}

// Codes for x[0, n) into tile[0, n) with vector type V; returns how many were done.
template <class V, class T>
int64_t quantize_span(const T* x, int64_t n, uint8_t* tile, const BlockParams& p, const Format& f) {
  const auto inv = V::set1(p.inv_scale), zero = V::set1(p.zero_point), offset = V::set1(f.offset());
  const auto lo = V::set1(0.f), hi = V::set1(f.max_code());
  int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    auto code = V::add(V::round(V::mul(V::sub(V::load(x + i), zero), inv)), offset);
    V::store_codes(tile + i, V::min(V::max(code, lo), hi));
  }
  return i;
}

template <class T>
void quantize_block(const T* x, int64_t valid, uint8_t* out, const Format& f, float* scale, float* zero_point) {
  const BlockParams p = block_params(x, valid, f);
  *scale = p.scale;
  if (!f.symmetric) *zero_point = p.zero_point;
  const uint8_t pad = static_cast<uint8_t>(f.offset());
  uint8_t tile[kTile];
  for (int64_t t = 0; t < f.block_size; t += kTile) {
    const int64_t len = std::min(kTile, f.block_size - t);
    const int64_t n = std::clamp<int64_t>(valid - t, 0, len);
    int64_t done = quantize_span<simd::Native>(x + t, n, tile, p, f);
    done += quantize_span<simd::Scalar>(x + t + done, n - done, tile + done, p, f);
    std::fill(tile + n, tile + len, pad);
    if (f.bits == 8) {
      std::copy(tile, tile + len, out + t);
    } else {
      for (int64_t k = 0; k < len / 2; ++k) out[t / 2 + k] = tile[2 * k] | (tile[2 * k + 1] << 4);
    }
  }
}

template <class V>
int64_t decode_span(const uint8_t* codes, int64_t n, float* out, float scale, float bias, bool accumulate) {
  const auto vscale = V::set1(scale), vbias = V::set1(bias);
  int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    auto value = V::fmadd(V::load_codes(codes + i), vscale, vbias);
    V::store(out + i, accumulate ? V::add(V::load(out + i), value) : value);
  }
  return i;
}

// Writes (or adds, when accumulating) the block's first `valid` values into out.
void dequantize_block(const uint8_t* data, int64_t valid, float scale, float zero_point, const Format& f, float* out,
                      bool accumulate) {
  // Symmetric: (code - offset) * scale == code * scale - offset * scale; offset * scale is exact
  // enough (one rounding) and lets both formats share one fused multiply-add.
  const float bias = f.symmetric ? -f.offset() * scale : zero_point;
  uint8_t tile[kTile];
  for (int64_t t = 0; t < valid; t += kTile) {
    const int64_t n = std::min(kTile, valid - t);
    const uint8_t* codes = data + t;
    if (f.bits == 4) {
      for (int64_t k = 0; k < (n + 1) / 2; ++k) {
        tile[2 * k] = data[t / 2 + k] & 0x0f;
        tile[2 * k + 1] = data[t / 2 + k] >> 4;
      }
      codes = tile;
    }
    const int64_t done = decode_span<simd::Native>(codes, n, out + t, scale, bias, accumulate);
    decode_span<simd::Scalar>(codes + done, n - done, out + t + done, scale, bias, accumulate);
  }
}

template <class T>
void quantize_blocks(const T* x, int64_t numel, const Format& f, abi::QuantBuffers out, int32_t num_threads) {
  const int64_t blocks = f.blocks(numel);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (blocks > 16)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * f.block_size, valid = std::min(f.block_size, numel - begin);
    quantize_block(x + begin, valid, out.data + begin * f.bits / 8, f, out.scales + b,
                   f.symmetric ? nullptr : out.zero_points + b);
  }
}

void quantize(const void* x, abi::Dtype dtype, int64_t numel, abi::QuantFormat format, abi::QuantBuffers out,
              int32_t num_threads) {
  const Format f(format);
  if (dtype == abi::kFloat32) quantize_blocks(static_cast<const float*>(x), numel, f, out, num_threads);
  if (dtype == abi::kBFloat16) quantize_blocks(static_cast<const bf16*>(x), numel, f, out, num_threads);
  if (dtype == abi::kFloat16) quantize_blocks(static_cast<const fp16*>(x), numel, f, out, num_threads);
}

// Sums the inputs block by block; when re-quantizing, each block's sum stays in a per-thread
// buffer (in cache) and is quantized there, so the fp32 sum is never written to memory.
void dequantize_reduce(const abi::QuantBuffers* inputs, int64_t count, int64_t numel, abi::QuantFormat format,
                       float* sum, abi::QuantBuffers requantized, int32_t num_threads) {
  const Format f(format);
  const int64_t blocks = f.blocks(numel);
  const bool requantize = sum == nullptr;
#pragma omp parallel num_threads(num_threads) if (blocks > 16)
  {
    std::vector<float> block_sum(requantize ? f.block_size : 0);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * f.block_size, valid = std::min(f.block_size, numel - begin);
      float* acc = requantize ? block_sum.data() : sum + begin;
      for (int64_t k = 0; k < count; ++k) {
        const float zero = f.symmetric ? 0.f : inputs[k].zero_points[b];
        dequantize_block(inputs[k].data + begin * f.bits / 8, valid, inputs[k].scales[b], zero, f, acc, k > 0);
      }
      if (requantize) {
        quantize_block(acc, valid, requantized.data + begin * f.bits / 8, f, requantized.scales + b,
                       f.symmetric ? nullptr : requantized.zero_points + b);
      }
    }
  }
}

constexpr abi::QuantKernelTable kTable{quantize, dequantize_reduce, simd::Native::kName};

}  // namespace
}  // namespace zerolib

ZEROLIB_EXPORT const zerolib::abi::QuantKernelTable* zerolib_quantizer_kernel_table() { return &zerolib::kTable; }
