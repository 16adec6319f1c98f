// The 256-bit x86 kernels, written once and compiled once per instruction set.
//
// A translation unit defines, before including this file:
//   DL_TARGET       the GCC/Clang target string of the instruction set
//   DL_VNNI         1 to use AVX-VNNI vpdpbusd (u8 x s8 -> s32) for int8 dot products
//   DL_TABLE_FN     the name of the function that returns the kernel table
//   DL_OWN_TABLE    (optional) take only the helpers and activation kernels;
//                   the includer defines its own GEMMs and table (lowbit_avx512.cpp)
// Every function carries the target attribute and lives in an anonymous
// namespace, so nothing compiled for a wider instruction set can be linked into
// a path that a narrower CPU runs.
//
// The int8 products use the maddubs idea (as in bitnet.cpp's I2_S kernels):
// weights become unsigned bytes (ternary code w+1 in {0,1,2}, binary bit in
// {0,1}) multiplied with signed int8 activations, and the activation row sum
// removes the offset at the end: sum w*x = sum code*x - sum x for ternary,
// 2 * sum bit*x - sum x for binary.
#include <immintrin.h>
#include <string.h>

#include "lowbit.h"
#include "lowbit_dw.h"

#define TGT __attribute__((target(DL_TARGET)))
#define ALWAYS_INLINE __attribute__((always_inline)) inline

namespace {

TGT ALWAYS_INLINE __m256i load32(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }

// Four activation bytes broadcast to every 32-bit lane.
TGT ALWAYS_INLINE __m256i bcast4(const int8_t* p) { return _mm256_set1_epi32((int)dl_load_u32(p)); }

// acc += sum over four (u, x) pairs of u8*s8 products, per 32-bit lane.
// Without VNNI the four maddubs results are added in int16 first: each is at
// most 2*2*127 = 508 in magnitude, so the sum (<= 2032) cannot saturate.
TGT ALWAYS_INLINE __m256i dot4(__m256i acc, __m256i u0, __m256i x0, __m256i u1, __m256i x1, __m256i u2,
                               __m256i x2, __m256i u3, __m256i x3) {
#if DL_VNNI
  acc = _mm256_dpbusd_avx_epi32(acc, u0, x0);
  acc = _mm256_dpbusd_avx_epi32(acc, u1, x1);
  acc = _mm256_dpbusd_avx_epi32(acc, u2, x2);
  return _mm256_dpbusd_avx_epi32(acc, u3, x3);
#else
  const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(u0, x0), _mm256_maddubs_epi16(u1, x1));
  const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(u2, x2), _mm256_maddubs_epi16(u3, x3));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_add_epi16(s01, s23), _mm256_set1_epi16(1)));
#endif
}

// Number of set bits of each byte.
TGT ALWAYS_INLINE __m256i popcount_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                       2, 2, 3, 2, 3, 3, 4);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, nib));
  const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
  return _mm256_add_epi8(lo, hi);
}

// ---------------------------------------------------------------- activations

TGT float row_absmax(const float* x, int64_t K) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(absmask, _mm256_loadu_ps(x + k)));
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float amax = 0.0f;
  for (int i = 0; i < 8; ++i) amax = lanes[i] > amax ? lanes[i] : amax;
  for (; k < K; ++k) {
    const float a = __builtin_fabsf(x[k]);
    amax = a > amax ? a : amax;
  }
  return amax;
}

#ifndef DL_OWN_TABLE  // lowbit_avx512.cpp has its own (quantize_row_z)
TGT void quantize_row(const float* x, int64_t K, int64_t Kp, int8_t* q, float* scale, int32_t* sum) {
  const float amax = row_absmax(x, K);
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i vsum = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    // cvtps rounds with the MXCSR mode: to nearest, ties to even, as torch.round.
    const __m256i r0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
    const __m256i r1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vinv));
    const __m256i r2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 16), vinv));
    const __m256i r3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 24), vinv));
    vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(_mm256_add_epi32(r0, r1), _mm256_add_epi32(r2, r3)));
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
    _mm256_storeu_si256((__m256i*)(q + k), _mm256_permutevar8x32_epi32(b, order));
  }
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(vsum), _mm256_extracti128_si256(vsum, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
  int32_t s = _mm_cvtsi128_si32(s4);
  for (; k < K; ++k) {
    q[k] = dl_quantize_one(x[k], inv);
    s += q[k];
  }
  memset(q + K, 0, (size_t)(Kp - K));
  *scale = amax / 127.0f;
  *sum = s;
}
#endif

// Rearranges a 32-bit sign mask (bit i <- x[i]) into the tile order (bit 8j+s <- x[4s+j]).
TGT ALWAYS_INLINE uint32_t tile_order(uint32_t mask) {
  return _pext_u32(mask, 0x11111111u) | (_pext_u32(mask, 0x22222222u) << 8) |
         (_pext_u32(mask, 0x44444444u) << 16) | (_pext_u32(mask, 0x88888888u) << 24);
}

// binarize_row with beta's sum in doubles (dl_abs_rounded): rows the integer path cannot take.
TGT void binarize_row_double(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 zero = _mm256_setzero_ps();
  const double c = dl_abs_sum_magic(row_absmax(x, K));
  const __m256d vc = _mm256_set1_pd(c);
  __m256d vabs = _mm256_setzero_pd();
  const int64_t full = K / DL_BK;
  for (int64_t kb = 0; kb < full; ++kb) {
    uint32_t mask = 0;
    for (int i = 0; i < 4; ++i) {
      const __m256 v = _mm256_loadu_ps(x + kb * DL_BK + 8 * i);
      const __m256 a = _mm256_and_ps(absmask, v);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
      vabs = _mm256_add_pd(vabs, _mm256_sub_pd(_mm256_add_pd(lo, vc), vc));
      vabs = _mm256_add_pd(vabs, _mm256_sub_pd(_mm256_add_pd(hi, vc), vc));
      mask |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ)) << (8 * i);
    }
    const uint32_t word = tile_order(mask);
    memcpy(bits + 4 * kb, &word, 4);
  }
  double lanes[4];
  _mm256_storeu_pd(lanes, vabs);
  double total = 0.0;
  for (int i = 0; i < 4; ++i) total += lanes[i];
  for (int64_t k = full * DL_BK; k < K; ++k) total += dl_abs_rounded(__builtin_fabsf(x[k]), c);
  for (int64_t kb = full; kb < Kp / DL_BK; ++kb) {
    const int64_t n = K - kb * DL_BK;
    const uint32_t word = dl_sign_word(x + kb * DL_BK, n < 0 ? 0 : n);
    memcpy(bits + 4 * kb, &word, 4);
  }
  *beta = K > 0 ? (float)(total / (double)K) : 0.0f;
}

#ifndef DL_OWN_TABLE  // lowbit_avx512.cpp has its own (binarize_row_z)
// Sign bits (bit 1 for x > 0) in the tile order, and beta = mean |x|, its exact sum in int64 lanes
// (dl_abs_sum_scale): the double path's two dependent double adds per 8 floats made binarization
// 31% of an XNOR MobileNetV2 at 224 (AVX-512, perf). A row with a NaN, or an absmax that a float
// scale cannot reach, is redone on the double path: the same bits either way.
TGT void binarize_row(const float* x, int64_t K, int64_t Kp, uint8_t* bits, float* beta) {
  float scale;
  double unit;
  if (!dl_abs_sum_scale(row_absmax(x, K), &scale, &unit)) return binarize_row_double(x, K, Kp, bits, beta);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 zero = _mm256_setzero_ps(), vs = _mm256_set1_ps(scale);
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  __m256 nan = zero;
  const int64_t full = K / DL_BK;
  for (int64_t kb = 0; kb < full; ++kb) {
    uint32_t mask = 0;
    for (int i = 0; i < 4; ++i) {
      const __m256 v = _mm256_loadu_ps(x + kb * DL_BK + 8 * i);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      const __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_and_ps(absmask, v), vs));
      s0 = _mm256_add_epi64(s0, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(r)));
      s1 = _mm256_add_epi64(s1, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(r, 1)));
      mask |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ)) << (8 * i);
    }
    const uint32_t word = tile_order(mask);
    memcpy(bits + 4 * kb, &word, 4);
  }
  int64_t lanes[4];
  _mm256_storeu_si256((__m256i*)lanes, _mm256_add_epi64(s0, s1));
  int64_t total = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  for (int64_t k = full * DL_BK; k < K; ++k) {
    has_nan |= x[k] != x[k];
    total += (int64_t)__builtin_nearbyintf(__builtin_fabsf(x[k]) * scale);
  }
  if (has_nan) return binarize_row_double(x, K, Kp, bits, beta);
  for (int64_t kb = full; kb < Kp / DL_BK; ++kb) {
    const int64_t n = K - kb * DL_BK;
    const uint32_t word = dl_sign_word(x + kb * DL_BK, n < 0 ? 0 : n);
    memcpy(bits + 4 * kb, &word, 4);
  }
  *beta = K > 0 ? (float)((double)total * unit / (double)K) : 0.0f;
}
#endif

// ---------------------------------------------------------------- driver

// Runs Kern::block<MT, NB>(g, m, b) over rows [m0, m1) and blocks [b0, b1):
// NB blocks at a time, MT rows at a time (then 4, 3, 2, 1 rows). The 1 or 2 blocks left
// over (all of a narrow layer: 16 or 32 output channels) run MTN rows at a time, so that
// they still keep MTN * NB accumulators in flight.
template <class Kern, int MT, int NB>
TGT void drive_rows(const DlGemm* g, int64_t m0, int64_t m1, int64_t b) {
  int64_t m = m0;
  for (; m + MT <= m1; m += MT) Kern::template block<MT, NB>(g, m, b);
  if constexpr (MT > 4)
    if (m1 - m >= 4) Kern::template block<4, NB>(g, m, b), m += 4;
  if constexpr (MT > 3)
    if (m1 - m == 3) return Kern::template block<3, NB>(g, m, b);
  if constexpr (MT > 2)
    if (m1 - m == 2) return Kern::template block<2, NB>(g, m, b);
  if constexpr (MT > 1)
    if (m1 - m == 1) return Kern::template block<1, NB>(g, m, b);
}

template <class Kern, int MT, int NB, int MTN = MT>
TGT void drive(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  int64_t b = b0;
  for (; b + NB <= b1; b += NB) drive_rows<Kern, MT, NB>(g, m0, m1, b);
  if constexpr (NB > 2)
    if (b + 2 <= b1) drive_rows<Kern, MTN, 2>(g, m0, m1, b), b += 2;
  for (; b < b1; ++b) drive_rows<Kern, MTN, 1>(g, m0, m1, b);
}

#ifndef DL_OWN_TABLE  // the includer has its own GEMM kernels

// ---------------------------------------------------------------- depthwise

// 8 channels per vector; full chunks use plain loads and stores (masked stores are slow on
// some AVX2 CPUs), the tail chunk masked ones.
struct VDw8 {
  using T = __m256;
  struct Mask {
    __m256i v;
    bool full;
  };
  static constexpr int N = 8;
  static constexpr int COLS = 1;  // 2 was 0.85-0.95x: 16 registers hold 9 weights, not also 4 inputs and 2 sums
  TGT ALWAYS_INLINE static Mask mask(int n) {
    return {_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), n == 8};
  }
  TGT ALWAYS_INLINE static T load(const float* p, Mask m) { return m.full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m.v); }
  TGT ALWAYS_INLINE static void store(float* p, T v, Mask m) {
    if (m.full)
      _mm256_storeu_ps(p, v);
    else
      _mm256_maskstore_ps(p, m.v, v);
  }
  TGT ALWAYS_INLINE static T zero() { return _mm256_setzero_ps(); }
  TGT ALWAYS_INLINE static T set1(float v) { return _mm256_set1_ps(v); }
  TGT ALWAYS_INLINE static T add(T a, T b) { return _mm256_add_ps(a, b); }
  TGT ALWAYS_INLINE static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  // max(lo, v) returns v when v is NaN: NaN passes, as in dl_clamp
  TGT ALWAYS_INLINE static T clamp(T v, T lo, T hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }
};

TGT void depthwise3x3(const DlDepthwise* d, int64_t r0, int64_t r1) { dw3x3_rows<VDw8>(d, r0, r1); }
TGT void conv3x3(const DlConv3x3* c, int64_t r0, int64_t r1) { conv3x3_rows<VDw8>(c, r0, r1); }
TGT void depthwise3x3_row(const DlDepthwise* d, int64_t oh, const float* const* in, float* yrow) {
  int kh0, kh1;
  dw_taps(d, oh, &kh0, &kh1);
  dw3x3_row<VDw8>(d, in, kh0, kh1, yrow);
}

// Stores 8 outputs (m, n .. n+7), skipping columns past N. `dot` is sum w*x;
// for TTQ, `pos` is the sum of x over the +1 weights.
template <bool TTQ>
TGT ALWAYS_INLINE void store8(const DlGemm* g, int64_t m, int64_t n, __m256i dot, __m256i pos) {
  const int64_t valid = g->N - n;
  if (valid <= 0) return;
  const bool full = valid >= 8;
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(full ? 8 : valid)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  if (!g->xscale) {
    int32_t* out = g->yi + m * g->N + n;
    if (full)
      _mm256_storeu_si256((__m256i*)out, dot);
    else
      _mm256_maskstore_epi32((int*)out, mask, dot);
    return;
  }
  const __m256 wp = full ? _mm256_loadu_ps(g->scale_pos + n) : _mm256_maskload_ps(g->scale_pos + n, mask);
  const __m256 b = !g->bias ? _mm256_setzero_ps()
                   : full   ? _mm256_loadu_ps(g->bias + n)
                            : _mm256_maskload_ps(g->bias + n, mask);
  const __m256 sx = _mm256_set1_ps(g->xscale[m]);
  __m256 y;
  if (TTQ) {
    const __m256 wn = full ? _mm256_loadu_ps(g->scale_neg + n) : _mm256_maskload_ps(g->scale_neg + n, mask);
    const __m256i neg = _mm256_sub_epi32(pos, dot);
    y = _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(pos), wp), _mm256_mul_ps(_mm256_cvtepi32_ps(neg), wn));
    y = _mm256_add_ps(_mm256_mul_ps(y, sx), b);
  } else {
    y = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), wp), sx), b);
  }
  if (g->clamp)  // max(lo, y) returns y when y is NaN: NaN passes, as in dl_clamp
    y = _mm256_min_ps(_mm256_set1_ps(g->act_hi), _mm256_max_ps(_mm256_set1_ps(g->act_lo), y));
  float* out = g->y + m * g->N + n;
  if (full)
    _mm256_storeu_ps(out, y);
  else
    _mm256_maskstore_ps(out, mask, y);
}

// ---------------------------------------------------------------- ternary

// Rows [m0, m0+MT) x output blocks [b0, b0+NB); each 64-byte tile is two
// 32-byte halves of 8 outputs. A tile is unpacked once for all MT rows.
template <bool TTQ>
struct Ternary {
  template <int MT, int NB>
  TGT static void block(const DlGemm* gp, int64_t m0, int64_t b0) {
    const DlGemm gl = *gp;  // a local copy: stores to the output cannot alias it
    const DlGemm* g = &gl;
    const __m256i mask3 = _mm256_set1_epi8(3), mask2 = _mm256_set1_epi8(2);
    __m256i acc[MT][NB][2], acc2[MT][NB][2];  // acc2 (TTQ only): sum of (code & 2) * x = 2 * pos
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
        for (int h = 0; h < 2; ++h) acc[i][j][h] = acc2[i][j][h] = _mm256_setzero_si256();
    const int8_t* x = g->xq + m0 * g->Kp;
    for (int64_t kb = 0; kb < g->kblocks; ++kb) {
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        const uint8_t* t = dl_tile(g, b0 + j, kb);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m256i v = load32(t + 32 * h);
          const __m256i u0 = _mm256_and_si256(v, mask3);
          const __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), mask3);
          const __m256i u2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask3);
          const __m256i u3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), mask3);
#pragma GCC unroll 8
          for (int i = 0; i < MT; ++i) {
            const int8_t* xp = x + i * g->Kp + kb * DL_TK;
            const __m256i x0 = bcast4(xp), x1 = bcast4(xp + 4), x2 = bcast4(xp + 8), x3 = bcast4(xp + 12);
            acc[i][j][h] = dot4(acc[i][j][h], u0, x0, u1, x1, u2, x2, u3, x3);
            if constexpr (TTQ)
              acc2[i][j][h] = dot4(acc2[i][j][h], _mm256_and_si256(u0, mask2), x0, _mm256_and_si256(u1, mask2),
                                   x1, _mm256_and_si256(u2, mask2), x2, _mm256_and_si256(u3, mask2), x3);
          }
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i) {
      const __m256i xsum = _mm256_set1_epi32(g->xsum[m0 + i]);
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
        for (int h = 0; h < 2; ++h) {
          const __m256i dot = _mm256_sub_epi32(acc[i][j][h], xsum);
          const __m256i pos = TTQ ? _mm256_srai_epi32(acc2[i][j][h], 1) : dot;
          store8<TTQ>(g, m0 + i, (b0 + j) * DL_NB + 8 * h, dot, pos);
        }
    }
  }
};

TGT void ternary(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  const bool few = m1 - m0 <= 2;
  if (g->scale_neg && g->xscale)
    few ? drive<Ternary<true>, 1, 2>(g, m0, m1, b0, b1) : drive<Ternary<true>, 2, 1>(g, m0, m1, b0, b1);
  else
    few ? drive<Ternary<false>, 1, 4>(g, m0, m1, b0, b1) : drive<Ternary<false>, 4, 1>(g, m0, m1, b0, b1);
}

// ---------------------------------------------------------------- binary x int8

struct BinaryI8 {
  template <int MT, int NB>
  TGT static void block(const DlGemm* gp, int64_t m0, int64_t b0) {
    const DlGemm gl = *gp;  // a local copy: stores to the output cannot alias it
    const DlGemm* g = &gl;
    const __m256i one = _mm256_set1_epi8(1);
    __m256i acc[MT][NB][2];
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
        for (int h = 0; h < 2; ++h) acc[i][j][h] = _mm256_setzero_si256();
    const int8_t* x = g->xq + m0 * g->Kp;
    for (int64_t kb = 0; kb < g->kblocks; ++kb) {
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) {
        const uint8_t* t = dl_tile(g, b0 + j, kb);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m256i v = load32(t + 32 * h);
#pragma GCC unroll 2
          for (int q = 0; q < 2; ++q) {  // bit planes 4q .. 4q+3
            const __m256i u0 = _mm256_and_si256(_mm256_srli_epi16(v, 4 * q), one);
            const __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(v, 4 * q + 1), one);
            const __m256i u2 = _mm256_and_si256(_mm256_srli_epi16(v, 4 * q + 2), one);
            const __m256i u3 = _mm256_and_si256(_mm256_srli_epi16(v, 4 * q + 3), one);
#pragma GCC unroll 8
            for (int i = 0; i < MT; ++i) {
              const int8_t* xp = x + i * g->Kp + kb * DL_BK + 16 * q;
              acc[i][j][h] = dot4(acc[i][j][h], u0, bcast4(xp), u1, bcast4(xp + 4), u2, bcast4(xp + 8), u3,
                                  bcast4(xp + 12));
            }
          }
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i) {
      const __m256i xsum = _mm256_set1_epi32(g->xsum[m0 + i]);
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
        for (int h = 0; h < 2; ++h) {
          const __m256i dot = _mm256_sub_epi32(_mm256_slli_epi32(acc[i][j][h], 1), xsum);
          store8<false>(g, m0 + i, (b0 + j) * DL_NB + 8 * h, dot, dot);
        }
    }
  }
};

TGT void binary_i8(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  if (m1 - m0 <= 2)
    drive<BinaryI8, 1, 4>(g, m0, m1, b0, b1);
  else
    drive<BinaryI8, 4, 1>(g, m0, m1, b0, b1);
}

// ---------------------------------------------------------------- xnor

// Per-byte popcounts are summed into int16 lanes (at most 16 per tile), which
// are widened to int32 every 1024 tiles, well before they could overflow.
struct Xnor {
  template <int MT, int NB>
  TGT static void block(const DlGemm* gp, int64_t m0, int64_t b0) {
    const DlGemm gl = *gp;  // a local copy: stores to the output cannot alias it
    const DlGemm* g = &gl;
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i acc[MT][NB][2];
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
        for (int h = 0; h < 2; ++h) acc[i][j][h] = _mm256_setzero_si256();
    const uint8_t* x = g->xbits + m0 * (g->Kp / 8);
    for (int64_t k0 = 0; k0 < g->kblocks; k0 += 1024) {
      const int64_t k1 = k0 + 1024 < g->kblocks ? k0 + 1024 : g->kblocks;
      __m256i acc16[MT][NB][2];
#pragma GCC unroll 16
      for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
        for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
          for (int h = 0; h < 2; ++h) acc16[i][j][h] = _mm256_setzero_si256();
      for (int64_t kb = k0; kb < k1; ++kb) {
#pragma GCC unroll 8
        for (int j = 0; j < NB; ++j) {
          const uint8_t* t = dl_tile(g, b0 + j, kb);
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            const __m256i v = load32(t + 32 * h);
#pragma GCC unroll 8
            for (int i = 0; i < MT; ++i) {
              const __m256i xw = _mm256_set1_epi32((int)dl_load_u32(x + i * (g->Kp / 8) + 4 * kb));
              const __m256i c = popcount_bytes(_mm256_xor_si256(v, xw));
              acc16[i][j][h] = _mm256_add_epi16(acc16[i][j][h], _mm256_maddubs_epi16(c, ones8));
            }
          }
        }
      }
#pragma GCC unroll 16
      for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
        for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
          for (int h = 0; h < 2; ++h)
            acc[i][j][h] = _mm256_add_epi32(acc[i][j][h], _mm256_madd_epi16(acc16[i][j][h], ones16));
    }
    const __m256i kk = _mm256_set1_epi32((int)g->K);
#pragma GCC unroll 16
    for (int i = 0; i < MT; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NB; ++j)
#pragma GCC unroll 16
        for (int h = 0; h < 2; ++h) {
          const __m256i dot = _mm256_sub_epi32(kk, _mm256_slli_epi32(acc[i][j][h], 1));
          store8<false>(g, m0 + i, (b0 + j) * DL_NB + 8 * h, dot, dot);
        }
  }
};

TGT void xnor(const DlGemm* g, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
  if (m1 - m0 <= 2)
    drive<Xnor, 1, 4>(g, m0, m1, b0, b1);
  else
    drive<Xnor, 4, 1>(g, m0, m1, b0, b1);
}

const DlKernels kTable = {quantize_row, binarize_row, ternary, binary_i8, xnor, depthwise3x3, depthwise3x3_row, conv3x3};
#endif  // DL_OWN_TABLE

}  // namespace

#ifndef DL_OWN_TABLE
const DlKernels* DL_TABLE_FN(void) { return &kTable; }
#endif
