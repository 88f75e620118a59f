// Block-wise int8/int4 quantization on the CPU.
//
// Layout (docs/ops.md): numel elements form ceil(numel / block_size) blocks; the last is padded.
//   data:        uint8 [blocks * block_size * bits / 8]; int4 packs element 2k in the low nibble
//   scales:      fp32 [blocks]
//   zero_points: fp32 [blocks] for asymmetric (the block minimum), empty for symmetric
// Codes are unsigned: symmetric code = round(x / scale) + 2^(bits-1), so x ~ (code - 2^(bits-1)) * scale
// with scale = max|x| / (2^(bits-1) - 1); asymmetric code = round((x - min) / scale), so
// x ~ code * scale + min with scale = (max - min) / (2^bits - 1). Padding codes decode to 0 (symmetric).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "simd.h"

namespace zerolib {
namespace {

using simd::bf16;
using simd::fp16;

// Codes are produced and consumed in tiles of this many elements: a multiple of every vector
// width, small enough to live in registers/L1 between the quantize and pack steps.
constexpr int64_t kTile = 64;

struct Format {
  int64_t bits, block_size;
  bool symmetric;
  int64_t blocks(int64_t numel) const { return (numel + block_size - 1) / block_size; }
  int64_t data_bytes(int64_t numel) const { return blocks(numel) * block_size * bits / 8; }
  float offset() const { return symmetric ? static_cast<float>(1 << (bits - 1)) : 0.f; }
  float max_code() const { return static_cast<float>((1 << bits) - 1); }
};

void check_format(const Format& f) {
  TORCH_CHECK(f.bits == 8 || f.bits == 4, "quantize: bits must be 8 or 4, got ", f.bits);
  TORCH_CHECK(f.block_size >= 2 && f.block_size % 2 == 0, "quantize: block_size must be even and >= 2, got ",
              f.block_size);
}

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

template <class Body>
void for_each_block(int64_t blocks, Body body) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (blocks > 16)
  for (int64_t b = 0; b < blocks; ++b) body(b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& x, int64_t bits, int64_t block_size,
                                                        bool symmetric) {
  const Format f{bits, block_size, symmetric};
  check_format(f);
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "quantize: the input must be a contiguous CPU tensor");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "quantize: input dtype ", dtype, " is not supported (fp32, bf16, fp16)");
  const int64_t numel = x.numel(), blocks = f.blocks(numel);
  auto data = at::empty({f.data_bytes(numel)}, x.options().dtype(at::kByte));
  auto scales = at::empty({blocks}, x.options().dtype(at::kFloat));
  auto zero_points = at::empty({symmetric ? 0 : blocks}, x.options().dtype(at::kFloat));
  uint8_t* out = data.data_ptr<uint8_t>();
  float* scale = scales.data_ptr<float>();
  float* zero = zero_points.data_ptr<float>();
  for_each_block(blocks, [&](int64_t b) {
    const int64_t begin = b * block_size, valid = std::min(block_size, numel - begin);
    uint8_t* block_out = out + begin * bits / 8;
    float* block_zero = symmetric ? nullptr : zero + b;
    if (dtype == at::kFloat) quantize_block(x.const_data_ptr<float>() + begin, valid, block_out, f, scale + b, block_zero);
    if (dtype == at::kBFloat16) quantize_block(static_cast<const bf16*>(x.const_data_ptr()) + begin, valid, block_out, f, scale + b, block_zero);
    if (dtype == at::kHalf) quantize_block(static_cast<const fp16*>(x.const_data_ptr()) + begin, valid, block_out, f, scale + b, block_zero);
  });
  return {data, scales, zero_points};
}

void check_quantized(const at::Tensor& data, const at::Tensor& scales, const at::Tensor& zero_points, int64_t numel,
                     const Format& f, size_t index) {
  const int64_t blocks = f.blocks(numel);
  TORCH_CHECK(data.scalar_type() == at::kByte && data.is_contiguous() && data.numel() == f.data_bytes(numel),
              "dequantize: input ", index, ": data must be contiguous uint8 of ", f.data_bytes(numel),
              " bytes for numel=", numel, ", got ", data.scalar_type(), " of ", data.numel());
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == blocks,
              "dequantize: input ", index, ": scales must be contiguous fp32 of ", blocks, " blocks, got ",
              scales.numel());
  TORCH_CHECK(f.symmetric || (zero_points.scalar_type() == at::kFloat && zero_points.numel() == blocks &&
                              zero_points.is_contiguous()),
              "dequantize: input ", index, ": asymmetric zero_points must be contiguous fp32 of ", blocks, " blocks");
}

// Sums the dequantized inputs into fp32 (and optionally re-quantizes the sum block by block
// while it is still in cache, so the fp32 sum is never written to memory).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dequantize_reduce(
    at::TensorList data, at::TensorList scales, at::TensorList zero_points, int64_t numel, int64_t bits,
    int64_t block_size, bool symmetric, bool requantize) {
  const Format f{bits, block_size, symmetric};
  check_format(f);
  TORCH_CHECK(!data.empty() && scales.size() == data.size() && zero_points.size() == data.size(),
              "dequantize_reduce: needs one or more inputs with data, scales and zero_points each");
  for (size_t k = 0; k < data.size(); ++k) check_quantized(data[k], scales[k], zero_points[k], numel, f, k);
  const int64_t blocks = f.blocks(numel);
  auto options = data[0].options();
  auto sum = at::empty({requantize ? 0 : numel}, options.dtype(at::kFloat));
  auto out_data = at::empty({requantize ? f.data_bytes(numel) : 0}, options);
  auto out_scales = at::empty({requantize ? blocks : 0}, options.dtype(at::kFloat));
  auto out_zero = at::empty({requantize && !symmetric ? blocks : 0}, options.dtype(at::kFloat));
#pragma omp parallel num_threads(at::get_num_threads()) if (blocks > 16)
  {
    std::vector<float> block_sum(requantize ? block_size : 0);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * block_size, valid = std::min(block_size, numel - begin);
      float* acc = requantize ? block_sum.data() : sum.data_ptr<float>() + begin;
      for (size_t k = 0; k < data.size(); ++k) {
        const float zero = symmetric ? 0.f : zero_points[k].const_data_ptr<float>()[b];
        dequantize_block(data[k].const_data_ptr<uint8_t>() + begin * bits / 8, valid,
                         scales[k].const_data_ptr<float>()[b], zero, f, acc, k > 0);
      }
      if (requantize) {
        quantize_block(acc, valid, out_data.data_ptr<uint8_t>() + begin * bits / 8, f,
                       out_scales.data_ptr<float>() + b, symmetric ? nullptr : out_zero.data_ptr<float>() + b);
      }
    }
  }
  return {sum, out_data, out_scales, out_zero};
}

at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scales, const at::Tensor& zero_points, int64_t numel,
                      int64_t bits, int64_t block_size, bool symmetric) {
  return std::get<0>(dequantize_reduce({data}, {scales}, {zero_points}, numel, bits, block_size, symmetric, false));
}

std::string simd_path() { return simd::Native::kName; }

}  // namespace
}  // namespace zerolib

ZEROLIB_LIBRARY(m) {
  m.def("quantize(Tensor x, int bits, int block_size, bool symmetric) -> (Tensor, Tensor, Tensor)",
        &zerolib::quantize);
  m.def("dequantize(Tensor data, Tensor scales, Tensor zero_points, int numel, int bits, int block_size, "
        "bool symmetric) -> Tensor",
        &zerolib::dequantize);
  m.def("dequantize_reduce(Tensor[] data, Tensor[] scales, Tensor[] zero_points, int numel, int bits, "
        "int block_size, bool symmetric, bool requantize) -> (Tensor, Tensor, Tensor, Tensor)",
        &zerolib::dequantize_reduce);
  m.def("simd_path() -> str", &zerolib::simd_path);
}
