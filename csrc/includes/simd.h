// One vector interface over three instruction sets, so each kernel is written once.
//
// The build passes -mavx512f... or -mavx2 -mfma -mf16c or nothing; the macros below pick the
// matching `Native` struct. `Scalar` always exists: kernels use it for the tail of every range
// (sizes need not be a multiple of the vector width) and as the whole path in scalar builds.
// Every struct has the same static functions over its register type `Reg`.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace zerolib::simd {

using bf16 = c10::BFloat16;
using fp16 = c10::Half;

struct Scalar {
  using Reg = float;
  static constexpr int kWidth = 1;
  static constexpr const char* kName = "scalar";

  static Reg set1(float x) { return x; }
  static Reg load(const float* p) { return *p; }
  static Reg load(const bf16* p) { return static_cast<float>(*p); }
  static Reg load(const fp16* p) { return static_cast<float>(*p); }
  static void store(float* p, Reg x) { *p = x; }
  // c10's conversions round to nearest even and keep NaN, like torch's .to(dtype).
  static void store(bf16* p, Reg x) { *p = bf16(x); }
  static void store(fp16* p, Reg x) { *p = fp16(x); }
  static Reg add(Reg a, Reg b) { return a + b; }
  static Reg sub(Reg a, Reg b) { return a - b; }
  static Reg mul(Reg a, Reg b) { return a * b; }
  static Reg div(Reg a, Reg b) { return a / b; }
  static Reg fmadd(Reg a, Reg b, Reg c) { return std::fma(a, b, c); }
  static Reg sqrt(Reg a) { return std::sqrt(a); }
  static Reg max(Reg a, Reg b) { return a > b ? a : b; }
  static Reg min(Reg a, Reg b) { return a < b ? a : b; }
  static Reg abs(Reg a) { return std::fabs(a); }
  static Reg round(Reg a) { return std::nearbyint(a); }  // default mode: half to even
  static float reduce_max(Reg a) { return a; }
  static float reduce_min(Reg a) { return a; }
  // `codes` holds whole numbers in [0, 255].
  static void store_codes(uint8_t* p, Reg codes) { *p = static_cast<uint8_t>(static_cast<int>(codes)); }
  static Reg load_codes(const uint8_t* p) { return static_cast<float>(*p); }
};

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
struct Avx512 {
  using Reg = __m512;
  static constexpr int kWidth = 16;
  static constexpr const char* kName = "avx512";
  static constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

  static Reg set1(float x) { return _mm512_set1_ps(x); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(const bf16* p) {
    // bf16 is the top half of an fp32: widen the 16-bit words and shift them up.
    __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
  }
  static Reg load(const fp16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void store(float* p, Reg x) { _mm512_storeu_ps(p, x); }
  static void store(bf16* p, Reg x) {
    // Round to nearest even on the bits (add 0x7fff plus the kept lowest bit), NaN stays NaN.
    __m512i bits = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
  }
  static void store(fp16* p, Reg x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x, kRound)); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg sqrt(Reg a) { return _mm512_sqrt_ps(a); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg abs(Reg a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff))); }
  static Reg round(Reg a) { return _mm512_roundscale_ps(a, kRound); }
  static float reduce_max(Reg a) { return _mm512_reduce_max_ps(a); }
  static float reduce_min(Reg a) { return _mm512_reduce_min_ps(a); }
  static void store_codes(uint8_t* p, Reg codes) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(codes)));
  }
  static Reg load_codes(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};
using Native = Avx512;

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
struct Avx2 {
  using Reg = __m256;
  static constexpr int kWidth = 8;
  static constexpr const char* kName = "avx2";
  static constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

  static Reg set1(float x) { return _mm256_set1_ps(x); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const bf16* p) {
    __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(words, 16));
  }
  static Reg load(const fp16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void store(float* p, Reg x) { _mm256_storeu_ps(p, x); }
  static void store(bf16* p, Reg x) {
    __m256i bits = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    rounded = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                                                   _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), nan));
    __m256i words = _mm256_srli_epi32(rounded, 16);  // each 32-bit lane now holds a value < 2^16
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  static void store(fp16* p, Reg x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, kRound)); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg sqrt(Reg a) { return _mm256_sqrt_ps(a); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg abs(Reg a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
  static Reg round(Reg a) { return _mm256_round_ps(a, kRound); }
  static float reduce_max(Reg a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static float reduce_min(Reg a) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_movehdup_ps(m)));
  }
  static void store_codes(uint8_t* p, Reg codes) {
    __m256i ints = _mm256_cvtps_epi32(codes);
    __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(ints), _mm256_extracti128_si256(ints, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(words, words));
  }
  static Reg load_codes(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};
using Native = Avx2;

#else
using Native = Scalar;
#endif

}  // namespace zerolib::simd
